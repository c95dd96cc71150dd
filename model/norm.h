// RMSNorm layer: y = x / sqrt(mean(x^2) + eps) * w, weight initialised to 1, no weight decay.
// Split backward: backward_input (dx) and backward_weight (dw) from the same saved (x, rstd), or
// dw of one micro-batch made with backward_input (weight_grad) and added by backward_weight.
#pragma once

#include <string>

#include "kernels/exec.h"
#include "kernels/ops.h"
#include "model/buffers.h"
#include "model/param.h"

namespace moetron {

template <class T>
struct RMSNorm {
  Param<T>* w = nullptr;  // [D]
  int64_t D = 0;
  T eps = T(1e-6);
  Exec ex{};

  void build(ParamStore<T>& ps, const std::string& name, int64_t dim, double eps_, const Exec& e) {
    D = dim, ex = e;
    eps = static_cast<T>(eps_);
    w = ps.add(name, {dim}, /*decay=*/false);
    init_constant(*w, 1.0);
  }
  // y[N,D], rstd[N]
  void forward(const T* x, int64_t N, T* y, T* rstd) const {
    kernels::rmsnorm_forward<T>(ex, x, w->w(), N, D, eps, y, rstd);
  }
  // dx[N,D] (write)
  void backward_input(const T* dy, const T* x, const T* rstd, int64_t N, T* dx) const {
    kernels::rmsnorm_backward_input<T>(ex, dy, x, w->w(), rstd, N, D, dx);
  }
  void backward_weight(const T* dy, const T* x, const T* rstd, int64_t N) const {
    kernels::rmsnorm_backward_weight<T>(ex, dy, x, rstd, N, D, w->g());
  }
  // The split form for a layer that defers its weight gradients: the micro-batch's dw [D] is
  // computed while dy is at hand (backward_input), into a buffer the micro-batch keeps instead of
  // dy [N, D], and added to the gradient by backward_weight(dw_mb). The kernel adds each column's
  // sum once (dw[d] += sum), so (0 + sum) then (g + that) is g + sum: the same bits.
  void weight_grad(const T* dy, const T* x, const T* rstd, int64_t N, Buffer<T>& dw_mb) const {
    kernels::rmsnorm_backward_weight<T>(ex, dy, x, rstd, N, D, zeroed(ex, dw_mb, D));
  }
  void backward_weight(const Buffer<T>& dw_mb) const {
    kernels::add_inplace<T>(ex, w->g(), dw_mb.data(), D);
  }
};

}  // namespace moetron
