// SwiGLU MLP forward and split backward (see mlp.h).
#include "model/mlp.h"

namespace moetron {

template <class T>
void Mlp<T>::build(ParamStore<T>& ps, const std::string& prefix, int64_t D, int64_t F,
                   const PrecisionPolicy& pol, Component c) {
  D_ = D, F_ = F;
  gu_param_.name = prefix + "gate_up(fused)";
  gu_param_.value = Tensor({2 * F, D}, dtype_of<T>());
  gu_param_.grad = Tensor({2 * F, D}, dtype_of<T>());
  params_.push_back(
      ps.add_view(prefix + "gate_proj.weight", gu_param_.value, gu_param_.grad, 0, {F, D}));
  params_.push_back(
      ps.add_view(prefix + "up_proj.weight", gu_param_.value, gu_param_.grad, F * D, {F, D}));
  Param<T>* down = ps.add(prefix + "down_proj.weight", {D, F});
  params_.push_back(down);
  const LinearPrecision lp = pol.linear(c);
  gu_ = Linear<T>::make(&gu_param_, D, 2 * F, lp, pol);
  down_ = Linear<T>::make(down, F, D, lp, pol);
}

template <class T>
void Mlp<T>::init(double std, uint64_t seed) {
  for (Param<T>* p : params_) init_normal(*p, std, seed);
}

template <class T>
void Mlp<T>::forward(State& st, const T* x, int64_t N, T* y) const {
  st.N = N;
  if (fp8()) {
    gu_.quantize_input(x, N, st.x8);
    T* gu = sized(fwd_gu_, N * 2 * F_);
    gu_.forward(st.x8, gu);
    quantize_act(gu, N, 2 * F_, down_.lp.pow2_x, st.gu8);  // "all" scales: pow2
    T* a = sized(fwd_a_, N * F_);
    kernels::swiglu_forward<T>(gu, N, F_, nullptr, a);
    down_.forward(a, N, y);  // a quantised 1x128 on the fly, not kept
    return;
  }
  T* gu = sized(st.gu, N * 2 * F_);
  gu_.forward(x, N, gu);
  T* a = sized(st.a, N * F_);
  kernels::swiglu_forward<T>(gu, N, F_, nullptr, a);
  down_.forward(a, N, y);
}

template <class T>
void Mlp<T>::backward_input(State& st, const T* dy, T* dx, bool accumulate) const {
  const int64_t N = st.N;
  T* dyc = sized(st.dy, N * D_);
  for (int64_t i = 0; i < N * D_; ++i) dyc[i] = dy[i];
  T* da = sized(st.da, N * F_);
  down_.backward_input(dy, N, da);
  T* dgu = sized(st.dgu, N * 2 * F_);
  const T* gu = st.gu.data();
  if (fp8()) {  // the SwiGLU input from its FP8 copy
    dequantize_act(st.gu8, sized(fwd_gu_, N * 2 * F_));
    gu = fwd_gu_.data();
  }
  kernels::swiglu_backward<T>(da, gu, N, F_, nullptr, dgu, nullptr);
  gu_.backward_input(dgu, N, dx, accumulate);
}

template <class T>
void Mlp<T>::backward_weight(State& st, const T* x) const {
  if (fp8()) {  // recompute a = swiglu(gu) from the FP8 gu; x from its FP8 copy
    T* gu = sized(fwd_gu_, st.N * 2 * F_);
    dequantize_act(st.gu8, gu);
    T* a = sized(fwd_a_, st.N * F_);
    kernels::swiglu_forward<T>(gu, st.N, F_, nullptr, a);
    down_.backward_weight(st.dy.data(), a, st.N);
    gu_.backward_weight(st.dgu.data(), st.x8);
    return;
  }
  down_.backward_weight(st.dy.data(), st.a.data(), st.N);
  gu_.backward_weight(st.dgu.data(), x, st.N);
}

template class Mlp<float>;
template class Mlp<double>;

}  // namespace moetron
