// Attention of a few new tokens over a cache that holds one key per position, shared by every
// head, whose first Dv values are also that position's value: MLA's decoding form (model/decode.h).
// With the up-projection of the keys absorbed into the query and that of the values applied after
// the attention, MLA's per-head keys and values never exist at inference: every head attends to
// the cached row [c_kv (after kv_norm) | k_pe (after RoPE)] with the query [q_nope W_UK | q_pe],
// and its output is the attention-weighted sum of the c_kv parts. One task per (token, head):
// scores against the visible rows, a max-subtracted softmax, then the weighted sum, all in T.
#include <algorithm>
#include <cmath>
#include <vector>

#include "kernels/cpu/ops_cpu.h"

namespace moetron::kernels::cpu {

template <class T>
void latent_attention_forward(const T* q, const T* kv, int64_t M, int64_t past, int64_t H,
                              int64_t Dk, int64_t Dv, T scale, T* o) {
  const int64_t tasks = M * H, rows = past + M;
  if (tasks <= 0) return;
#pragma omp parallel if (tasks * rows * Dk >= (int64_t{1} << 18))
  {
    std::vector<T> s(static_cast<size_t>(rows));
#pragma omp for schedule(static)
    for (int64_t task = 0; task < tasks; ++task) {
      const int64_t m = task / H, n = past + m + 1;  // token m sees rows [0, past + m]
      const T* qv = q + task * Dk;
      T mx = -INFINITY;
      for (int64_t t = 0; t < n; ++t) {
        const T* k = kv + t * Dk;
        T dot = 0;
#pragma omp simd reduction(+ : dot)
        for (int64_t d = 0; d < Dk; ++d) dot += qv[d] * k[d];
        s[t] = dot * scale;
        mx = std::max(mx, s[t]);
      }
      T l = 0;
      for (int64_t t = 0; t < n; ++t) l += (s[t] = std::exp(s[t] - mx));
      T* out = o + task * Dv;
      std::fill(out, out + Dv, T(0));
      for (int64_t t = 0; t < n; ++t) {
        const T p = s[t] / l;
        const T* v = kv + t * Dk;
#pragma omp simd
        for (int64_t d = 0; d < Dv; ++d) out[d] += p * v[d];
      }
    }
  }
}

template void latent_attention_forward<float>(const float*, const float*, int64_t, int64_t, int64_t,
                                              int64_t, int64_t, float, float*);
template void latent_attention_forward<double>(const double*, const double*, int64_t, int64_t,
                                               int64_t, int64_t, int64_t, double, double*);

}  // namespace moetron::kernels::cpu
