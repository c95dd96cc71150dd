// Multi-head Latent Attention (MLA) of DeepSeek-V3, with the block's pre-attention RMSNorm.
//
//   xn    = attn_norm(h)                                          [N, D]
//   c_q   = q_norm(q_a_proj(xn))            (or q = q_proj(xn))   [N, ql]
//   q     = q_b_proj(c_q) -> [N, H, nope|rope], RoPE on the rope part
//   kv_a  = kv_a_proj_with_mqa(xn) -> c_kv [N, kl] | k_pe [N, rope] (one RoPE key for all heads)
//   kv    = kv_b_proj(kv_norm(c_kv)) -> [N, H, k_nope|v]
//   o     = softmax(q k^T * scale + causal) v                    [N, H, dv]
//   out   = o_proj(o)                                             [N, D]
// N = B*S tokens of B sequences of length S; positions restart at 0 in every sequence.
// The layer knows nothing of parallelism: it reads its input and writes its output, and keeps
// what the backward needs in a State owned by the caller (one per micro-batch in flight).
// FP8 projections (precision.h): the inputs of q_a/kv_a (xn), q_b (c_q) and kv_b (c_kv) are kept
// as FP8 1x128 tiles (xn8, cq8, ckv8) instead of fp32 (the fp32 values live in layer scratch
// during the forward only); o, the input of o_proj, stays fp32 because the attention backward
// reads it too (SPEC §3.5: V3 keeps it in a 12-bit format; fp32 here is the safe superset).
#pragma once

#include <string>
#include <vector>

#include "model/buffers.h"
#include "model/config.h"
#include "model/linear.h"
#include "model/norm.h"
#include "model/precision.h"

namespace moetron {

template <class T>
class MLA {
 public:
  struct State {
    int64_t B = 0, S = 0;
    Buf<T> xn, rstd_in;            // attn_norm output [N, D] (not FP8), its rstd
    Buf<T> cq_raw, cq, rstd_q;     // query latent before/after q_norm [N, ql]
    Buf<T> q;                      // [N, H, dq] (RoPE applied)
    Buf<T> kva;                    // [N, kl + dr] (k_pe part RoPE'd)
    Buf<T> ckv_raw, ckv, rstd_kv;  // kv latent before/after kv_norm [N, kl]
    Buf<T> kv;                     // [N, H, dn + dv]
    Buf<T> k, v, o, lse;           // [N,H,dq], [N,H,dv], [N,H,dv], [B,H,S]
    // written by backward_input, read by backward_weight
    Buf<T> dy, dq, dcq, dcq_raw, dkv, dckv, dkva, dxn;
    Buf<T> tmp_do, tmp_dk, tmp_dv, tmp_dckv_raw, tmp_dhn;  // backward scratch, reused
    Fp8Act xn8, cq8, ckv8;  // FP8 projections: the cached inputs of q_a/kv_a (or q), q_b, kv_b
    // Bytes of everything this state keeps from forward to backward (activation memory).
    int64_t saved_bytes() const {
      const int64_t n = static_cast<int64_t>(
          xn.size() + rstd_in.size() + cq_raw.size() + cq.size() + rstd_q.size() + q.size() +
          kva.size() + ckv_raw.size() + ckv.size() + rstd_kv.size() + kv.size() + k.size() +
          v.size() + o.size() + lse.size());
      return n * static_cast<int64_t>(sizeof(T)) + xn8.bytes() + cq8.bytes() + ckv8.bytes();
    }
  };

  void build(ParamStore<T>& ps, const std::string& prefix, const ModelConfig& c,
             const PrecisionPolicy& pol);
  void init(double std, uint64_t seed);

  // h [N,D] -> out [N,D] (write). pos[N]: position of each token in its sequence.
  void forward(State& st, const T* h, int64_t B, int64_t S, const int32_t* pos, T* out) const;
  // dh[N,D] += d(out)/dh^T dy.  Keeps the gradients that backward_weight needs.
  void backward_input(State& st, const T* h, const T* dy, const int32_t* pos, T* dh) const;
  void backward_weight(State& st, const T* h) const;

  const std::vector<Param<T>*>& params() const { return params_; }

 private:
  int64_t D_ = 0, H_ = 0, dn_ = 0, dr_ = 0, dv_ = 0, dq_ = 0, ql_ = 0, kl_ = 0;
  T scale_ = T(1);
  std::vector<double> freqs_;
  RMSNorm<T> attn_norm_, q_norm_, kv_norm_;
  Linear<T> q_a_, q_b_, q_, kv_a_, kv_b_, o_;
  bool fp8_ = false;  // projections in FP8 (all or none of them: one component)
  mutable Buf<T> fwd_xn_, fwd_cq_, fwd_ckv_;  // FP8: forward-only fp32 scratch (one compute thread)
  std::vector<Param<T>*> params_;
};

}  // namespace moetron
