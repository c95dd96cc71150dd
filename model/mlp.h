// SwiGLU MLP: y = down_proj( silu(gate_proj x) * up_proj x ). Used as the dense FFN of the first
// layers and as DeepSeekMoE's shared expert (one MLP of width n_shared x moe_intermediate_size).
//
// gate_proj and up_proj are stored as one [2F, D] matrix (rows 0..F-1 gate, F..2F-1 up) so the
// forward is one GEMM; the two halves are registered under their checkpoint names as views.
//
// FP8 (precision.h): the state keeps the input x and the SwiGLU input gu as FP8 1x128 tiles
// (x8, gu8) and no fp32 activation; the backward dequantises gu and recomputes the SwiGLU output
// a (the down projection's input) from it (SPEC §3.5, the rule of the routed experts, applied to
// every SwiGLU MLP).
#pragma once

#include <string>
#include <vector>

#include "model/buffers.h"
#include "model/linear.h"
#include "model/precision.h"

namespace moetron {

template <class T>
class Mlp {
 public:
  struct State {
    int64_t N = 0;
    Buf<T> gu, a;    // [N, 2F] gate|up pre-activations, [N, F] silu(g)*u  (not FP8)
    Buf<T> dy, dgu;  // kept for backward_weight
    Buf<T> da;       // backward scratch
    Fp8Act x8, gu8;  // FP8: input [N, D], gate|up pre-activations [N, 2F]
    // Bytes kept from forward to backward (activation memory; x is the caller's unless FP8).
    int64_t saved_bytes() const {
      return static_cast<int64_t>(gu.size() + a.size()) * static_cast<int64_t>(sizeof(T)) +
             x8.bytes() + gu8.bytes();
    }
  };

  // prefix like "model.layers.0.mlp." ; F = intermediate width; c: DenseMlp or SharedExpert.
  void build(ParamStore<T>& ps, const std::string& prefix, int64_t D, int64_t F,
             const PrecisionPolicy& pol, Component c);
  void init(double std, uint64_t seed);

  void forward(State& st, const T* x, int64_t N, T* y) const;                 // y[N,D] (write)
  void backward_input(State& st, const T* dy, T* dx, bool accumulate) const;  // dx[N,D]
  void backward_weight(State& st, const T* x) const;  // x unused with FP8 (st.x8)
  bool fp8() const { return gu_.fp8(); }

  const std::vector<Param<T>*>& params() const { return params_; }

 private:
  int64_t D_ = 0, F_ = 0;
  Tensor gu_value_, gu_grad_;
  Linear<T> gu_, down_;
  mutable Buf<T> fwd_gu_, fwd_a_;  // FP8: fp32 scratch (forward, and the backward's recompute)
  Param<T> gu_param_;              // the fused [2F, D] pair, not registered (its views are)
  std::vector<Param<T>*> params_;
};

}  // namespace moetron
