// Elementwise vector ops on the GPU (residual adds, gradient accumulation, bf16 storage of
// activations): grid-stride loops, one element per thread per step. The bf16 rounding is
// kernels/scalar.h's, so the CPU tests of f32_to_bf16 cover what runs here.
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/op_instantiate.h"
#include "kernels/scalar.h"

namespace moetron::kernels::gpu {

namespace {

template <class T>
__global__ void axpy_kernel(T* y, T a, const T* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] += a * x[i];
}
template <class T>
__global__ void add_kernel(T* y, const T* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] += x[i];
}
__global__ void narrow_kernel(const float* x, int64_t n, uint16_t* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = f32_to_bf16(x[i]);
}
__global__ void widen_kernel(const uint16_t* x, int64_t n, float* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = bf16_to_f32(x[i]);
}
// one thread per pair of codes (kernels/scalar.h's packing; an odd n's last pair pads with 0)
__global__ void narrow_e5m6_kernel(const float* x, int64_t n, uint8_t* y) {
  const int64_t pairs = (n + 1) / 2;
  for (int64_t p = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; p < pairs;
       p += int64_t(gridDim.x) * blockDim.x)
    e5m6_narrow_pair(x, n, p, y);
}
__global__ void widen_e5m6_kernel(const uint8_t* x, int64_t n, float* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = e5m6_widen_at(x, i);
}

}  // namespace

template <class T>
void add_inplace(const Exec& ex, T* y, const T* x, int64_t n) {
  if (n <= 0) return;
  add_kernel<T><<<blocks_for(n), kThreads, 0, stream_of(ex)>>>(y, x, n);
  MOETRON_CUDA_LAUNCHED("add_inplace");
}

template <class T>
void axpy(const Exec& ex, T* y, T a, const T* x, int64_t n) {
  if (n <= 0) return;
  axpy_kernel<T><<<blocks_for(n), kThreads, 0, stream_of(ex)>>>(y, a, x, n);
  MOETRON_CUDA_LAUNCHED("axpy");
}

void narrow_to_bf16(const Exec& ex, const float* x, int64_t n, uint16_t* y) {
  if (n <= 0) return;
  narrow_kernel<<<blocks_for(n), kThreads, 0, stream_of(ex)>>>(x, n, y);
  MOETRON_CUDA_LAUNCHED("narrow_to_bf16");
}

void narrow_to_e5m6(const Exec& ex, const float* x, int64_t n, uint8_t* y) {
  if (n <= 0) return;
  narrow_e5m6_kernel<<<blocks_for((n + 1) / 2), kThreads, 0, stream_of(ex)>>>(x, n, y);
  MOETRON_CUDA_LAUNCHED("narrow_to_e5m6");
}

void widen_from_e5m6(const Exec& ex, const uint8_t* x, int64_t n, float* y) {
  if (n <= 0) return;
  widen_e5m6_kernel<<<blocks_for(n), kThreads, 0, stream_of(ex)>>>(x, n, y);
  MOETRON_CUDA_LAUNCHED("widen_from_e5m6");
}

void widen_from_bf16(const Exec& ex, const uint16_t* x, int64_t n, float* y) {
  if (n <= 0) return;
  widen_kernel<<<blocks_for(n), kThreads, 0, stream_of(ex)>>>(x, n, y);
  MOETRON_CUDA_LAUNCHED("widen_from_bf16");
}

MOETRON_OPS_ELEMENTWISE(float)
MOETRON_OPS_ELEMENTWISE(double)

}  // namespace moetron::kernels::gpu
