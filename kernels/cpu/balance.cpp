// MoE load balancing on the CPU: the sequence-wise balance loss (SPEC §1.4) and its gradient, the
// expert-load histogram and the auxiliary-loss-free bias update.
//
// Balance loss, per sequence b over its first V of S positions (the ones with a target: V = S - k
// in MTP depth k, SPEC §1.5) with scores s [S, E]: f_i = E/(K V) * (times expert i is in the plain
// top-K of the unbiased scores), P_i = mean_{t<V} s_it / Z_t with Z_t = sum_j s_jt;
// L = alpha * mean_b sum_i f_i P_i. f is a constant of the backward:
// dL/ds_it = c (f_i / Z_t - sum_j f_j s_jt / Z_t^2) for t < V (0 beyond), then through the sigmoid
// (s (1 - s)). Sums in double, sequentially per sequence (deterministic). The loads that drive the
// bias update count the same positions.
#include <algorithm>
#include <numeric>
#include <stdexcept>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"

namespace moetron::kernels::cpu {

template <class T>
void seq_balance_loss_forward(const T* scores, int64_t B, int64_t S, int64_t V, int64_t E,
                              int64_t K, double alpha, T* f, double* loss) {
  if (V < 0 || V > S) throw std::invalid_argument("seq_balance_loss_forward: V outside [0, S]");
  double total = 0;
  std::vector<int32_t> order(E);
  std::vector<double> P(E);
  for (int64_t b = 0; b < B; ++b) {
    T* fb = f + b * E;
    std::fill(fb, fb + E, T(0));
    std::fill(P.begin(), P.end(), 0.0);
    for (int64_t t = 0; t < V; ++t) {
      const T* s = scores + (b * S + t) * E;
      std::iota(order.begin(), order.end(), 0);
      std::partial_sort(order.begin(), order.begin() + K, order.end(), [&](int32_t i, int32_t j) {
        return s[i] > s[j] || (s[i] == s[j] && i < j);
      });
      for (int64_t k = 0; k < K; ++k) fb[order[k]] += T(1);
      double z = 0;
      for (int64_t e = 0; e < E; ++e) z += s[e];
      for (int64_t e = 0; e < E; ++e) P[e] += s[e] / z;
    }
    if (V == 0) continue;  // no position counts: f = 0, nothing added
    const double fscale = static_cast<double>(E) / static_cast<double>(K * V);
    for (int64_t e = 0; e < E; ++e) {
      fb[e] = static_cast<T>(fb[e] * fscale);
      total += static_cast<double>(fb[e]) * P[e] / static_cast<double>(V);
    }
  }
  *loss = alpha * total / static_cast<double>(B);
}

template <class T>
void seq_balance_loss_backward(const T* scores, const T* f, int64_t B, int64_t S, int64_t V,
                               int64_t E, double c, T* dlogits) {
  const int64_t N = B * S;
#pragma omp parallel for schedule(static) if (N * E >= (1 << 14))
  for (int64_t n = 0; n < N; ++n) {
    if (n % S < V) seq_balance_backward_row(scores + n * E, f + (n / S) * E, E, c, dlogits + n * E);
  }
}

void expert_histogram(const int32_t* idx, int64_t n, int64_t period, int64_t valid, int64_t E,
                      int64_t* load, bool accumulate) {
  if (!accumulate) std::fill(load, load + E, int64_t(0));
  if (period <= 0) return;
  for (int64_t i = 0; i < n; ++i)
    if (i % period < valid && idx[i] >= 0 && idx[i] < E) ++load[idx[i]];
}

template <class T>
void bias_sign_update(T* bias, const int64_t* load, int64_t E, double gamma) {
  double mean = 0;
  for (int64_t e = 0; e < E; ++e) mean += static_cast<double>(load[e]);
  mean /= static_cast<double>(E);
  for (int64_t e = 0; e < E; ++e) {
    const double d = mean - static_cast<double>(load[e]);
    bias[e] += static_cast<T>(gamma * (d > 0 ? 1.0 : (d < 0 ? -1.0 : 0.0)));
  }
}

template void seq_balance_loss_forward<float>(const float*, int64_t, int64_t, int64_t, int64_t,
                                              int64_t, double, float*, double*);
template void seq_balance_loss_forward<double>(const double*, int64_t, int64_t, int64_t, int64_t,
                                               int64_t, double, double*, double*);
template void seq_balance_loss_backward<float>(const float*, const float*, int64_t, int64_t,
                                               int64_t, int64_t, double, float*);
template void seq_balance_loss_backward<double>(const double*, const double*, int64_t, int64_t,
                                                int64_t, int64_t, double, double*);
template void bias_sign_update<float>(float*, const int64_t*, int64_t, double);
template void bias_sign_update<double>(double*, const int64_t*, int64_t, double);

}  // namespace moetron::kernels::cpu
