// Multi-token prediction (MTP) module k of DeepSeek-V3 (SPEC §1.5), a layer like every other:
// forward, backward_input and backward_weight over a caller-owned State.
//
//   e    = embed(t_{i+k})                       (the shared embedding; 0 past the sequence end)
//   h'   = eh_proj([enorm(e); hnorm(h^{k-1})])  [N, 2D] -> [N, D]
//   h^k  = Block(h')
//   L^k  = CE(lm_head(shared_head.norm(h^k)), t_{i+k+1})   (the shared head; targets past the
//                                                            end are ignored)
// The embedding and output head are the model's (passed in): their gradients accumulate into the
// model's parameters. The module's loss sum goes to a device double for the model to collect.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "model/block.h"

namespace moetron {

template <class T>
class MtpLayer {
 public:
  struct State {
    Buffer<int32_t> ids, targets;  // [N]
    const T* hp = nullptr;         // h^{k-1}: the caller's, not a copy
    Buffer<T> e, rstd_e, rstd_h;   // embedding [N,D], norm statistics [N]
    Buffer<T> cat, x;              // [N,2D] concat, [N,D] eh_proj output (block input)
    typename Block<T>::State block;
    Buffer<T> h, hn, rstd_o, lse;  // block output, shared_head.norm, CE lse
    Buffer<T> dhn, dx;             // kept for the weight gradients
    Buffer<T> dhk, dcat, dh_prev;  // backward: d h^k, d cat, d h^{k-1} (the result)
    template <class F>
    void for_each_grad(F&& f) {
      for (Buffer<T>* b : {&dhn, &dx, &dhk, &dcat, &dh_prev}) f(*b);
      block.for_each_grad(f);
    }
    int64_t saved_bytes() const {
      const size_t n = ids.size() + targets.size();
      return static_cast<int64_t>(n * 4 +
                                  (e.size() + rstd_e.size() + rstd_h.size() + cat.size() +
                                   x.size() + h.size() + hn.size() + rstd_o.size() + lse.size()) *
                                      sizeof(T)) +
             block.saved_bytes();
    }
  };

  // prefix "model.layers.(L+k-1)."; depth k >= 1.
  void build(ParamStore<T>& ps, const std::string& prefix, int64_t depth, const ModelConfig& c,
             const PrecisionPolicy& pol, std::shared_ptr<TokenDispatcher<T>> dispatcher,
             const Exec& ex, const typename Block<T>::Scratch& scratch = {});
  void init(double std, uint64_t seed);

  // tokens [B, S+1] (device), hprev = h^{k-1} [N,D] (kept alive by the caller), embed/head [V,D].
  // loss_sum[0] = sum of L^k over the positions with a target; balance/load: the block's.
  void forward(State& st, const int32_t* tokens, int64_t B, int64_t S, const int32_t* pos,
               const T* hprev, const T* embed, const T* head, double* loss_sum, double* balance,
               int64_t* load) const;
  // g = d(total loss)/d(L^k sum) per target; dnext: gradient into h^k from module k+1 (or null);
  // aux: d(total loss)/d(balance loss). Writes st.dh_prev = d h^{k-1}; adds into d head and
  // d embed now (they share the head's pass), enorm/hnorm weight gradients too.
  void backward_input(State& st, int64_t B, int64_t S, const int32_t* pos, double g, const T* dnext,
                      T aux, const T* head, T* d_head, T* d_embed) const;
  void backward_weight(State& st, int64_t N) const;
  // forward and backward_input as programs that stop where the module's MoE block posts its
  // exchanges (model/program.h); `layer` labels the yields. The backward program runs the weight
  // gradients (queue == null) or queues them (all of backward_weight's work).
  Program forward_program(State& st, const int32_t* tokens, int64_t B, int64_t S,
                          const int32_t* pos, const T* hprev, const T* embed, const T* head,
                          double* loss_sum, double* balance, int64_t* load, int layer) const;
  Program backward_program(State& st, int64_t B, int64_t S, const int32_t* pos, double g,
                           const T* dnext, T aux, const T* head, T* d_head, T* d_embed,
                           WeightQueue* queue, int layer) const;
  Block<T>& block() { return block_; }
  const Block<T>& block() const { return block_; }
  // The model's bf16 copy of the shared head weight (a BF16 head on a float model), which this
  // module's head GEMMs read too; refreshed by whichever user comes first at a weight version.
  void share_head_bf16(std::shared_ptr<Bf16WeightCache> c) { head16_ = std::move(c); }

 private:
  Exec ex_{};
  int64_t D_ = 0, V_ = 0, chunk_ = 0, k_ = 1;
  kernels::GemmPrecision head_prec_ = kernels::GemmPrecision::FP32;
  std::shared_ptr<Bf16WeightCache> head16_;  // null: the head GEMMs convert W themselves
  const uint64_t* version_ = nullptr;        // PrecisionPolicy::weight_version
  const uint16_t* head_bf16(const T* head) const;
  void input_backward(State& st, int64_t N, T* d_embed) const;
  void module_backward_weight(State& st, int64_t N) const;  // shared_head.norm and eh_proj
  RMSNorm<T> enorm_, hnorm_, head_norm_;
  Linear<T> eh_proj_;
  Block<T> block_;
  // one call's temporaries: the block's Block::Own (the model's shared one, or the block's own)
  std::shared_ptr<typename Block<T>::Own> own_;
};

}  // namespace moetron
