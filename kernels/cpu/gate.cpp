// MoE gate of DeepSeek-V3 (SPEC 1.4): sigmoid scores, bias-corrected group-limited top-k
// selection, weights renormalised over the selected experts.
//
// Shapes: logits, scores, dlogits [N, E]; bias [E] (the parameter, rounded to fp32 as V3 keeps it;
// may be null = no bias); idx, weights, dweights [N, K]. Per token:
//   s   = sigmoid(logits)                            (saved as scores)
//   s_b = s + bias                                   (used only to choose experts)
//   groups of E/n_group consecutive experts; group score = sum of the top (K / topk_group) s_b in
//   the group; keep the topk_group best groups; idx = top-K of s_b over the kept experts, listed
//   in descending s_b; every tie (group or expert) goes to the lower index.
//   w_k = s[idx_k] / S * c,  S = sum_k s[idx_k],  c = route_scale
// Backward (bias and selection are constants):
//   ds_j = c * (dw_j / S - sum_k dw_k s_k / S^2) for selected j, 0 otherwise;
//   dlogit_j = ds_j * s_j (1 - s_j).
// The balance loss adds its own gradient to the scores elsewhere. Parallel over tokens; the
// selection is O(K E) per token with a few E-sized per-thread buffers.
#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"

namespace moetron::kernels {

void check_gate_params(const GateParams& p) {
  auto fail = [](const std::string& m) { throw std::invalid_argument("gate: " + m); };
  if (p.n_experts <= 0 || p.topk <= 0 || p.topk > p.n_experts) fail("need 0 < topk <= n_experts");
  if (p.n_group < 1 || p.n_experts % p.n_group != 0) fail("n_group must divide n_experts");
  if (p.n_group > 1) {
    if (p.topk_group < 1 || p.topk_group > p.n_group) fail("need 1 <= topk_group <= n_group");
    if (p.topk % p.topk_group != 0) fail("topk_group must divide topk");
    if (p.topk / p.topk_group > p.n_experts / p.n_group) fail("topk/topk_group > group size");
    if (p.topk > p.topk_group * (p.n_experts / p.n_group)) fail("kept groups hold < topk experts");
  }
}

}  // namespace moetron::kernels

namespace moetron::kernels::cpu {

namespace {

// Index of the largest v[i] among allowed[i] (first one on ties), or -1 if none is allowed.
template <class T>
int64_t argmax_allowed(const T* v, const char* allowed, int64_t n) {
  int64_t best = -1;
  for (int64_t i = 0; i < n; ++i) {
    if (allowed[i] && (best < 0 || v[i] > v[best])) best = i;
  }
  return best;
}

}  // namespace

template <class T>
void gate_forward(const T* logits, const T* bias, int64_t N, const GateParams& p, T* scores,
                  int32_t* idx, T* weights) {
  check_gate_params(p);
  const int64_t E = p.n_experts, K = p.topk;
  const int64_t G = p.n_group, gsize = E / G;
  const int64_t gk = G > 1 ? K / p.topk_group : 0;  // biased scores summed per group
  const T c = static_cast<T>(p.route_scale);
#pragma omp parallel if (N * E >= (1 << 14))
  {
    std::vector<T> sb(E), gscore(G);
    std::vector<char> allowed(E), gallowed(G), tmp(gsize);
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const T* lg = logits + n * E;
      T* s = scores + n * E;
      for (int64_t e = 0; e < E; ++e) {
        s[e] = sigmoid(lg[e]);
        sb[e] = s[e] + (bias ? static_cast<T>(static_cast<float>(bias[e])) : T(0));
      }
      std::fill(allowed.begin(), allowed.end(), 1);
      if (G > 1) {
        for (int64_t g = 0; g < G; ++g) {  // group score: sum of its top-gk biased scores
          std::fill(tmp.begin(), tmp.end(), 1);
          T sum = 0;
          for (int64_t j = 0; j < gk; ++j) {
            const int64_t b = argmax_allowed(sb.data() + g * gsize, tmp.data(), gsize);
            sum += sb[g * gsize + b];
            tmp[b] = 0;
          }
          gscore[g] = sum;
        }
        std::fill(gallowed.begin(), gallowed.end(), 1);
        std::fill(allowed.begin(), allowed.end(), 0);
        for (int64_t j = 0; j < p.topk_group; ++j) {  // keep the topk_group best groups
          const int64_t g = argmax_allowed(gscore.data(), gallowed.data(), G);
          gallowed[g] = 0;
          std::fill(allowed.begin() + g * gsize, allowed.begin() + (g + 1) * gsize, 1);
        }
      }
      int32_t* id = idx + n * K;
      T sum = 0;
      for (int64_t k = 0; k < K; ++k) {
        int64_t b = argmax_allowed(sb.data(), allowed.data(), E);
        if (b < 0) b = 0;  // unreachable with valid params; keeps idx in range regardless
        id[k] = static_cast<int32_t>(b);
        allowed[b] = 0;
        sum += s[b];
      }
      const T inv = sum > T(0) ? c / sum : T(0);
      for (int64_t k = 0; k < K; ++k) weights[n * K + k] = s[id[k]] * inv;
    }
  }
}

template <class T>
void gate_backward(const T* dweights, const T* scores, const int32_t* idx, const T* weights,
                   int64_t N, const GateParams& p, T* dlogits) {
  check_gate_params(p);
  (void)weights;  // recomputed from scores: w_k = s_k / S * c
  const int64_t E = p.n_experts, K = p.topk;
  const T c = static_cast<T>(p.route_scale);
#pragma omp parallel for schedule(static) if (N * E >= (1 << 14))
  for (int64_t n = 0; n < N; ++n) {
    const T* s = scores + n * E;
    const int32_t* id = idx + n * K;
    const T* dw = dweights + n * K;
    T* dl = dlogits + n * E;
    std::fill(dl, dl + E, T(0));
    gate_backward_row(s, id, dw, K, c, dl);
  }
}

template void gate_forward<float>(const float*, const float*, int64_t, const GateParams&, float*,
                                  int32_t*, float*);
template void gate_forward<double>(const double*, const double*, int64_t, const GateParams&,
                                   double*, int32_t*, double*);
template void gate_backward<float>(const float*, const float*, const int32_t*, const float*,
                                   int64_t, const GateParams&, float*);
template void gate_backward<double>(const double*, const double*, const int32_t*, const double*,
                                    int64_t, const GateParams&, double*);

}  // namespace moetron::kernels::cpu
