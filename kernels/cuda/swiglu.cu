// SwiGLU on the GPU, with the optional per-row gate weight fused in: the twin of
// kernels/cpu/swiglu.cpp (same per-element expressions, the sigmoid through scalar.h's fast_exp,
// so the CPU tests of fast_exp cover what runs here).
//
// Shapes: gu, dgu [N, 2F] = [gate(F) | up(F)] per row; out, dout [N, F]; row_scale,
// drow_scale [N] (optional, may be null).
//   out = silu(g) * u * s
//   dg = dout * u * s * silu'(g),  du = dout * silu(g) * s,  ds = sum_f dout * silu(g) * u
// forward: elementwise, grid-stride over N*F. backward: one block per row (the per-row sum ds is
// accumulated in double per thread and reduced with block_sum<double>, a fixed tree:
// deterministic; the CPU sums in T, so the GPU's ds is the more accurate of the two).
#include <stdexcept>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/op_instantiate.h"
#include "kernels/scalar.h"

namespace moetron::kernels::gpu {

namespace {

template <class T>
__global__ void swiglu_forward_kernel(const T* gu, int64_t N, int64_t F, const T* row_scale,
                                      T* out) {
  const int64_t total = N * F;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < total;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = k / F, f = k % F;
    const T* g = gu + n * 2 * F;
    const T s = row_scale ? row_scale[n] : T(1);
    out[k] = fast_silu(g[f]) * g[F + f] * s;
  }
}

// grid (N), block: row n of dgu, and drow_scale[n] when both row pointers are given.
template <class T>
__global__ void swiglu_backward_kernel(const T* dout, const T* gu, int64_t F, const T* row_scale,
                                       T* dgu, T* drow_scale) {
  const int64_t n = blockIdx.x;
  const T* g = gu + n * 2 * F;
  const T* u = g + F;
  const T* d = dout + n * F;
  T* dg = dgu + n * 2 * F;
  T* du = dg + F;
  const T s = row_scale ? row_scale[n] : T(1);
  double ds = 0;
  for (int64_t f = threadIdx.x; f < F; f += blockDim.x) {
    const T sg = fast_sigmoid(g[f]);
    const T act = g[f] * sg;  // silu(g)
    const T dact = sg * (T(1) + g[f] * (T(1) - sg));
    ds = fma(static_cast<double>(d[f] * act), static_cast<double>(u[f]), ds);
    dg[f] = d[f] * u[f] * s * dact;
    du[f] = d[f] * act * s;
  }
  if (row_scale && drow_scale) {  // uniform over the block: every thread takes the same branch
    ds = block_sum<double>(ds);
    if (threadIdx.x == 0) drow_scale[n] = static_cast<T>(ds);
  }
}

}  // namespace

template <class T>
void swiglu_forward(const Exec& ex, const T* gu, int64_t N, int64_t F, const T* row_scale, T* out) {
  if (N <= 0 || F <= 0) return;
  swiglu_forward_kernel<T>
      <<<blocks_for(N * F), kThreads, 0, stream_of(ex)>>>(gu, N, F, row_scale, out);
  MOETRON_CUDA_LAUNCHED("swiglu_forward");
}

template <class T>
void swiglu_backward(const Exec& ex, const T* dout, const T* gu, int64_t N, int64_t F,
                     const T* row_scale, T* dgu, T* drow_scale) {
  if (N <= 0) return;
  if (N > 0x7fffffff) throw std::invalid_argument("swiglu_backward: too many rows for one grid");
  swiglu_backward_kernel<T><<<static_cast<unsigned>(N), kThreads, 0, stream_of(ex)>>>(
      dout, gu, F, row_scale, dgu, drow_scale);
  MOETRON_CUDA_LAUNCHED("swiglu_backward");
}

MOETRON_OPS_SWIGLU(float)
MOETRON_OPS_SWIGLU(double)

}  // namespace moetron::kernels::gpu
