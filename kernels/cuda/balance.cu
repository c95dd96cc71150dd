// MoE load balancing on the GPU (kernels/cpu/balance.cpp is the reference and says the math): the
// sequence-wise balance loss and its gradient, the expert-load histogram and the
// auxiliary-loss-free bias update.
//
// Balance loss over B sequences of S tokens of which the first V count, scores [B*S, E], f [B, E],
// loss a device double[1]. Deterministic (no float atomics, fixed trees), in four launches:
//   1. one thread per token t: Z_t = sum_e s_te (double, e order) and the plain top-K of s_t (K
//      argmax passes, first index on ties: the CPU's partial_sort order), marked in a byte mask
//      sel [B*S, E] of the workspace;
//   2. per (b, chunk of kBalChunk positions, 32 experts), a block of 32 x 8 threads (a warp reads
//      32 neighbouring experts of one position): the chunk's marks and sum_t s_te / Z_t, each
//      thread over every 8th position, then the 8 rows in order -> partials [B, chunks, E];
//   3. one thread per (b, e): the chunks in order -> the count, so f[b, e] (as the CPU rounds it),
//      and P[b, e];
//   4. one block: loss = alpha * (sum_b sum_e f P / V) / B by block_sum's tree (0 when V == 0).
// f equals the CPU's bit for bit (a count is exact in any order); P and the loss equal it to
// rounding (the CPU sums P in position order). One thread per (b, e) over all V positions, as
// before, was a serial chain of V dependent steps on B*E threads: ~1 ms per MoE layer at 4096
// positions and 64 experts.
// Backward: one thread per token (row sums in double, e order), adding into dlogits.
// Histogram: integer atomics (order-independent). Bias update: one block, the mean by one thread.
#include <cstdint>
#include <stdexcept>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/op_instantiate.h"
#include "kernels/scalar.h"

namespace moetron::kernels::gpu {

namespace {

// Kernel 1: per token t < N: z[t] = sum_e s_te; sel[t, e] = 1 for the top-K experts, else 0.
template <class T>
__global__ void token_topk_kernel(const T* scores, int64_t N, int64_t E, int64_t K, double* z,
                                  uint8_t* sel) {
  for (int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; t < N;
       t += int64_t(gridDim.x) * blockDim.x) {
    const T* s = scores + t * E;
    uint8_t* m = sel + t * E;
    double zt = 0;
    for (int64_t e = 0; e < E; ++e) m[e] = 0, zt += s[e];
    z[t] = zt;
    for (int64_t k = 0; k < K; ++k) {  // the k-th largest under (value desc, index asc)
      int64_t best = -1;
      for (int64_t e = 0; e < E; ++e)
        if (!m[e] && (best < 0 || s[e] > s[best])) best = e;
      if (best < 0) break;
      m[best] = 1;
    }
  }
}

constexpr int kBalLanes = 32, kBalRows = 8;  // kernel 2's block: 32 experts x 8 positions
constexpr int64_t kBalChunk = 256;           // positions per block of kernel 2

// Kernel 2: per (b, chunk c, 32 experts): the chunk's mark count and sum_t s_te / Z_t.
template <class T>
__global__ void seq_chunk_kernel(const T* scores, const double* z, const uint8_t* sel, int64_t S,
                                 int64_t V, int64_t E, int64_t chunks, int64_t* count_part,
                                 double* p_part) {
  const int64_t e = blockIdx.x * int64_t(kBalLanes) + threadIdx.x, b = blockIdx.y, c = blockIdx.z;
  const int64_t t1 = min(V, (c + 1) * kBalChunk);
  int64_t count = 0;
  double p = 0;
  if (e < E)
    for (int64_t t = c * kBalChunk + threadIdx.y; t < t1; t += kBalRows) {
      const int64_t r = b * S + t;
      count += sel[r * E + e];
      p += scores[r * E + e] / z[r];
    }
  __shared__ int64_t counts[kBalRows][kBalLanes];
  __shared__ double ps[kBalRows][kBalLanes];
  counts[threadIdx.y][threadIdx.x] = count, ps[threadIdx.y][threadIdx.x] = p;
  __syncthreads();
  if (threadIdx.y != 0 || e >= E) return;
  for (int w = 1; w < kBalRows; ++w) count += counts[w][threadIdx.x], p += ps[w][threadIdx.x];
  const int64_t o = (b * chunks + c) * E + e;
  count_part[o] = count, p_part[o] = p;
}

// Kernel 3: per (b, e): the chunks in order -> f[b, e] and P[b, e] (before the 1/S).
template <class T>
__global__ void seq_f_p_kernel(const int64_t* count_part, const double* p_part, int64_t B,
                               int64_t V, int64_t E, int64_t chunks, double fscale, T* f,
                               double* P) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < B * E;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t b = i / E, e = i % E;
    int64_t count = 0;
    double p = 0;
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t o = (b * chunks + c) * E + e;
      count += count_part[o], p += p_part[o];
    }
    // the CPU counts in T, one at a time (exact), then scales through double
    f[i] = V > 0 ? static_cast<T>(static_cast<T>(count) * fscale) : T(0);
    P[i] = p;
  }
}

