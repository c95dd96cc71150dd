// RMSNorm forward and its split backward (input gradient and weight gradient run separately, as
// zero-bubble schedules need).
//
// Shapes: x, y, dy, dx [N, D]; w, dw [D]; rstd [N] = 1 / sqrt(mean(x^2) + eps), saved by the
// forward. Row reductions accumulate in double (cheap next to the memory traffic, and keeps fp32
// results within a few ulp of the reference for any D). Forward and input backward are parallel
// over rows; the weight gradient reduces over rows, so it is parallel over column blocks, each
// thread summing its columns over all rows in a fixed order (deterministic, race-free).
#include <algorithm>
#include <cmath>

#include "kernels/cpu/ops_cpu.h"

namespace moetron::kernels::cpu {

namespace {
constexpr int64_t kParallelMin = 1 << 14;  // elements below which a call stays on one thread
}

// y = x * rstd * w,  rstd = 1 / sqrt(mean_d x^2 + eps)
template <class T>
void rmsnorm_forward(const T* x, const T* w, int64_t N, int64_t D, T eps, T* y, T* rstd) {
#pragma omp parallel for schedule(static) if (N * D >= kParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * D;
    T* yr = y + n * D;
    double ss = 0;
#pragma omp simd reduction(+ : ss)
    for (int64_t d = 0; d < D; ++d) ss += static_cast<double>(xr[d]) * xr[d];
    const T r = static_cast<T>(1.0 / std::sqrt(ss / static_cast<double>(D) + eps));
    rstd[n] = r;
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) yr[d] = xr[d] * r * w[d];
  }
}

// dx = rstd * (dy*w - x * rstd^2 * mean_d(dy*w*x))
template <class T>
void rmsnorm_backward_input(const T* dy, const T* x, const T* w, const T* rstd, int64_t N,
                            int64_t D, T* dx) {
#pragma omp parallel for schedule(static) if (N * D >= kParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const T* xr = x + n * D;
    const T* gr = dy + n * D;
    T* dxr = dx + n * D;
    double dot = 0;
#pragma omp simd reduction(+ : dot)
    for (int64_t d = 0; d < D; ++d) dot += static_cast<double>(gr[d]) * w[d] * xr[d];
    const T r = rstd[n];
    const T c = static_cast<T>(dot / static_cast<double>(D) * r * r);
#pragma omp simd
    for (int64_t d = 0; d < D; ++d) dxr[d] = r * (gr[d] * w[d] - xr[d] * c);
  }
}

// dw[d] += sum_n dy[n,d] * x[n,d] * rstd[n]. The multiply-add is one fma, spelled out: the GPU's
// kernel (kernels/cuda/norm.cu) fuses it, and a build whose -march has no FMA (the sanitizer
// build, a portable Release) would otherwise round twice and lose its bitwise match.
template <class T>
void rmsnorm_backward_weight(const T* dy, const T* x, const T* rstd, int64_t N, int64_t D, T* dw) {
  constexpr int64_t kBlock = 64;
  const int64_t nblocks = (D + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (N * D >= kParallelMin)
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t d0 = b * kBlock, w = std::min(D - d0, kBlock);
    double acc[kBlock] = {};
    for (int64_t n = 0; n < N; ++n) {
      const T* gr = dy + n * D + d0;
      const T* xr = x + n * D + d0;
      const double r = rstd[n];
#pragma omp simd
      for (int64_t d = 0; d < w; ++d)
        acc[d] = std::fma(static_cast<double>(gr[d] * xr[d]), r, acc[d]);
    }
    for (int64_t d = 0; d < w; ++d) dw[d0 + d] += static_cast<T>(acc[d]);
  }
}

#define MOETRON_INSTANTIATE(T)                                                             \
  template void rmsnorm_forward<T>(const T*, const T*, int64_t, int64_t, T, T*, T*);       \
  template void rmsnorm_backward_input<T>(const T*, const T*, const T*, const T*, int64_t, \
                                          int64_t, T*);                                    \
  template void rmsnorm_backward_weight<T>(const T*, const T*, const T*, int64_t, int64_t, T*);
MOETRON_INSTANTIATE(float)
MOETRON_INSTANTIATE(double)
#undef MOETRON_INSTANTIATE

}  // namespace moetron::kernels::cpu
