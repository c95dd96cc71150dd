// Token permutation by expert on the GPU (kernels/cpu/permute.cpp is the reference): the routing
// table, the gather into expert-sorted rows (dispatch) and the scatter-add back into tokens
// (combine, and the backward of the gather).
//
// route_by_expert, from idx [N, K] (-1: expert elsewhere): counts [E], offsets [E+1] (each count
// rounded up to a multiple of align), slot [N*K], row_token and row_slot [offsets[E]] (an expert's
// pad rows -1). It must be STABLE (rows of one expert in (n, k) order) and deterministic, so it is
// a chunked counting sort with no order-dependent atomics:
//   1. one thread per chunk of kChunk assignments counts its experts: cnt [C, E] (workspace);
//   2. one block: per expert, the exclusive scan of cnt over chunks (chunk order) gives each
//      chunk's first row inside the expert and counts[e]; thread 0 scans the aligned counts into
//      offsets; then every chunk's base gets its expert's offset and the expert's pad rows -1;
//   3. one thread per chunk walks its assignments in order, handing out consecutive rows per
//      expert from its bases.
// Work O(N K + C E) with C = ceil(N K / kChunk); the serial parts are kChunk long (per thread)
// and C long (per expert). An expert id >= E (the CPU throws std::out_of_range) gets no row and
// slot -1 here, like -1: checking it would cost a device-to-host synchronisation per call.
// gather_rows: one thread per output element. unpermute_add: one thread per output element (n, d),
// adding its K rows in k order into out — the CPU's additions in the CPU's order, so bitwise equal.
#include <stdexcept>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/op_instantiate.h"
#include "kernels/scalar.h"

namespace moetron::kernels::gpu {

namespace {

constexpr int64_t kChunk = 256;  // assignments per chunk of route_by_expert

// 1. cnt[c, e] = #{i in chunk c : idx[i] == e}
__global__ void route_count_kernel(const int32_t* idx, int64_t pairs, int64_t E, int64_t C,
                                   int64_t* cnt) {
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < C;
       c += int64_t(gridDim.x) * blockDim.x) {
    int64_t* row = cnt + c * E;
    for (int64_t e = 0; e < E; ++e) row[e] = 0;
    const int64_t end = (c + 1) * kChunk < pairs ? (c + 1) * kChunk : pairs;
    for (int64_t i = c * kChunk; i < end; ++i) {
      const int32_t e = idx[i];
      if (e >= 0 && e < E) ++row[e];
    }
  }
}

// 2. one block: cnt[c, e] <- offsets[e] + (rows of expert e in chunks before c); counts, offsets;
// the pad rows' row_token and row_slot.
__global__ void route_scan_kernel(int64_t E, int64_t C, int64_t align, int64_t* cnt,
                                  int64_t* counts, int64_t* offsets, int64_t* row_token,
                                  int64_t* row_slot) {
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
    int64_t run = 0;
    for (int64_t c = 0; c < C; ++c) {
      const int64_t v = cnt[c * E + e];
      cnt[c * E + e] = run;
      run += v;
    }
    counts[e] = run;
  }
  __syncthreads();  // counts written by all threads (global memory, visible within the block)
  if (threadIdx.x == 0) {
    offsets[0] = 0;
    for (int64_t e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + round_up(counts[e], align);
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
    const int64_t base = offsets[e];
    for (int64_t c = 0; c < C; ++c) cnt[c * E + e] += base;
    for (int64_t row = base + counts[e]; row < offsets[e + 1]; ++row)
      row_token[row] = row_slot[row] = -1;
  }
}

// 3. per chunk, in order: slot, row_token, row_slot.
__global__ void route_place_kernel(const int32_t* idx, int64_t pairs, int64_t K, int64_t E,
                                   int64_t C, int64_t* cnt, int64_t* slot, int64_t* row_token,
                                   int64_t* row_slot) {
  for (int64_t c = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; c < C;
       c += int64_t(gridDim.x) * blockDim.x) {
    int64_t* next = cnt + c * E;
    const int64_t end = (c + 1) * kChunk < pairs ? (c + 1) * kChunk : pairs;
    for (int64_t i = c * kChunk; i < end; ++i) {
      const int32_t e = idx[i];
      if (e < 0 || e >= E) {
        slot[i] = -1;
        continue;
      }
      const int64_t row = next[e]++;
      slot[i] = row;
      row_token[row] = i / K;
      row_slot[row] = i;
    }
  }
}

// dst[i, d] = idx[i] >= 0 ? src[idx[i], d] : 0
template <class T>
__global__ void gather_rows_kernel(const T* src, const int64_t* idx, int64_t n, int64_t D, T* dst) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n * D;
       j += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = j / D, d = j % D, r = idx[i];
    dst[j] = r >= 0 ? src[r * D + d] : T(0);
  }
}

