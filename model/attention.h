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
// The Linears own their precision (linear.h): the inputs of q_a/kv_a (xn), q_b (c_q) and kv_b
// (c_kv) are kept as SavedActs, FP8 1x128 tiles under the fp8 recipe; o, the input of o_proj,
// is never FP8 because the attention backward reads it too (SPEC §3.5: V3 keeps it in its 12-bit
// E5M6, here under `activations.attention_output: e5m6`; else fp32 or bf16). Under
// `activations.storage: bf16` every kept tensor that is not FP8 (norm inputs and outputs, q, k,
// v, o unless E5M6) is bf16. The layer is op calls and pointer arithmetic only.
#pragma once

#include <memory>
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
  template <class>
  friend class Decoder;  // model/decode.h: decoding with a cache

 public:
  struct State {
    int64_t B = 0, S = 0;
    SavedAct<T> xn;       // attn_norm output = input of q_a/kv_a (or q) [N, D]
    Buffer<T> rstd_in;    // [N]
    SavedAct<T> cq_raw;   // query latent before q_norm [N, ql]
    Buffer<T> rstd_q;     // its rstd [N]
    SavedAct<T> cq;       // after q_norm = input of q_b [N, ql]
    SavedAct<T> q;        // [N, H, dq] (RoPE applied)
    SavedAct<T> kva;      // [N, kl + dr] (k_pe part RoPE'd; kept when k is recomputed)
    SavedAct<T> ckv_raw;  // kv latent before kv_norm [N, kl]
    Buffer<T> rstd_kv;    // its rstd [N]
    SavedAct<T> ckv;      // after kv_norm = input of kv_b [N, kl]
    SavedAct<T> k, v, o;  // [N,H,dq], [N,H,dv], [N,H,dv]
    Buffer<T> lse;        // [B,H,S]
    // written by backward_input, read by backward_weight: the projections' output gradients
    // (under the fp8 recipe as their Wgrads' 128x1 tiles) — o_proj's dout [N, D], q_b's (or q's)
    // dq [N, H, dq], q_a's dcq_raw [N, ql], kv_b's dkv [N, H, dn + dv], kv_a's dkva [N, kl + dr]
    // — and the norms' weight gradients of this micro-batch (RMSNorm::weight_grad) [D], [ql], [kl]
    SavedGrad<T> dout, dq, dcq_raw, dkv, dkva;
    Buffer<T> dw_attn_norm, dw_q_norm, dw_kv_norm;
    // The buffers backward_input writes and backward_weight reads (the executor lends them to a
    // micro-batch only for its backward: PipelineExecutor's gradient sets).
    template <class F>
    void for_each_grad(F&& f) {
      for (SavedGrad<T>* g : {&dout, &dq, &dcq_raw, &dkv, &dkva}) g->for_each(f);
      for (Buffer<T>* b : {&dw_attn_norm, &dw_q_norm, &dw_kv_norm}) f(*b);
    }
    // Bytes of everything this state keeps from forward to backward (activation memory).
    int64_t saved_bytes() const {
      const size_t n = rstd_in.size() + rstd_q.size() + rstd_kv.size() + lse.size();
      int64_t b = static_cast<int64_t>(n * sizeof(T));
      for (const SavedAct<T>* a : {&xn, &cq_raw, &cq, &q, &kva, &ckv_raw, &ckv, &k, &v, &o})
        b += a->bytes();
      return b;
    }
  };

  // The buffers one call of the layer uses and drops (never kept from forward to backward; with
  // bf16 storage also the fp32 values of the kept tensors, and their widened reads), shared by
  // all the MLA layers of a model: a model (one pipeline chunk) runs one program at a time — its
  // layers one after another, and the executor never interleaves two programs of one chunk
  // (parallel/pipeline_impl.h) — and every call writes what it reads here, so one set serves
  // every layer (DeepSeek-V3, fp8 + recompute + bf16 storage: 722 KiB per token, 2.8 GiB at
  // 4096 tokens, once per chunk instead of once per layer).
  struct Scratch {
    explicit Scratch(Device d)
        : kv(d),
          kva(d),
          dk(d),
          dv(d),
          dckv_raw(d),
          dhn(d),
          q(d),
          k(d),
          v(d),
          o(d),
          cq_raw(d),
          ckv_raw(d),
          rstd(d),
          dout(d),
          dq(d),
          dcq_raw(d),
          dkva(d),
          dxn(d),
          dcq(d),
          dckv(d) {}
    Buffer<T> kv;               // kv_b output [N, H, dn + dv]; in the backward d_o [N,H,dv]
    Buffer<T> kva;              // kv_a output [N, kl + dr], unless kept as T
    Buffer<T> dk, dv;           // attention backward [N,H,dq], [N,H,dv]
    Buffer<T> dckv_raw, dhn;    // [N, kl], [N, D]
    Buffer<T> q, k, v, o;       // per-head q, k, v (recomputed or bf16-kept), o (bf16 or E5M6)
    Buffer<T> cq_raw, ckv_raw;  // bf16-kept latents widened [N, ql], [N, kl]
    Buffer<T> rstd;             // a recomputed norm's rstd [N]
    // FP8 projections: their output gradients before they are kept as Wgrad tiles (dout, dq,
    // dcq_raw, dkva; kv_b's dkv is written into kv, free by then)
    Buffer<T> dout, dq, dcq_raw, dkva;
    Buffer<T> dxn, dcq, dckv;  // the norms' output gradients [N, D], [N, ql], [N, kl]
    SavedAct<T> xn, cq, ckv;   // recomputed norm outputs (kept as their Linear's input)
    int64_t bytes() const {    // the bytes held (capacities)
      size_t n = 0;
      for (const Buffer<T>* b :
           {&kv,     &kva,     &dk,   &dv,   &dckv_raw, &dhn,     &q,    &k,   &v,   &o,
            &cq_raw, &ckv_raw, &rstd, &dout, &dq,       &dcq_raw, &dkva, &dxn, &dcq, &dckv})
        n += b->capacity();
      int64_t b = static_cast<int64_t>(n * sizeof(T));
      for (const SavedAct<T>* a : {&xn, &cq, &ckv})
        b += static_cast<int64_t>(a->x.capacity() * sizeof(T) + a->x16.capacity() * 2 +
                                  a->x8.q.capacity() + a->x8.s.capacity() * sizeof(float));
      return b;
    }
  };

  // scratch, linear: the model's shared Scratch and LinearScratch (null: the layer makes its own)
  void build(ParamStore<T>& ps, const std::string& prefix, const ModelConfig& c,
             const PrecisionPolicy& pol, const Exec& ex, std::shared_ptr<Scratch> scratch = nullptr,
             std::shared_ptr<LinearScratch<T>> linear = nullptr);
  void init(double std, uint64_t seed);

  // h [N,D] -> out [N,D] (write). pos[N]: position of each token in its sequence.
  void forward(State& st, const T* h, int64_t B, int64_t S, const int32_t* pos, T* out) const;
  // dh[N,D] += d(out)/dh^T dy.  Keeps the gradients that backward_weight needs, dy included (for
  // o_proj's): a caller that writes dy into output_grad(...) spares the copy.
  void backward_input(State& st, const T* h, const T* dy, const int32_t* pos, T* dh) const;
  // Where the caller may write dy [N, D] for backward_input: the kept buffer itself, or (FP8
  // o_proj) a scratch that backward_input quantises into o_proj's Wgrad tiles.
  T* output_grad(State& st, int64_t N) const { return o_.grad(st.dout, N, scratch_->dout); }
  void backward_weight(State& st, const T* h) const;

  const std::vector<Param<T>*>& params() const { return params_; }
  const std::shared_ptr<Scratch>& scratch() const { return scratch_; }

 private:
  Exec ex_{};
  int64_t D_ = 0, H_ = 0, dn_ = 0, dr_ = 0, dv_ = 0, dq_ = 0, ql_ = 0, kl_ = 0;
  T scale_ = T(1);
  Buffer<double> freqs_;  // [dr/2] RoPE frequencies
  RMSNorm<T> attn_norm_, q_norm_, kv_norm_;
  Linear<T> q_a_, q_b_, q_, kv_a_, kv_b_, o_;
  bool recompute_norms_ = false, recompute_up_ = false;  // PrecisionPolicy::recompute_*
  bool store_bf16_ = false;                              // PrecisionPolicy::store_bf16
  bool attn_out_e5m6_ = false;  // PrecisionPolicy::attn_out_e5m6: o kept in E5M6
  kernels::GemmPrecision core_prec_ = kernels::GemmPrecision::FP32;  // attention_core's recipe
  std::shared_ptr<Scratch> scratch_;  // one call's scratch, shared with the model's MLA layers
  // The norm outputs and the per-head q, k, v: the state's, or (recompute) made again from what
  // the state keeps with the forward's own ops, so bit for bit the same values.
  const SavedAct<T>& xn_of(State& st, const T* h) const;
  const SavedAct<T>& cq_of(State& st) const;
  const SavedAct<T>& ckv_of(State& st) const;
  const SavedAct<T>& renorm(const RMSNorm<T>& norm, const Linear<T>& lin, const T* x, int64_t N,
                            SavedAct<T>& out) const;
  void project_qkv(const SavedAct<T>& qin, const SavedAct<T>& ckv, const T* kva, int64_t N,
                   const int32_t* pos, T* q, T* k, T* v) const;
  std::vector<Param<T>*> params_;
};

}  // namespace moetron
