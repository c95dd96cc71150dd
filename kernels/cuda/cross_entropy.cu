// Fused output head + cross-entropy on the GPU, chunked over the vocabulary so that the [N, V]
// logits are never stored (V is 129k for DeepSeek-V3; one [N, chunk] block is). The CPU twin,
// kernels/cpu/cross_entropy.cpp, defines the semantics; this mirrors it step for step.
//
// Shapes: h [N, D], W [V, D] (the head's [out, in] weight), target [N] (< 0 = ignored row),
// lse [N], dh [N, D], dW [V, D], loss_sum [1] (double, device); block of logits [N, chunk].
// Forward, per chunk c of columns [c0, c0 + w):
//   logits = h W[c0:c0+w]^T                       one GEMM at `prec` (gemm.cu)
//   per row (one block): m' = max(m, max_j x_j), l' = l e^(m - m') + sum_j e^(x_j - m')
//                       (l in double, the chunk's sum in T, as the CPU), the target's logit
//                       picked up in its chunk.
// then lse = m + ln l and loss_sum = sum over valid rows of (lse - logit_target), summed in double
// by one block in a fixed order (deterministic). Running m, l and the target logits live in the
// workspace next to the logits block. A target >= V is not checked on the GPU (it would need the
// targets on the host): its row's target logit stays NaN, so the loss comes out NaN, not silently
// wrong.
// Backward, per chunk: recompute the logits (same precision as the forward, so that the
// probabilities sum to 1 against the saved lse), dlogit = g (e^(x - lse) - onehot(target)) (0 for
// ignored rows), then dh += dlogit W_c (dh zeroed first) and dW_c += dlogit^T h: two more GEMMs at
// `prec` (so with BF16 the dlogits are rounded to bf16 inside them, as on the CPU).
// The workspace is taken once per op and carved: logits/dlogits block, row state, GEMM scratch.
#include <algorithm>
#include <cmath>
#include <limits>
#include <stdexcept>
#include <type_traits>

#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/op_instantiate.h"
#include "kernels/scalar.h"

namespace moetron::kernels::gpu {

namespace {

constexpr int kRowThreads = 256;
constexpr int kFinishThreads = 1024;

// m = -inf, l = 0, tl = NaN (overwritten in the target's chunk; see the note above).
template <class T>
__global__ void ce_init_kernel(int64_t N, T* m, double* l, T* tl) {
  for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < N;
       n += int64_t(gridDim.x) * blockDim.x) {
    m[n] = -std::numeric_limits<T>::infinity();
    l[n] = 0.0;
    tl[n] = std::numeric_limits<T>::quiet_NaN();
  }
}

// One block per row n of the chunk's logits x [N, w]: the online log-sum-exp update of (m, l)
// and the target's logit.
template <class T>
__global__ void ce_chunk_kernel(const T* logits, int64_t w, int64_t c0, const int32_t* target, T* m,
                                double* l, T* tl) {
  const int64_t n = blockIdx.x;
  const T* x = logits + n * w;
  T mx = -std::numeric_limits<T>::infinity();
  for (int64_t j = threadIdx.x; j < w; j += blockDim.x) mx = mx < x[j] ? x[j] : mx;
  mx = block_reduce(mx, MaxOp{}, -std::numeric_limits<T>::infinity());
  const T mold = m[n];  // read by every thread before thread 0 writes it (block_sum syncs)
  const T mn = mx > mold ? mx : mold;
  T sum = 0;
  for (int64_t j = threadIdx.x; j < w; j += blockDim.x) sum += fast_exp(x[j] - mn);
  sum = block_sum(sum);
  if (threadIdx.x == 0) {
    double ln = l[n];
    if (mx > mold) ln *= std::exp(static_cast<double>(mold) - static_cast<double>(mx));
    l[n] = ln + static_cast<double>(sum);
    m[n] = mn;
    const int64_t t = target[n];
    if (t >= c0 && t < c0 + w) tl[n] = x[t - c0];
  }
}

// One block: lse[n] = m + ln l, loss_sum = sum over valid rows of (lse - tl), in double, in a
// fixed order (thread-strided partial sums, then block_sum's fixed tree).
template <class T>
__global__ void ce_finish_kernel(const T* m, const double* l, const T* tl, const int32_t* target,
                                 int64_t N, T* lse, double* loss_sum) {
  double acc = 0;
  for (int64_t n = threadIdx.x; n < N; n += blockDim.x) {
    const T v = static_cast<T>(static_cast<double>(m[n]) + std::log(l[n]));
    lse[n] = v;
    if (target[n] >= 0) acc += static_cast<double>(v) - static_cast<double>(tl[n]);
  }
  acc = block_sum(acc);
  if (threadIdx.x == 0) *loss_sum = acc;
}

// x [N, w] (the chunk's logits) <- dlogits: g (e^(x - lse) - onehot(target)), 0 for ignored rows.
template <class T>
__global__ void ce_dlogits_kernel(T* x, int64_t N, int64_t w, int64_t c0, const int32_t* target,
                                  const T* lse, T g) {
  const int64_t total = N * w;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t n = i / w, j = i - n * w;
    const int64_t t = target[n];
    if (t < 0) {
      x[i] = T(0);
      continue;
    }
    T v = g * fast_exp(x[i] - lse[n]);
    if (t == c0 + j) v -= g;
    x[i] = v;
  }
}