// Kernel 4: one block: the loss from f and P.
template <class T>
__global__ void seq_loss_kernel(const T* f, const double* P, int64_t B, int64_t V, int64_t E,
                                double alpha, double* loss) {
  double total = 0;
  for (int64_t i = threadIdx.x; V > 0 && i < B * E; i += blockDim.x)
    total += static_cast<double>(f[i]) * P[i] / static_cast<double>(V);
  total = block_sum(total);
  if (threadIdx.x == 0) *loss = alpha * total / static_cast<double>(B);
}

// Per token n among the first V of its sequence: dlogits[n, :] += c (f_e / Z - sum_j f_j s_j / Z^2)
// s_e (1 - s_e).
template <class T>
__global__ void seq_balance_backward_kernel(const T* scores, const T* f, int64_t N, int64_t S,
                                            int64_t V, int64_t E, double c, T* dlogits) {
  for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < N;
       n += int64_t(gridDim.x) * blockDim.x) {
    // kernels/scalar.h: the CPU's row
    if (n % S < V) seq_balance_backward_row(scores + n * E, f + (n / S) * E, E, c, dlogits + n * E);
  }
}

__global__ void histogram_kernel(const int32_t* idx, int64_t n, int64_t period, int64_t valid,
                                 int64_t E, int64_t* load) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int32_t e = idx[i];
    if (i % period < valid && e >= 0 && e < E)
      atomicAdd(reinterpret_cast<unsigned long long*>(load + e), 1ull);
  }
}

// One block: thread 0 the mean (e order, as the CPU), then every thread its experts.
template <class T>
__global__ void bias_sign_kernel(T* bias, const int64_t* load, int64_t E, double gamma) {
  __shared__ double mean;
  if (threadIdx.x == 0) {
    double m = 0;
    for (int64_t e = 0; e < E; ++e) m += static_cast<double>(load[e]);
    mean = m / static_cast<double>(E);
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) {
    const double d = mean - static_cast<double>(load[e]);
    bias[e] += static_cast<T>(gamma * (d > 0 ? 1.0 : (d < 0 ? -1.0 : 0.0)));
  }
}

}  // namespace

