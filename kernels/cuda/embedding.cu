// Token embedding on the GPU: a row gather forward and a row scatter-add backward.
//
// Shapes: ids [N] (int32), table, dtable [vocab, D], out, dout [N, D].
//   forward   one thread per output element (n, d): a copy, equal to the CPU bit for bit.
//   backward  dtable[ids[n], :] += dout[n, :]. Several tokens may hit the same row, so instead of
//             float atomics (order-dependent sums) each thread owns one column d and walks the
//             tokens in order n = 0..N-1: race-free, deterministic, and the CPU twin's order
//             exactly (kernels/cpu/embedding.cpp), so the results are bitwise equal. The price is
//             parallelism D and a serial chain of N read-modify-writes per thread: O(N) latency,
//             fine for the embedding's one call per step; a sort-by-id segmented sum is the faster
//             design if it ever shows in a profile.
// The CPU throws on a negative id; the GPU cannot without a host round trip, so it only guards
// memory: a negative id gives a zero row forward and is skipped backward. Ids >= vocab are the
// caller's contract (the data loader checks them against the vocabulary).
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops_cuda.h"

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

// One thread per column d, tokens in order.
template <class T>
__global__ void embedding_backward_kernel(const int32_t* ids, int64_t N, const T* dout, int64_t D,
                                          T* dtable) {
  for (int64_t d = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; d < D;
       d += int64_t(gridDim.x) * blockDim.x) {
    for (int64_t n = 0; n < N; ++n) {
      const int32_t id = ids[n];
      if (id >= 0) dtable[static_cast<int64_t>(id) * D + d] += dout[n * D + d];
    }
  }
}

}  // namespace

template <class T>
void embedding_forward(const Exec& ex, const int32_t* ids, int64_t N, const T* table, int64_t D,
                       T* out) {
  if (N <= 0 || D <= 0) return;
  embedding_forward_kernel<<<blocks_for(N * D), kThreads, 0, stream_of(ex)>>>(ids, N, table, D,
                                                                              out);
  MOETRON_CUDA_LAUNCHED("embedding_forward");
}

template <class T>
void embedding_backward(const Exec& ex, const int32_t* ids, int64_t N, const T* dout, int64_t D,
                        T* dtable) {
  if (N <= 0 || D <= 0) return;
  // 128 threads a block: more blocks (SMs busy) for the usual D of a few thousand
  constexpr int kBackThreads = 128;
  embedding_backward_kernel<<<blocks_for(D, kBackThreads), kBackThreads, 0, stream_of(ex)>>>(
      ids, N, dout, D, dtable);
  MOETRON_CUDA_LAUNCHED("embedding_backward");
}

template void embedding_forward<float>(const Exec&, const int32_t*, int64_t, const float*, int64_t,
                                       float*);
template void embedding_forward<double>(const Exec&, const int32_t*, int64_t, const double*,
                                        int64_t, double*);
template void embedding_backward<float>(const Exec&, const int32_t*, int64_t, const float*, int64_t,
                                        float*);
template void embedding_backward<double>(const Exec&, const int32_t*, int64_t, const double*,
                                         int64_t, double*);

}  // namespace moetron::kernels::gpu