template <class T>
void check_w16(const uint16_t* W16, GemmPrecision prec) {
  if (W16 && (!std::is_same_v<T, float> || prec != GemmPrecision::BF16))
    throw std::invalid_argument("lm_head_ce: a bf16 weight copy needs float tensors at BF16");
}

// C[M, n] = A op(W_c) + beta C for the GEMMs that read the head weight's chunk W_c: through its
// bf16 copy when there is one (gemm_bf16_weight_on: only A is converted). scratch as gemm_on's.
template <class T>
void head_gemm(cudaStream_t s, bool transW, int64_t M, int64_t n, int64_t K, const T* A,
               const T* Wc, const uint16_t* W16c, T beta, T* C, GemmPrecision prec, void* scratch,
               size_t bytes) {
  if constexpr (std::is_same_v<T, float>) {
    if (W16c)
      return gemm_bf16_weight_on(s, false, transW, M, n, K, 1.f, A, W16c, beta, C, scratch, bytes);
  }
  gemm_on<T>(s, false, transW, M, n, K, T(1), A, Wc, beta, C, prec, scratch, bytes);
}

}  // namespace

template <class T>
void lm_head_ce_forward(const Exec& ex, const T* h, const T* W, const int32_t* target, int64_t N,
                        int64_t D, int64_t V, int64_t chunk, T* lse, GemmPrecision prec,
                        double* loss_sum, const uint16_t* W16) {
  if (chunk <= 0) throw std::invalid_argument("lm_head_ce: chunk must be > 0");
  check_w16<T>(W16, prec);
  if (N < 0 || D < 0 || V < 0) throw std::invalid_argument("lm_head_ce: negative dimension");
  cudaStream_t s = stream_of(ex);
  if (N == 0) {
    MOETRON_CUDA_CHECK(cudaMemsetAsync(loss_sum, 0, sizeof(double), s));  // 0.0
    return;
  }
  chunk = std::max<int64_t>(1, std::min(chunk, V));
  // workspace: logits [N, chunk] | m [N] | tl [N] | l [N] (double) | GEMM scratch
  const size_t b_logits = scratch_align(size_t(N) * chunk * sizeof(T));
  const size_t b_row = scratch_align(size_t(N) * sizeof(T));
  const size_t b_l = scratch_align(size_t(N) * sizeof(double));
  const size_t b_gemm = gemm_scratch_bytes<T>(N, chunk, D, prec);
  uint8_t* ws = static_cast<uint8_t*>(workspace(ex, b_logits + 2 * b_row + b_l + b_gemm));
  T* logits = reinterpret_cast<T*>(ws);
  T* m = reinterpret_cast<T*>(ws + b_logits);
  T* tl = reinterpret_cast<T*>(ws + b_logits + b_row);
  double* l = reinterpret_cast<double*>(ws + b_logits + 2 * b_row);
  void* gs = ws + b_logits + 2 * b_row + b_l;

  ce_init_kernel<T><<<blocks_for(N), kThreads, 0, s>>>(N, m, l, tl);
  MOETRON_CUDA_LAUNCHED("lm_head_ce_forward: init");
  for (int64_t c0 = 0; c0 < V; c0 += chunk) {
    const int64_t w = std::min(chunk, V - c0);
    head_gemm<T>(s, true, N, w, D, h, W16 ? nullptr : W + c0 * D, W16 ? W16 + c0 * D : nullptr,
                 T(0), logits, prec, gs, b_gemm);
    ce_chunk_kernel<T>
        <<<static_cast<unsigned>(N), kRowThreads, 0, s>>>(logits, w, c0, target, m, l, tl);
    MOETRON_CUDA_LAUNCHED("lm_head_ce_forward: chunk");
  }
  ce_finish_kernel<T><<<1, kFinishThreads, 0, s>>>(m, l, tl, target, N, lse, loss_sum);
  MOETRON_CUDA_LAUNCHED("lm_head_ce_forward: finish");
}

