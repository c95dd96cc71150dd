// SwiGLU MLP: y = down_proj( silu(gate_proj x) * up_proj x ). Used as the dense FFN of the first
// layers and as DeepSeekMoE's shared expert (one MLP of width n_shared x moe_intermediate_size).
//
// gate_proj and up_proj are stored as one [2F, D] matrix (rows 0..F-1 gate, F..2F-1 up) so the
// forward is one GEMM; the two halves are registered under their checkpoint names as views.
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
    Buf<T> gu, a;    // [N, 2F] gate|up pre-activations, [N, F] silu(g)*u
    Buf<T> dy, dgu;  // kept for backward_weight
    Buf<T> da;       // backward scratch
  };

  // prefix like "model.layers.0.mlp." ; F = intermediate width.
  void build(ParamStore<T>& ps, const std::string& prefix, int64_t D, int64_t F,
             kernels::GemmPrecision prec);
  void init(double std, uint64_t seed);

  void forward(State& st, const T* x, int64_t N, T* y) const;                 // y[N,D] (write)
  void backward_input(State& st, const T* dy, T* dx, bool accumulate) const;  // dx[N,D]
  void backward_weight(State& st, const T* x) const;

  const std::vector<Param<T>*>& params() const { return params_; }

 private:
  int64_t D_ = 0, F_ = 0;
  Tensor gu_value_, gu_grad_;
  Linear<T> gu_, down_;
  Param<T> gu_param_;  // the fused [2F, D] pair, not registered (its views are)
  std::vector<Param<T>*> params_;
};

}  // namespace moetron
