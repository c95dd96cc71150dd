// DeepSeekMoE layer: shared expert(s) plus routed experts, sigmoid gate with a selection-only
// bias, group-limited top-k, normalised weights x routed_scaling_factor, no token dropping.
//
// The layer runs as phases (ARCHITECTURE contract 3), each a separate call, so an executor can
// interleave two micro-batches and hide the expert all-to-all behind the other's compute:
//   forward:  gate -> dispatch -> experts -> combine     (shared expert: any time after gate)
//   backward: combine_backward -> experts_backward -> dispatch_backward -> gate_backward
// In one process dispatch/combine are local permutations by expert; expert parallelism replaces
// them with an all-to-all over the EP group without touching the other phases.
//
// Gate weights are folded into the experts' SwiGLU (g * W2(a) = W2(g * a)), so combine is a plain
// sum. The sequence-wise balance loss (alpha) is computed in the gate phase; expert loads of the
// micro-batch are kept in the state for the auxiliary-loss-free bias update.
//
// FP8 routed experts (precision.h): every expert's three GEMMs are block-scaled E4M3 (weights
// 128x128 per expert, cached in experts_w8_); the state keeps the expert inputs (xperm8) and the
// SwiGLU inputs (gu8) as FP8 1x128 tiles and no fp32 expert activation; the backward dequantises
// gu and recomputes the SwiGLU output (SPEC §3.5). The activation gradient entering the down
// projection uses power-of-two scales under the default "spec" scale rule.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "model/buffers.h"
#include "model/config.h"
#include "model/dispatch.h"
#include "model/mlp.h"
#include "model/precision.h"

namespace moetron {

template <class T>
class MoE {
 public:
  struct State {
    int64_t B = 0, S = 0, N = 0;
    Buf<T> logits, scores, weights;     // [N,E], [N,E], [N,K]
    std::vector<int32_t> idx;           // [N,K] global expert ids
    DispatchState<T> ds;                // received tokens [R, ...] and the dispatch plan
    kernels::ExpertRouting routing;     // received (token, slot) pairs sorted by local expert
    Buf<T> xperm, wperm, gu, a, yperm;  // [A,D], [A], [A,2F], [A,F], [A,D]; A = local pairs
    typename Mlp<T>::State shared;
    Buf<T> shared_out;          // [N,D]
    Buf<T> bal_f;               // [B,E] balance-loss f_i per sequence (constants)
    double balance_loss = 0;    // alpha * mean_b sum_i f_i P_i
    std::vector<int64_t> load;  // [E] assignments per expert in this micro-batch
    // backward
    Buf<T> dyperm, dgu, dwperm, dxperm, dweights, dlogits;
    T aux_grad = T(0);   // d(total loss)/d(balance_loss), set by the caller
    Fp8Act xperm8, gu8;  // FP8 experts: [A, D] expert inputs, [A, 2F] SwiGLU inputs
    // Bytes kept from forward to backward by the gate, the experts and the shared expert (the
    // dispatch state ds and the input x are the dispatcher's and the caller's).
    int64_t saved_bytes() const {
      const int64_t n = static_cast<int64_t>(logits.size() + scores.size() + weights.size() +
                                             xperm.size() + wperm.size() + gu.size() + a.size() +
                                             yperm.size() + shared_out.size() + bal_f.size());
      return n * static_cast<int64_t>(sizeof(T)) + static_cast<int64_t>(idx.size() * 4) +
             xperm8.bytes() + gu8.bytes() + shared.saved_bytes();
    }
  };

  // The dispatcher decides which experts live here (all of them for LocalDispatcher).
  void build(ParamStore<T>& ps, const std::string& prefix, const ModelConfig& c,
             const PrecisionPolicy& pol, std::shared_ptr<TokenDispatcher<T>> dispatcher);
  void init(double std, uint64_t seed);

  // ---- forward phases (x = ffn_norm output [N,D]) ----
  void gate(State& st, const T* x, int64_t B, int64_t S) const;
  void shared(State& st, const T* x) const;
  void dispatch_start(State& st, const T* x) const;
  void dispatch_wait(State& st) const;
  void experts(State& st) const;
  void combine_start(State& st) const;
  void combine_wait(State& st, T* y) const;  // y[N,D] = shared + sum of weighted expert outputs
  void forward(State& st, const T* x, int64_t B, int64_t S, T* y) const;

  // ---- backward phases: dx[N,D] accumulates ----
  void combine_backward_start(State& st, const T* dy, T* dx) const;  // + shared expert backward
  void combine_backward_wait(State& st) const;
  void experts_backward(State& st) const;
  void dispatch_backward_start(State& st) const;
  void dispatch_backward_wait(State& st, T* dx) const;
  void gate_backward(State& st, T* dx) const;
  void backward_input(State& st, const T* dy, T* dx) const;  // all four, in order
  void backward_weight(State& st, const T* x) const;

  // Auxiliary-loss-free balancing: b_i += gamma * sign(mean(load) - load_i).
  void update_bias(const std::vector<int64_t>& load, double gamma);
  Param<T>* bias() const { return bias_; }
  int64_t n_experts() const { return E_; }
  const std::vector<Param<T>*>& params() const { return params_; }

 private:
  void experts_fp8(State& st) const;
  void experts_backward_fp8(State& st) const;
  void experts_backward_weight_fp8(State& st) const;

  int64_t D_ = 0, E_ = 0, K_ = 0, F_ = 0;
  int64_t E_local_ = 0, first_expert_ = 0;  // experts held here: [first, first + E_local)
  std::shared_ptr<TokenDispatcher<T>> dispatcher_;
  double alpha_ = 0;
  kernels::GateParams gp_;
  Param<T>* gate_w_ = nullptr;  // [E, D]
  Param<T>* bias_ = nullptr;    // [E], selection only, not trained
  Linear<T> gate_;
  // All experts' weights, fused (unregistered; the per-expert views are the named parameters):
  std::unique_ptr<Param<T>> gu_all_;    // [E_local, 2F, D] gate|up
  std::unique_ptr<Param<T>> down_all_;  // [E_local, D, F]
  kernels::GemmPrecision expert_prec_ = kernels::GemmPrecision::FP32;
  LinearPrecision expert_lp_{}, expert_down_lp_{};  // FP8: the up (gate|up) and down GEMMs
  const uint64_t* weight_version_ = nullptr;
  mutable Fp8WeightCache gu_w8_, down_w8_;  // FP8 copies [E_local, 2F, D], [E_local, D, F]
  mutable Buf<T> fwd_x_, fwd_gu_, fwd_a_;   // FP8: fp32 scratch (one compute thread)
  Mlp<T> shared_;
  std::vector<Param<T>*> params_;
};

}  // namespace moetron