template <class T>
void seq_balance_loss_forward(const Exec& ex, const T* scores, int64_t B, int64_t S, int64_t V,
                              int64_t E, int64_t K, double alpha, T* f, double* loss) {
  cudaStream_t st = stream_of(ex);
  const int64_t N = B * S;
  if (B < 0 || S < 0 || V < 0 || V > S || E < 0 || K < 0)
    throw std::invalid_argument("seq_balance_loss_forward: negative size");
  // Empty sizes need no special case: the kernels' loops are then empty and the loss is the CPU's
  // expression (alpha * 0 / B, NaN for B == 0, as there).
  if (B > 65535) throw std::invalid_argument("seq_balance_loss_forward: more than 65535 sequences");
  const int64_t chunks = (V + kBalChunk - 1) / kBalChunk;  // <= 65535 for any S < 16M
  // workspace (one allocation: a second workspace() call could move the first): z [N], P [B*E],
  // the chunks' partial sums [B*chunks*E] (doubles), their counts (int64), sel [N*E] bytes
  const size_t z_bytes = sizeof(double) * N, p_bytes = sizeof(double) * B * E;
  const size_t part_bytes = sizeof(double) * B * chunks * E;
  uint8_t* ws =
      static_cast<uint8_t*>(workspace(ex, z_bytes + p_bytes + 2 * part_bytes + size_t(N) * E));
  double* z = reinterpret_cast<double*>(ws);
  double* P = reinterpret_cast<double*>(ws + z_bytes);
  double* p_part = reinterpret_cast<double*>(ws + z_bytes + p_bytes);
  int64_t* count_part = reinterpret_cast<int64_t*>(ws + z_bytes + p_bytes + part_bytes);
  uint8_t* sel = ws + z_bytes + p_bytes + 2 * part_bytes;
  token_topk_kernel<T><<<blocks_for(N, 128), 128, 0, st>>>(scores, N, E, K, z, sel);
  MOETRON_CUDA_LAUNCHED("seq_balance_loss_forward (top-k)");
  if (chunks > 0 && E > 0 && B > 0) {
    const dim3 grid(static_cast<unsigned>((E + kBalLanes - 1) / kBalLanes),
                    static_cast<unsigned>(B), static_cast<unsigned>(chunks));
    seq_chunk_kernel<T><<<grid, dim3(kBalLanes, kBalRows), 0, st>>>(scores, z, sel, S, V, E, chunks,
                                                                    count_part, p_part);
    MOETRON_CUDA_LAUNCHED("seq_balance_loss_forward (chunks)");
  }
  const double fscale = static_cast<double>(E) / static_cast<double>(K * V);
  seq_f_p_kernel<T>
      <<<blocks_for(B * E, 128), 128, 0, st>>>(count_part, p_part, B, V, E, chunks, fscale, f, P);
  MOETRON_CUDA_LAUNCHED("seq_balance_loss_forward (f, P)");
  seq_loss_kernel<T><<<1, kThreads, 0, st>>>(f, P, B, V, E, alpha, loss);
  MOETRON_CUDA_LAUNCHED("seq_balance_loss_forward (loss)");
}

template <class T>
void seq_balance_loss_backward(const Exec& ex, const T* scores, const T* f, int64_t B, int64_t S,
                               int64_t V, int64_t E, double c, T* dlogits) {
  const int64_t N = B * S;
  if (N <= 0 || E <= 0 || V <= 0) return;
  seq_balance_backward_kernel<T>
      <<<blocks_for(N, 128), 128, 0, stream_of(ex)>>>(scores, f, N, S, V, E, c, dlogits);
  MOETRON_CUDA_LAUNCHED("seq_balance_loss_backward");
}

void expert_histogram(const Exec& ex, const int32_t* idx, int64_t n, int64_t period, int64_t valid,
                      int64_t E, int64_t* load, bool accumulate) {
  if (E <= 0) return;
  cudaStream_t st = stream_of(ex);
  if (!accumulate) MOETRON_CUDA_CHECK(cudaMemsetAsync(load, 0, sizeof(int64_t) * E, st));
  if (n <= 0 || period <= 0 || valid <= 0) return;
  histogram_kernel<<<blocks_for(n), kThreads, 0, st>>>(idx, n, period, valid, E, load);
  MOETRON_CUDA_LAUNCHED("expert_histogram");
}

template <class T>
void bias_sign_update(const Exec& ex, T* bias, const int64_t* load, int64_t E, double gamma) {
  if (E <= 0) return;
  bias_sign_kernel<T><<<1, kThreads, 0, stream_of(ex)>>>(bias, load, E, gamma);
  MOETRON_CUDA_LAUNCHED("bias_sign_update");
}

MOETRON_OPS_BALANCE(float)
MOETRON_OPS_BALANCE(double)

}  // namespace moetron::kernels::gpu
