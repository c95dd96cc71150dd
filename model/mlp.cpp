// SwiGLU MLP forward and split backward (see mlp.h).
#include "model/mlp.h"

namespace moetron {

template <class T>
void Mlp<T>::build(ParamStore<T>& ps, const std::string& prefix, int64_t D, int64_t F,
                   kernels::GemmPrecision prec) {
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
  gu_ = {&gu_param_, D, 2 * F, prec};
  down_ = {down, F, D, prec};
}

template <class T>
void Mlp<T>::init(double std, uint64_t seed) {
  for (Param<T>* p : params_) init_normal(*p, std, seed);
}

template <class T>
void Mlp<T>::forward(State& st, const T* x, int64_t N, T* y) const {
  st.N = N;
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
  kernels::swiglu_backward<T>(da, st.gu.data(), N, F_, nullptr, dgu, nullptr);
  gu_.backward_input(dgu, N, dx, accumulate);
}

template <class T>
void Mlp<T>::backward_weight(State& st, const T* x) const {
  down_.backward_weight(st.dy.data(), st.a.data(), st.N);
  gu_.backward_weight(st.dgu.data(), x, st.N);
}

template class Mlp<float>;
template class Mlp<double>;

}  // namespace moetron
