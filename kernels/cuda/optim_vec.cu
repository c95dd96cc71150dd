// The optimizer's vector ops on the GPU (see kernels/cpu/optim_vec.cpp): the gradient's sum of
// squares and non-finite count for ZeRO-1's norm and guard, the clip factor, the bf16 rounding.
// The sums of squares of all a step's owned parameter segments (thousands of ~1M values for the
// mid-size model) take two launches, not two per segment: a first pass in which segment s has
// ceil(len / kSumChunk) blocks (at least 1, at most kMaxSumBlocks), each a strided double sum of
// its segment reduced by block_sum's fixed tree into the workspace, then one block per segment
// summing its partials by the same tree. A segment's block count depends on its length alone, so
// its bits are the same run to run, on any GPU and whichever segments share the call (not the
// CPU's: a different order). One block for a whole segment read it through one SM: ~0.2 s a step
// for the mid-size model; one launch per segment cost a few microseconds each.
// The count uses integer atomics (exact in any order).
#include <algorithm>
#include <vector>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/scalar.h"

namespace moetron::kernels::gpu {

namespace {

constexpr int kSumThreads = 1024;
constexpr int64_t kSumChunk = int64_t(1) << 14;  // values per block of the first pass
constexpr int64_t kMaxSumBlocks = 1024;

// A segment of the sum of squares, as the kernels see it: where it is and which blocks are its.
struct SumSegment {
  int64_t begin, len;           // in x
  int64_t first_block, blocks;  // of the first pass (first_block increasing: every segment has one)
};

int64_t sum_blocks(int64_t len) { return segment_blocks(len, kSumChunk, kMaxSumBlocks); }

// part[blockIdx.x] = the block's strided share of its segment's sum of x^2
__global__ void segment_squares_kernel(const float* x, const SumSegment* seg, int64_t n,
                                       double* part) {
  const int64_t b = blockIdx.x;
  const SumSegment sg = seg[segment_of_block(seg, n, b)];
  const float* p = x + sg.begin;
  double s = 0;
  for (int64_t i = (b - sg.first_block) * blockDim.x + threadIdx.x; i < sg.len;
       i += sg.blocks * blockDim.x)
    s += static_cast<double>(p[i]) * p[i];
  s = block_sum(s);
  if (threadIdx.x == 0) part[b] = s;
}

// out[blockIdx.x] = the sum of that segment's partials (one block per segment)
__global__ void segment_totals_kernel(const double* part, const SumSegment* seg, double* out) {
  const SumSegment sg = seg[blockIdx.x];
  double s = 0;
  for (int64_t i = threadIdx.x; i < sg.blocks; i += blockDim.x) s += part[sg.first_block + i];
  s = block_sum(s);
  if (threadIdx.x == 0) out[blockIdx.x] = s;
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

void segment_sum_squares(const Exec& ex, const float* x, const int64_t* begin, const int64_t* len,
                         int64_t n, double* out) {
  if (n <= 0) return;
  std::vector<SumSegment> table(static_cast<size_t>(n));
  int64_t blocks = 0;
  for (int64_t s = 0; s < n; ++s) {
    table[s] = {begin[s], std::max<int64_t>(len[s], 0), blocks, sum_blocks(len[s])};
    blocks += table[s].blocks;
  }
  // the table, then the partials, in the stream's workspace; the upload goes through a pinned
  // staging slot, so the host table may go at once
  const size_t table_bytes = sizeof(SumSegment) * table.size();
  const size_t part_offset = (table_bytes + 255) / 256 * 256;
  auto* ws = static_cast<uint8_t*>(workspace(ex, part_offset + sizeof(double) * blocks));
  auto* seg = reinterpret_cast<SumSegment*>(ws);
  auto* part = reinterpret_cast<double*>(ws + part_offset);
  copy_from_host(ex, seg, table.data(), table_bytes);
  cudaStream_t st = stream_of(ex);
  segment_squares_kernel<<<static_cast<unsigned>(blocks), kSumThreads, 0, st>>>(x, seg, n, part);
  MOETRON_CUDA_LAUNCHED("segment_sum_squares (blocks)");
  segment_totals_kernel<<<static_cast<unsigned>(n), kSumThreads, 0, st>>>(part, seg, out);
  MOETRON_CUDA_LAUNCHED("segment_sum_squares (totals)");
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
