// Launch helpers shared by the .cu files of the CUDA backend: grid sizes for element and row
// loops, and the block-wide sum every row kernel (RMSNorm, softmax, cross-entropy) reduces with.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "kernels/cuda/runtime.h"

namespace moetron::kernels::gpu {

inline constexpr int kThreads = 256;

// Blocks for a grid-stride loop over n elements (capped: the loop covers the rest).
inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<int64_t>(b, 1, 65535 * 8));
}

// Sum of v over the block (blockDim.x a multiple of 32, at most 1024); every thread gets it.
// Deterministic: a fixed tree for a fixed block size.
template <class T>
__device__ T block_sum(T v) {
  __shared__ T warp_sums[32];
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // warp_sums may still be read by a previous call
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  const int nwarps = (blockDim.x + 31) / 32;
  T s = lane < nwarps ? warp_sums[lane] : T(0);
  for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
  return s;
}

}  // namespace moetron::kernels::gpu
