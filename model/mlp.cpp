// SwiGLU MLP forward and split backward (see mlp.h).
#include "model/mlp.h"

namespace moetron {

template <class T>
void Mlp<T>::build(ParamStore<T>& ps, const std::string& prefix, int64_t D, int64_t F,
                   const PrecisionPolicy& pol, Component c, const Exec& ex,
                   std::shared_ptr<Scratch> scratch, std::shared_ptr<LinearScratch<T>> linear) {
  ex_ = ex;
  scratch_ = scratch ? std::move(scratch) : std::make_shared<Scratch>(ex.device);
  D_ = D, F_ = F;
  gu_param_.name = prefix + "gate_up(fused)";
  gu_param_.value = Tensor({2 * F, D}, dtype_of<T>(), ps.device());
  gu_param_.grad = Tensor({2 * F, D}, dtype_of<T>(), ps.device());
  params_.push_back(ps.add_view(prefix + "gate_proj.weight", gu_param_, 0, {F, D}));
  params_.push_back(ps.add_view(prefix + "up_proj.weight", gu_param_, F * D, {F, D}));
  Param<T>* down = ps.add(prefix + "down_proj.weight", {D, F});
  params_.push_back(down);
  const LinearPrecision lp = pol.linear(c);
  gu_ = Linear<T>::make(&gu_param_, D, 2 * F, lp, pol, ex, linear);
  down_ = Linear<T>::make(down, F, D, lp, pol, ex, linear);
  recompute_swiglu_ = lp.fp8();
  store_bf16_ = pol.store_bf16;
}

template <class T>
void Mlp<T>::init(double std, uint64_t seed) {
  for (Param<T>* p : params_) init_normal(*p, std, seed);
}

template <class T>
void Mlp<T>::forward(State& st, const T* x, int64_t N, T* y) const {
  Scratch& sc = *scratch_;
  st.N = N;
  st.gu.set_form(recompute_swiglu_, store_bf16_, down_.lp.pow2_x);  // "all" scales: pow2
  T* gu = st.gu.write(N, 2 * F_, sc.gu);
  gu_.forward_keep_input(st.x, x, N, gu);
  st.gu.keep(ex_, sc.gu);
  st.a.set_form(false, store_bf16_);
  T* a = recompute_swiglu_ ? sized(sc.a, N * F_) : st.a.write(N, F_, sc.a);
  kernels::swiglu_forward<T>(ex_, gu, N, F_, nullptr, a);
  if (!recompute_swiglu_) st.a.keep(ex_, sc.a);
  down_.forward(a, N, y);  // FP8: a quantised 1x128 on the fly, not kept
}

template <class T>
void Mlp<T>::backward_input(State& st, const T* dy, T* dx, bool accumulate) const {
  Scratch& sc = *scratch_;
  const int64_t N = st.N;
  down_.keep_grad(st.dy, dy, N);  // a copy, or (FP8) the Wgrad's tiles
  T* da = sized(sc.a, N * F_);    // the forward's SwiGLU output staging (backward_weight's
                                  // recompute of a comes after da is read)
  down_.backward_input(dy, N, da);
  // FP8: gu widened into sc.gu, and dgu staged there too before its tiles (in place: the SwiGLU
  // backward reads each (g, u) pair before it writes its (dg, du))
  const T* gu = st.gu.read(ex_, sc.gu);
  T* dgu = gu_.grad(st.dgu, N, sc.gu);
  kernels::swiglu_backward<T>(ex_, da, gu, N, F_, nullptr, dgu, nullptr);
  gu_.backward_input(dgu, N, dx, accumulate);
  gu_.keep_grad(st.dgu, dgu, N);
}

template <class T>
void Mlp<T>::backward_weight(State& st, const T* x) const {
  Scratch& sc = *scratch_;
  const T* a = nullptr;
  if (recompute_swiglu_) {  // a = swiglu(gu) from the kept gu
    a = sized(sc.a, st.N * F_);
    kernels::swiglu_forward<T>(ex_, st.gu.read(ex_, sc.gu), st.N, F_, nullptr, sc.a.data());
  } else {
    a = st.a.read(ex_, sc.a);
  }
  down_.backward_weight(st.dy, a, st.N);
  if (st.x.fp8())
    gu_.backward_weight(st.dgu, st.x);
  else
    gu_.backward_weight(st.dgu, x, st.N);
}

template class Mlp<float>;
template class Mlp<double>;

}  // namespace moetron
