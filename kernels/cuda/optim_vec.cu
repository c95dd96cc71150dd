// The optimizer's vector ops on the GPU (see kernels/cpu/optim_vec.cpp): the gradient's sum of
// squares and non-finite count for ZeRO-1's norm and guard, the clip factor, the bf16 rounding.
// The sum of squares runs once per owned parameter segment and step (thousands of segments of
// ~1M values for the mid-size model): a first pass of ceil(n / kSumChunk) blocks (at most
// kMaxSumBlocks), each a strided double sum reduced by block_sum's fixed tree into the workspace,
// then one block sums those partials by the same tree. The block count depends on n alone, so the
// bits are the same run to run and on any GPU (not the CPU's: a different order). One block for
// the whole segment, as before, read it through one SM: ~0.2 s a step for the mid-size model.
// The count uses integer atomics (exact in any order).
#include <algorithm>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/scalar.h"

namespace moetron::kernels::gpu {

namespace {

constexpr int kSumThreads = 1024;
constexpr int64_t kSumChunk = int64_t(1) << 14;  // values per block of the first pass
constexpr int64_t kMaxSumBlocks = 1024;

// out[blockIdx.x] = the block's strided share of sum x^2
__global__ void sum_squares_kernel(const float* x, int64_t n, double* out) {
  double s = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    s += static_cast<double>(x[i]) * x[i];
  s = block_sum(s);
  if (threadIdx.x == 0) out[blockIdx.x] = s;
}

// out[0] = sum of the g partials (one block)
__global__ void sum_partials_kernel(const double* part, int64_t g, double* out) {
  double s = 0;
  for (int64_t i = threadIdx.x; i < g; i += blockDim.x) s += part[i];
  s = block_sum(s);
  if (threadIdx.x == 0) out[0] = s;
}

__global__ void count_nonfinite_kernel(const float* x, int64_t n, unsigned long long* out) {
  unsigned long long bad = 0;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    bad += isfinite(x[i]) ? 0 : 1;
  bad = block_sum(bad);
  if (threadIdx.x == 0 && bad > 0) atomicAdd(out, bad);
}

__global__ void scale_kernel(float* x, float c, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    x[i] *= c;
}

__global__ void round_bf16_kernel(float* x, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    x[i] = round_bf16(x[i]);
}

}  // namespace

void sum_squares(const Exec& ex, const float* x, int64_t n, double* out) {
  cudaStream_t st = stream_of(ex);
  const int64_t g = std::min(std::max<int64_t>((n + kSumChunk - 1) / kSumChunk, 1), kMaxSumBlocks);
  if (g == 1) {  // one block straight into out (n <= 0 writes 0)
    sum_squares_kernel<<<1, kSumThreads, 0, st>>>(x, n, out);
    MOETRON_CUDA_LAUNCHED("sum_squares");
    return;
  }
  double* part = static_cast<double*>(workspace(ex, sizeof(double) * g));
  sum_squares_kernel<<<static_cast<unsigned>(g), kSumThreads, 0, st>>>(x, n, part);
  MOETRON_CUDA_LAUNCHED("sum_squares (blocks)");
  sum_partials_kernel<<<1, kSumThreads, 0, st>>>(part, g, out);
  MOETRON_CUDA_LAUNCHED("sum_squares (total)");
}

void count_nonfinite(const Exec& ex, const float* x, int64_t n, int64_t* out) {
  static_assert(sizeof(int64_t) == sizeof(unsigned long long));
  MOETRON_CUDA_CHECK(cudaMemsetAsync(out, 0, sizeof(int64_t), stream_of(ex)));
  if (n <= 0) return;
  count_nonfinite_kernel<<<blocks_for(n), kThreads, 0, stream_of(ex)>>>(
      x, n, reinterpret_cast<unsigned long long*>(out));
  MOETRON_CUDA_LAUNCHED("count_nonfinite");
}

void scale_inplace(const Exec& ex, float* x, float c, int64_t n) {
  if (n <= 0) return;
  scale_kernel<<<blocks_for(n), kThreads, 0, stream_of(ex)>>>(x, c, n);
  MOETRON_CUDA_LAUNCHED("scale_inplace");
}

void round_bf16_inplace(const Exec& ex, float* x, int64_t n) {
  if (n <= 0) return;
  round_bf16_kernel<<<blocks_for(n), kThreads, 0, stream_of(ex)>>>(x, n);
  MOETRON_CUDA_LAUNCHED("round_bf16_inplace");
}

}  // namespace moetron::kernels::gpu
