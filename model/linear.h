// Linear: y = x W^T with W [out, in], no bias — the building block of every projection.
//
// Split backward (ARCHITECTURE contract 1): backward_input gives dx from dy; backward_weight adds
// dW from (dy, x) and may run later (zero-bubble / DualPipe defer it). The caller keeps x and dy
// in its per-micro-batch state; a Linear holds only the weight and its precision.
#pragma once

#include "kernels/ops.h"
#include "model/param.h"

namespace moetron {

template <class T>
struct Linear {
  Param<T>* W = nullptr;  // [out, in]
  int64_t in = 0, out = 0;
  kernels::GemmPrecision prec = kernels::GemmPrecision::FP32;

  // y[N,out] = x[N,in] W^T
  void forward(const T* x, int64_t N, T* y) const {
    kernels::gemm<T>(false, true, N, out, in, T(1), x, W->w(), T(0), y, prec);
  }
  // dx[N,in] = dy[N,out] W   (accumulate: dx += ...)
  void backward_input(const T* dy, int64_t N, T* dx, bool accumulate = false) const {
    kernels::gemm<T>(false, false, N, in, out, T(1), dy, W->w(), accumulate ? T(1) : T(0), dx,
                     prec);
  }
  // dW[out,in] += dy[N,out]^T x[N,in]
  void backward_weight(const T* dy, const T* x, int64_t N) const {
    kernels::gemm<T>(true, false, out, in, N, T(1), dy, x, T(1), W->g(), prec);
  }
};

}  // namespace moetron
