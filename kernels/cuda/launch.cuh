// Launch helpers shared by the .cu files of the CUDA backend: grid sizes for element and row
// loops, the block-wide sum every row kernel (RMSNorm, softmax, cross-entropy) reduces with, and
// the opt-in to more than 48 KiB of dynamic shared memory.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <set>
#include <stdexcept>
#include <string>
#include <utility>

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

// Lets `kernel` launch with `bytes` of dynamic shared memory (past the default 48 KiB). Opted in
// once per (device, kernel), at `most` (the most any call of it needs) or the device's limit if
// lower: host threads calling with different sizes then never lower one another's limit between
// its setting and a launch. A call needing more than the device allows per block (not an
// H100/H200) gets a clear error instead of a failed launch; a failed opt-in is tried again.
template <class K>
void allow_smem(K kernel, size_t bytes, size_t most, const char* op) {
  static std::mutex mu;
  static std::set<std::pair<int, const void*>> opted;
  int dev = 0, optin = 0;
  MOETRON_CUDA_CHECK(cudaGetDevice(&dev));
  MOETRON_CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, dev));
  if (bytes > static_cast<size_t>(optin))
    throw std::invalid_argument(std::string(op) + ": needs " + std::to_string(bytes) +
                                " bytes of shared memory per block; this device allows " +
                                std::to_string(optin));
  if (bytes <= 48 * 1024) return;
  const std::pair<int, const void*> key{dev, reinterpret_cast<const void*>(kernel)};
  std::lock_guard<std::mutex> lk(mu);
  if (opted.count(key)) return;
  const size_t limit = std::min(std::max(most, bytes), static_cast<size_t>(optin));
  MOETRON_CUDA_CHECK(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                          static_cast<int>(limit)));
  opted.insert(key);
}

}  // namespace moetron::kernels::gpu