// out[n, d] += rows[slot[n, k], d] for k in order, slot >= 0
template <class T>
__global__ void unpermute_add_kernel(const T* rows, const int64_t* slot, int64_t N, int64_t K,
                                     int64_t D, T* out) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < N * D;
       j += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = j / D, d = j % D;
    T acc = out[j];
    for (int64_t k = 0; k < K; ++k) {
      const int64_t r = slot[n * K + k];
      if (r >= 0) acc += rows[r * D + d];
    }
    out[j] = acc;
  }
}

}  // namespace

void route_by_expert(const Exec& ex, const int32_t* idx, int64_t N, int64_t K, int64_t E,
                     int64_t align, int64_t* counts, int64_t* offsets, int64_t* slot,
                     int64_t* row_token, int64_t* row_slot) {
  if (N < 0 || K < 0 || E <= 0 || align < 1)
    throw std::invalid_argument("route_by_expert: bad sizes");
  cudaStream_t st = stream_of(ex);
  const int64_t pairs = N * K;
  if (pairs == 0) {
    MOETRON_CUDA_CHECK(cudaMemsetAsync(counts, 0, sizeof(int64_t) * E, st));
    MOETRON_CUDA_CHECK(cudaMemsetAsync(offsets, 0, sizeof(int64_t) * (E + 1), st));
    return;
  }
  const int64_t C = (pairs + kChunk - 1) / kChunk;
  int64_t* cnt = static_cast<int64_t*>(workspace(ex, sizeof(int64_t) * C * E));
  route_count_kernel<<<blocks_for(C, 128), 128, 0, st>>>(idx, pairs, E, C, cnt);
  MOETRON_CUDA_LAUNCHED("route_by_expert (count)");
  route_scan_kernel<<<1, kThreads, 0, st>>>(E, C, align, cnt, counts, offsets, row_token, row_slot);
  MOETRON_CUDA_LAUNCHED("route_by_expert (scan)");
  route_place_kernel<<<blocks_for(C, 128), 128, 0, st>>>(idx, pairs, K, E, C, cnt, slot, row_token,
                                                         row_slot);
  MOETRON_CUDA_LAUNCHED("route_by_expert (place)");
}

template <class T>
void gather_rows(const Exec& ex, const T* src, const int64_t* idx, int64_t n, int64_t D, T* dst) {
  if (n <= 0 || D <= 0) return;
  gather_rows_kernel<T><<<blocks_for(n * D), kThreads, 0, stream_of(ex)>>>(src, idx, n, D, dst);
  MOETRON_CUDA_LAUNCHED("gather_rows");
}

template <class T>
void unpermute_add(const Exec& ex, const T* rows, const int64_t* slot, int64_t N, int64_t K,
                   int64_t D, T* out) {
  if (N <= 0 || D <= 0 || K <= 0) return;
  unpermute_add_kernel<T>
      <<<blocks_for(N * D), kThreads, 0, stream_of(ex)>>>(rows, slot, N, K, D, out);
  MOETRON_CUDA_LAUNCHED("unpermute_add");
}

MOETRON_OPS_PERMUTE(float)
MOETRON_OPS_PERMUTE(double)

}  // namespace moetron::kernels::gpu
