// Token embedding on the GPU: a row gather forward and a row scatter-add backward.
//
// Shapes: ids [N] (int32), table, dtable [vocab, D], out, dout [N, D].
//   forward   one thread per output element (n, d): a copy, equal to the CPU bit for bit.
//   backward  dtable[ids[n], :] += dout[n, :]. Several tokens may hit the same row, so instead of
//             float atomics (order-dependent sums) the tokens are sorted by id with CUB's radix
//             sort, which is stable: each run of equal ids is one row's tokens in the order
//             n = 0..N-1. The first position of a run adds them into its row, a thread per column,
//             from the row's value in that order: the CPU twin's order exactly
//             (kernels/cpu/embedding.cpp), so the results are bitwise equal, and deterministic.
//             Parallel over rows and columns (a serial chain only as long as one id's count);
//             walking all N tokens per column, as before, was a chain of N dependent
//             read-modify-writes on D threads: milliseconds per call at 4096 tokens.
// The CPU throws on a negative id; the GPU cannot without a host round trip, so it only guards
// memory: a negative id gives a zero row forward and is skipped backward. Ids >= vocab are the
// caller's contract (the data loader checks them against the vocabulary).
#include <algorithm>
#include <cstdint>
#include <cub/device/device_radix_sort.cuh>
#include <stdexcept>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/op_instantiate.h"

namespace moetron::kernels::gpu {

namespace {

template <class T>
__global__ void embedding_forward_kernel(const int32_t* ids, int64_t N, const T* table, int64_t D,
                                         T* out) {
  const int64_t n_all = N * D;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n_all;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / D, d = i % D;
    const int32_t id = ids[n];
    out[i] = id >= 0 ? table[static_cast<int64_t>(id) * D + d] : T(0);
  }
}

__global__ void iota_kernel(int32_t* v, int64_t n) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    v[i] = static_cast<int32_t>(i);
}

// Block x: position i of the tokens sorted by id; the first of a run of equal ids adds the run's
// dout rows into its table row, in token order (columns over threads and grid y).
template <class T>
__global__ void embedding_backward_rows_kernel(const int32_t* id_sorted, const int32_t* tok_sorted,
                                               int64_t N, const T* dout, int64_t D, T* dtable) {
  const int64_t i = blockIdx.x;
  const int32_t id = id_sorted[i];
  if (id < 0 || (i > 0 && id_sorted[i - 1] == id)) return;
  T* dst = dtable + static_cast<int64_t>(id) * D;
  for (int64_t d = blockIdx.y * int64_t(blockDim.x) + threadIdx.x; d < D;
       d += int64_t(gridDim.y) * blockDim.x) {
    T acc = dst[d];
    for (int64_t j = i; j < N && id_sorted[j] == id; ++j)
      acc += dout[static_cast<int64_t>(tok_sorted[j]) * D + d];
    dst[d] = acc;
  }
}

size_t aligned(size_t bytes) { return (bytes + 255) / 256 * 256; }

}  // namespace

template <class T>
void embedding_forward(const Exec& ex, const int32_t* ids, int64_t N, const T* table, int64_t D,
                       T* out) {
  if (N <= 0 || D <= 0) return;
  embedding_forward_kernel<T>
      <<<blocks_for(N * D), kThreads, 0, stream_of(ex)>>>(ids, N, table, D, out);
  MOETRON_CUDA_LAUNCHED("embedding_forward");
}

template <class T>
void embedding_backward(const Exec& ex, const int32_t* ids, int64_t N, const T* dout, int64_t D,
                        T* dtable) {
  if (N <= 0 || D <= 0) return;
  if (N > INT32_MAX) throw std::invalid_argument("embedding_backward: too many tokens");
  cudaStream_t st = stream_of(ex);
  const int n = static_cast<int>(N);
  // the workspace: the sorted ids, the token numbers before and after the sort, CUB's scratch
  size_t cub_bytes = 0;
  MOETRON_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(
      nullptr, cub_bytes, ids, static_cast<int32_t*>(nullptr), static_cast<const int32_t*>(nullptr),
      static_cast<int32_t*>(nullptr), n, 0, 32, st));
  const size_t vec = aligned(sizeof(int32_t) * static_cast<size_t>(N));
  auto* ws = static_cast<uint8_t*>(workspace(ex, 3 * vec + aligned(cub_bytes)));
  auto* id_sorted = reinterpret_cast<int32_t*>(ws);
  auto* tok = reinterpret_cast<int32_t*>(ws + vec);
  auto* tok_sorted = reinterpret_cast<int32_t*>(ws + 2 * vec);
  iota_kernel<<<blocks_for(N), kThreads, 0, st>>>(tok, N);
  MOETRON_CUDA_LAUNCHED("embedding_backward (token numbers)");
  MOETRON_CUDA_CHECK(cub::DeviceRadixSort::SortPairs(ws + 3 * vec, cub_bytes, ids, id_sorted, tok,
                                                     tok_sorted, n, 0, 32, st));
  constexpr int kBackThreads = 128;
  const int64_t col_blocks = std::min<int64_t>((D + kBackThreads - 1) / kBackThreads, 65535);
  const dim3 grid(static_cast<unsigned>(N), static_cast<unsigned>(col_blocks));
  embedding_backward_rows_kernel<T>
      <<<grid, kBackThreads, 0, st>>>(id_sorted, tok_sorted, N, dout, D, dtable);
  MOETRON_CUDA_LAUNCHED("embedding_backward");
}

MOETRON_OPS_EMBEDDING(float)
MOETRON_OPS_EMBEDDING(double)

}  // namespace moetron::kernels::gpu
