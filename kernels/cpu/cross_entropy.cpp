// Fused output head + cross-entropy, chunked over the vocabulary so that the [N, V] logits are
// never stored (V is 129k for DeepSeek-V3; a [N, chunk] block is).
//
// Shapes: h [N, D], W [V, D] (the head's [out, in] weight), target [N] (< 0 = ignored row),
// lse [N], dh [N, D], dW [V, D]; block buffer [N, chunk].
// Forward, per chunk c of columns [c0, c0 + w): logits = h W[c0:c0+w]^T (one GEMM, precision
// `prec`), then per row an online log-sum-exp: m' = max(m, max_j x_j),
// l' = l e^(m - m') + sum_j e^(x_j - m'); the target's logit is picked up in its chunk.
// lse = m + ln l; loss_n = lse_n - logit[n, target_n]; loss_sum[0] = the sum over valid rows
// (double). Backward, per chunk: recompute the logits, dlogit = g (e^(x - lse) - onehot(target)) (0
// for ignored rows), then dh += dlogit W_c and dW_c += dlogit^T h (two more GEMMs in `prec`; the
// recompute must use the forward's precision so that p sums to 1 against the saved lse).
// Row work is parallel over rows; the GEMMs are threaded by their backend.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"

namespace moetron::kernels::cpu {

namespace {

void check_args(const int32_t* target, int64_t N, int64_t V, int64_t chunk) {
  if (chunk <= 0) throw std::invalid_argument("lm_head_ce: chunk must be > 0");
  for (int64_t n = 0; n < N; ++n) {
    if (target[n] >= V) throw std::out_of_range("lm_head_ce: target id >= vocab size");
  }
}

// A bf16 copy of W is only for float tensors at BF16 (what the model gives it).
template <class T>
void check_w16(const uint16_t* W16, GemmPrecision prec) {
  if (W16 && (!std::is_same_v<T, float> || prec != GemmPrecision::BF16))
    throw std::invalid_argument("lm_head_ce: a bf16 weight copy needs float tensors at BF16");
}

// C[M, n] = A op(W_c) + beta C for the GEMMs that read the head weight's chunk W_c (rows c0..):
// through its bf16 copy when there is one (the same bits as gemm at BF16 on W_c).
template <class T>
void head_gemm(bool transW, int64_t M, int64_t n, int64_t K, const T* A, const T* Wc,
               const uint16_t* W16c, T beta, T* C, GemmPrecision prec) {
  if constexpr (std::is_same_v<T, float>) {
    if (W16c) return gemm_bf16_weight(false, transW, M, n, K, 1.f, A, W16c, beta, C);
  }
  gemm<T>(false, transW, M, n, K, T(1), A, Wc, beta, C, prec);
}

}  // namespace

template <class T>
void lm_head_ce_forward(const T* h, const T* W, const int32_t* target, int64_t N, int64_t D,
                        int64_t V, int64_t chunk, T* lse, GemmPrecision prec, double* loss_sum,
                        const uint16_t* W16) {
  check_args(target, N, V, chunk);
  check_w16<T>(W16, prec);
  chunk = std::max<int64_t>(1, std::min(chunk, V));
  std::vector<T> logits(N * chunk);
  std::vector<T> m(N, -std::numeric_limits<T>::infinity()), tl(N, T(0));
  std::vector<double> l(N, 0.0);
  for (int64_t c0 = 0; c0 < V; c0 += chunk) {
    const int64_t w = std::min(chunk, V - c0);
    head_gemm<T>(true, N, w, D, h, W16 ? nullptr : W + c0 * D, W16 ? W16 + c0 * D : nullptr, T(0),
                 logits.data(), prec);
#pragma omp parallel for schedule(static) if (N * w >= (1 << 14))
    for (int64_t n = 0; n < N; ++n) {
      const T* x = logits.data() + n * w;
      T mx = m[n];
      for (int64_t j = 0; j < w; ++j) mx = std::max(mx, x[j]);
      if (mx > m[n]) {
        l[n] *= std::exp(static_cast<double>(m[n]) - static_cast<double>(mx));
        m[n] = mx;
      }
      const T mn = m[n];
      T sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int64_t j = 0; j < w; ++j) sum += fast_exp(x[j] - mn);
      l[n] += sum;
      const int64_t t = target[n];
      if (t >= c0 && t < c0 + w) tl[n] = x[t - c0];
    }
  }
  double total = 0;
  for (int64_t n = 0; n < N; ++n) {
    lse[n] = static_cast<T>(static_cast<double>(m[n]) + std::log(l[n]));
    if (target[n] >= 0) total += static_cast<double>(lse[n]) - static_cast<double>(tl[n]);
  }
  *loss_sum = total;
}

template <class T>
void lm_head_ce_backward(const T* h, const T* W, const int32_t* target, const T* lse, T g,
                         int64_t N, int64_t D, int64_t V, int64_t chunk, T* dh, T* dW,
                         GemmPrecision prec, const uint16_t* W16) {
  check_args(target, N, V, chunk);
  check_w16<T>(W16, prec);
  chunk = std::max<int64_t>(1, std::min(chunk, V));
  std::memset(dh, 0, sizeof(T) * N * D);
  std::vector<T> dl(N * chunk);
  for (int64_t c0 = 0; c0 < V; c0 += chunk) {
    const int64_t w = std::min(chunk, V - c0);
    const uint16_t* W16c = W16 ? W16 + c0 * D : nullptr;
    const T* Wc = W16 ? nullptr : W + c0 * D;  // (with a bf16 copy W may have no memory)
    head_gemm<T>(true, N, w, D, h, Wc, W16c, T(0), dl.data(), prec);
#pragma omp parallel for schedule(static) if (N * w >= (1 << 14))
    for (int64_t n = 0; n < N; ++n) {
      T* x = dl.data() + n * w;
      const int64_t t = target[n];
      if (t < 0) {
        std::fill(x, x + w, T(0));
        continue;
      }
      const T ln = lse[n];
#pragma omp simd
      for (int64_t j = 0; j < w; ++j) x[j] = g * fast_exp(x[j] - ln);
      if (t >= c0 && t < c0 + w) x[t - c0] -= g;
    }
    head_gemm<T>(false, N, D, w, dl.data(), Wc, W16c, T(1), dh, prec);
    gemm<T>(true, false, w, D, N, T(1), dl.data(), h, T(1), dW + c0 * D, prec);
  }
}

template void lm_head_ce_forward<float>(const float*, const float*, const int32_t*, int64_t,
                                        int64_t, int64_t, int64_t, float*, GemmPrecision, double*,
                                        const uint16_t*);
template void lm_head_ce_forward<double>(const double*, const double*, const int32_t*, int64_t,
                                         int64_t, int64_t, int64_t, double*, GemmPrecision, double*,
                                         const uint16_t*);
template void lm_head_ce_backward<float>(const float*, const float*, const int32_t*, const float*,
                                         float, int64_t, int64_t, int64_t, int64_t, float*, float*,
                                         GemmPrecision, const uint16_t*);
template void lm_head_ce_backward<double>(const double*, const double*, const int32_t*,
                                          const double*, double, int64_t, int64_t, int64_t, int64_t,
                                          double*, double*, GemmPrecision, const uint16_t*);

}  // namespace moetron::kernels::cpu
