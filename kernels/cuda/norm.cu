// RMSNorm on the GPU: forward, and the split backward (input gradient, weight gradient), the
// twins of kernels/cpu/norm.cpp with the same precision choices so results agree to a few ulp.
//
// Shapes: x, y, dy, dx [N, D]; w, dw [D]; rstd [N] = 1 / sqrt(mean(x^2) + eps).
//   forward, backward_input: one block per row; the row's sum of squares (or dot(dy*w, x)) is
//     accumulated in double per thread and reduced with block_sum<double> (a fixed tree:
//     deterministic); rstd is 1 / sqrt(ss / D + eps) in double, then cast, as on the CPU.
//   backward_weight: dw[d] += sum_n (double)(dy*x) * rstd[n]; one thread per column d walks the
//     rows in order (owner computes: deterministic, no atomics; adjacent threads read adjacent
//     columns, so the loads coalesce), accumulating in double, then one add into dw in T.
// The CPU is built with FMA contraction (x86 -march=native, gnu++20): the products-then-add
// patterns below are fused explicitly where GCC fuses them, so the per-element arithmetic matches.
#include <stdexcept>
#include <string>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/op_instantiate.h"

namespace moetron::kernels::gpu {

namespace {

// One block per row: the grid's x dimension holds up to 2^31 - 1 blocks.
void check_rows(int64_t N, const char* op) {
  if (N > 0x7fffffff) throw std::invalid_argument(std::string(op) + ": too many rows for one grid");
}

// y[n, :] = x[n, :] * rstd[n] * w,  rstd[n] = 1 / sqrt(mean_d x[n, d]^2 + eps). grid (N), block.
template <class T>
__global__ void rmsnorm_forward_kernel(const T* x, const T* w, int64_t D, T eps, T* y, T* rstd) {
  const int64_t n = blockIdx.x;
  const T* xr = x + n * D;
  T* yr = y + n * D;
  double ss = 0;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) {
    const double v = static_cast<double>(xr[d]);
    ss = fma(v, v, ss);
  }
  ss = block_sum<double>(ss);
  const T r = static_cast<T>(1.0 / sqrt(ss / static_cast<double>(D) + static_cast<double>(eps)));
  if (threadIdx.x == 0) rstd[n] = r;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) yr[d] = xr[d] * r * w[d];
}

// dx[n, :] = rstd * (dy*w - x * c),  c = rstd^2 * mean_d(dy*w*x). grid (N), block.
template <class T>
__global__ void rmsnorm_backward_input_kernel(const T* dy, const T* x, const T* w, const T* rstd,
                                              int64_t D, T* dx) {
  const int64_t n = blockIdx.x;
  const T* xr = x + n * D;
  const T* gr = dy + n * D;
  T* dxr = dx + n * D;
  double dot = 0;
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x)
    dot = fma(static_cast<double>(gr[d]) * static_cast<double>(w[d]), static_cast<double>(xr[d]),
              dot);
  dot = block_sum<double>(dot);
  const T r = rstd[n];
  const T c = static_cast<T>(dot / static_cast<double>(D) * r * r);
  for (int64_t d = threadIdx.x; d < D; d += blockDim.x) dxr[d] = r * (gr[d] * w[d] - xr[d] * c);
}

// dw[d] += sum_n (double)(dy[n, d] * x[n, d]) * rstd[n], rows in order. One thread per column.
template <class T>
__global__ void rmsnorm_backward_weight_kernel(const T* dy, const T* x, const T* rstd, int64_t N,
                                               int64_t D, T* dw) {
  for (int64_t d = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; d < D;
       d += int64_t(gridDim.x) * blockDim.x) {
    double acc = 0;
    for (int64_t n = 0; n < N; ++n) {
      const T p = dy[n * D + d] * x[n * D + d];  // the product in T, as the CPU
      acc = fma(static_cast<double>(p), static_cast<double>(rstd[n]), acc);
    }
    dw[d] += static_cast<T>(acc);
  }
}

}  // namespace

template <class T>
void rmsnorm_forward(const Exec& ex, const T* x, const T* w, int64_t N, int64_t D, T eps, T* y,
                     T* rstd) {
  if (N <= 0) return;
  check_rows(N, "rmsnorm_forward");
  rmsnorm_forward_kernel<T>
      <<<static_cast<unsigned>(N), kThreads, 0, stream_of(ex)>>>(x, w, D, eps, y, rstd);
  MOETRON_CUDA_LAUNCHED("rmsnorm_forward");
}

template <class T>
void rmsnorm_backward_input(const Exec& ex, const T* dy, const T* x, const T* w, const T* rstd,
                            int64_t N, int64_t D, T* dx) {
  if (N <= 0 || D <= 0) return;
  check_rows(N, "rmsnorm_backward_input");
  rmsnorm_backward_input_kernel<T>
      <<<static_cast<unsigned>(N), kThreads, 0, stream_of(ex)>>>(dy, x, w, rstd, D, dx);
  MOETRON_CUDA_LAUNCHED("rmsnorm_backward_input");
}

template <class T>
void rmsnorm_backward_weight(const Exec& ex, const T* dy, const T* x, const T* rstd, int64_t N,
                             int64_t D, T* dw) {
  if (N <= 0 || D <= 0) return;  // nothing to add
  rmsnorm_backward_weight_kernel<T>
      <<<blocks_for(D), kThreads, 0, stream_of(ex)>>>(dy, x, rstd, N, D, dw);
  MOETRON_CUDA_LAUNCHED("rmsnorm_backward_weight");
}

MOETRON_OPS_NORM(float)
MOETRON_OPS_NORM(double)

}  // namespace moetron::kernels::gpu
