// Launch helpers shared by the .cu files of the CUDA backend: grid sizes for element and row
// loops, the block-wide reduction every row kernel (RMSNorm, softmax, cross-entropy, the FP8
// tiles' amax) reduces with, and the opt-in to more than 48 KiB of dynamic shared memory.
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

// Blocks for a grid-stride loop over n elements (capped: the loop covers the rest; the cap is
// max_grid_blocks(), runtime.h).
inline unsigned blocks_for(int64_t n, int threads = kThreads) {
  const int64_t b = (n + threads - 1) / threads;
  return static_cast<unsigned>(std::clamp<int64_t>(b, 1, max_grid_blocks()));
}

// A grid over segments of different lengths (one launch for many parameter pieces: a gradient
// norm's sums of squares, a multi-tensor AdamW step). Segment s owns blocks [first_block,
// first_block + blocks) of the grid: ceil(len / chunk) of them, at least 1, at most max_blocks, so
// its blocks depend on its length alone (and a strided loop over them covers it in the same order
// whichever segments share the launch). A block finds its segment by binary search over the
// segments' first_block (increasing; Seg has a member first_block).
inline int64_t segment_blocks(int64_t len, int64_t chunk, int64_t max_blocks) {
  return std::min(std::max<int64_t>((len + chunk - 1) / chunk, 1), max_blocks);
}
template <class Seg>
__device__ __forceinline__ int64_t segment_of_block(const Seg* seg, int64_t n, int64_t b) {
  int64_t lo = 0, hi = n - 1;  // the last segment whose first block is <= b
  while (lo < hi) {
    const int64_t mid = (lo + hi + 1) / 2;
    if (seg[mid].first_block <= b)
      lo = mid;
    else
      hi = mid - 1;
  }
  return lo;
}

// Which of n consecutive ranges holds item i, the ranges given by their ends (end[j]: the items
// of ranges 0..j, increasing; end[n - 1] > i): the first j with end[j] > i. For the batches
// passed as a kernel argument (the operands of the cuBLASLt layouts, a grouped quantiser's groups).
__device__ __forceinline__ int range_of(const int64_t* end, int n, int64_t i) {
  int j = 0, hi = n - 1;
  while (j < hi) {
    const int mid = (j + hi) / 2;
    if (end[mid] > i)
      hi = mid;
    else
      j = mid + 1;
  }
  return j;
}

// The reductions' operations. MaxOp is the CPU loops' max ("a < b ? b : a": a NaN already in a
// stays, one in b is passed over).
struct SumOp {
  template <class T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};
struct MaxOp {
  template <class T>
  __device__ T operator()(T a, T b) const {
    return a < b ? b : a;
  }
};

// op's reduction of v over the warp's 32 lanes, a butterfly: every lane gets the same bits where
// op(a, b) == op(b, a) (sums; maxima without NaN).
template <class T, class Op>
__device__ __forceinline__ T warp_reduce(T v, Op op) {
  for (int o = 16; o > 0; o >>= 1) v = op(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

template <class T>
__device__ __forceinline__ T warp_sum(T v) {
  return warp_reduce(v, SumOp{});
}

// op's reduction of v over the block (blockDim.x a multiple of 32, at most 1024); every thread
// gets it. `none` is op's identity, standing for the lanes past the block's warps. Deterministic:
// a fixed tree for a fixed block size (each warp's butterfly, then the warps' results through
// shared memory, an array per instantiation). Every reduction over a block is one of these.
template <class T, class Op>
__device__ T block_reduce(T v, Op op, T none) {
  __shared__ T warp_results[32];
  v = warp_reduce(v, op);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  __syncthreads();  // warp_results may still be read by a previous call
  if (lane == 0) warp_results[warp] = v;
  __syncthreads();
  const int nwarps = (blockDim.x + 31) / 32;
  return warp_reduce(lane < nwarps ? warp_results[lane] : none, op);
}

// Sum of v over the block; every thread gets it.
template <class T>
__device__ T block_sum(T v) {
  return block_reduce(v, SumOp{}, T(0));
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
