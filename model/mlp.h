// SwiGLU MLP: y = down_proj( silu(gate_proj x) * up_proj x ). Used as the dense FFN of the first
// layers and as DeepSeekMoE's shared expert (one MLP of width n_shared x moe_intermediate_size).
//
// gate_proj and up_proj are stored as one [2F, D] matrix (rows 0..F-1 gate, F..2F-1 up) so the
// forward is one GEMM; the two halves are registered under their checkpoint names as views.
//
// Precision is the Linears' (linear.h). Under the fp8 recipe the state keeps the input x and the
// SwiGLU input gu as FP8 1x128 tiles and no fp32 activation; the backward dequantises gu and
// recomputes the SwiGLU output a (the down projection's input) from it (SPEC §3.5, the rule of
// the routed experts, applied to every SwiGLU MLP).
#pragma once

#include <memory>
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
    SavedAct<T> x;         // the input: FP8 its 1x128 tiles, otherwise nothing (the caller's)
    SavedAct<T> gu;        // [N, 2F] gate|up pre-activations (FP8 under the fp8 recipe)
    SavedAct<T> a;         // [N, F] silu(g)*u, unless recomputed from gu in the backward
    SavedGrad<T> dy, dgu;  // [N, D], [N, 2F] kept for backward_weight (FP8: Wgrad's tiles)
    template <class F>
    void for_each_grad(F&& f) {  // written by backward_input, read by backward_weight
      dy.for_each(f), dgu.for_each(f);
    }
    // Bytes kept from forward to backward (activation memory).
    int64_t saved_bytes() const { return a.bytes() + x.bytes() + gu.bytes(); }
  };

  // The buffers one call uses and drops: the SwiGLU input and output before they are kept (bf16
  // or FP8) or when the output is recomputed, and the down projection's input gradient. Shared by
  // all the SwiGLU MLPs of a model, dense ones and shared experts: a model (one pipeline chunk)
  // runs one program at a time and every call writes what it reads here (as MoE::Scratch).
  struct Scratch {
    explicit Scratch(Device d) : gu(d), a(d) {}
    // [N, 2F], [N, F]; gu: the SwiGLU input before it is kept (or widened), then under FP8 its
    // gradient before it is kept as tiles (in place over the widened input); a: the SwiGLU
    // output before it is kept (or recomputed for the weight gradient), and in backward_input
    // the down projection's input gradient dA
    Buffer<T> gu, a;
    int64_t bytes() const {  // the bytes held (capacities)
      return static_cast<int64_t>((gu.capacity() + a.capacity()) * sizeof(T));
    }
  };

  // prefix like "model.layers.0.mlp." ; F = intermediate width; c: DenseMlp or SharedExpert.
  // scratch, linear: the model's shared Scratch and LinearScratch (null: the MLP makes its own).
  void build(ParamStore<T>& ps, const std::string& prefix, int64_t D, int64_t F,
             const PrecisionPolicy& pol, Component c, const Exec& ex,
             std::shared_ptr<Scratch> scratch = nullptr,
             std::shared_ptr<LinearScratch<T>> linear = nullptr);
  void init(double std, uint64_t seed);

  // y[N,D] (write). The caller keeps x and gives it again to backward_weight.
  void forward(State& st, const T* x, int64_t N, T* y) const;
  void backward_input(State& st, const T* dy, T* dx, bool accumulate) const;  // dx[N,D]
  void backward_weight(State& st, const T* x) const;

  const std::vector<Param<T>*>& params() const { return params_; }
  const std::shared_ptr<Scratch>& scratch() const { return scratch_; }

 private:
  Exec ex_{};
  int64_t D_ = 0, F_ = 0;
  bool recompute_swiglu_ = false;  // SPEC §3.5: with an FP8 gu, a is recomputed, not kept
  bool store_bf16_ = false;        // PrecisionPolicy::store_bf16
  Linear<T> gu_, down_;
  std::shared_ptr<Scratch> scratch_;  // one call's scratch, shared with the model's MLPs
  Param<T> gu_param_;                 // the fused [2F, D] pair, not registered (its views are)
  std::vector<Param<T>*> params_;
};

}  // namespace moetron