template <class T>
void lm_head_ce_backward(const Exec& ex, const T* h, const T* W, const int32_t* target,
                         const T* lse, T g, int64_t N, int64_t D, int64_t V, int64_t chunk, T* dh,
                         T* dW, GemmPrecision prec, const uint16_t* W16) {
  if (chunk <= 0) throw std::invalid_argument("lm_head_ce: chunk must be > 0");
  check_w16<T>(W16, prec);
  if (N < 0 || D < 0 || V < 0) throw std::invalid_argument("lm_head_ce: negative dimension");
  if (N == 0) return;  // no rows: dh is empty and dW gains nothing
  cudaStream_t s = stream_of(ex);
  MOETRON_CUDA_CHECK(cudaMemsetAsync(dh, 0, size_t(N) * D * sizeof(T), s));  // dh is written
  if (V == 0) return;
  chunk = std::max<int64_t>(1, std::min(chunk, V));
  // workspace: dlogits [N, chunk] | GEMM scratch (the largest of the three GEMMs)
  const size_t b_dl = scratch_align(size_t(N) * chunk * sizeof(T));
  const size_t b_gemm =
      std::max({gemm_scratch_bytes<T>(N, chunk, D, prec), gemm_scratch_bytes<T>(N, D, chunk, prec),
                gemm_scratch_bytes<T>(chunk, D, N, prec)});
  uint8_t* ws = static_cast<uint8_t*>(workspace(ex, b_dl + b_gemm));
  T* dl = reinterpret_cast<T*>(ws);
  void* gs = ws + b_dl;

  for (int64_t c0 = 0; c0 < V; c0 += chunk) {
    const int64_t w = std::min(chunk, V - c0);
    const uint16_t* W16c = W16 ? W16 + c0 * D : nullptr;
    const T* Wc = W16 ? nullptr : W + c0 * D;  // (with a bf16 copy W may have no memory)
    head_gemm<T>(s, true, N, w, D, h, Wc, W16c, T(0), dl, prec, gs, b_gemm);
    ce_dlogits_kernel<T><<<blocks_for(N * w), kThreads, 0, s>>>(dl, N, w, c0, target, lse, g);
    MOETRON_CUDA_LAUNCHED("lm_head_ce_backward: dlogits");
    // dh[N, D] += dl[N, w] W_c[w, D];  dW_c[w, D] += dl[N, w]^T h[N, D]
    head_gemm<T>(s, false, N, D, w, dl, Wc, W16c, T(1), dh, prec, gs, b_gemm);
    gemm_on<T>(s, true, false, w, D, N, T(1), dl, h, T(1), dW + c0 * D, prec, gs, b_gemm);
  }
}

MOETRON_OPS_CROSS_ENTROPY(float)
MOETRON_OPS_CROSS_ENTROPY(double)

}  // namespace moetron::kernels::gpu
