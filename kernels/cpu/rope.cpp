// Rotary position embedding with DeepSeek-V3's interleaved pairs and optional YaRN (SPEC 1.3).
//
// rope_frequencies returns f_i = theta^(-2i/dim), i < dim/2, with the YaRN blend if enabled:
//   corr(r) = dim * ln(L0 / (r 2 pi)) / (2 ln theta)
//   low = max(floor(corr(beta_fast)), 0), high = min(ceil(corr(beta_slow)), dim - 1)
//   ramp_i = clamp((i - low) / (high - low), 0, 1)       (high += 0.001 if low == high)
//   f_i <- f_i / s * ramp_i + f_i * (1 - ramp_i)
// so low-index (fast) pairs keep their frequency and high-index (slow) pairs are divided by s.
// rope_apply rotates pair (x[2i], x[2i+1]) by a = pos * f_i:
//   (x0, x1) -> (x0 cos a - x1 sin a, x0 sin a + x1 cos a);  inverse rotates by -a, which is the
// transpose, i.e. the backward. Vectors: x + v*stride, v < nvec, dim values (freqs [dim/2])
// each, vector v at position pos[v / vecs_per_pos] (e.g. all H heads of one token share it).
// cos/sin are computed once per position in double and reused by its vectors; parallel over
// positions.
#include <algorithm>
#include <cmath>
#include <numbers>
#include <stdexcept>
#include <vector>

#include "kernels/cpu/ops_cpu.h"

namespace moetron::kernels {

std::vector<double> rope_frequencies(const RopeParams& p) {
  if (p.dim <= 0 || p.dim % 2 != 0) throw std::invalid_argument("rope: dim must be even and > 0");
  const int half = p.dim / 2;
  std::vector<double> f(half);
  for (int i = 0; i < half; ++i) f[i] = std::pow(p.theta, -2.0 * i / p.dim);
  if (!p.yarn) return f;
  if (p.factor <= 0) throw std::invalid_argument("rope: yarn factor must be > 0");
  const double two_pi = 2.0 * std::numbers::pi;
  auto corr = [&](double r) {
    return p.dim * std::log(static_cast<double>(p.original_seq_len) / (r * two_pi)) /
           (2.0 * std::log(p.theta));
  };
  const double low = std::max(std::floor(corr(p.beta_fast)), 0.0);
  double high = std::min(std::ceil(corr(p.beta_slow)), static_cast<double>(p.dim - 1));
  if (low == high) high += 0.001;
  for (int i = 0; i < half; ++i) {
    const double ramp = std::clamp((i - low) / (high - low), 0.0, 1.0);
    f[i] = f[i] / p.factor * ramp + f[i] * (1.0 - ramp);
  }
  return f;
}

}  // namespace moetron::kernels

namespace moetron::kernels::cpu {

template <class T>
void rope_apply(T* x, int64_t nvec, int64_t stride, int64_t vecs_per_pos, const int32_t* pos,
                const double* freqs, int64_t dim, bool inverse) {
  if (vecs_per_pos <= 0) throw std::invalid_argument("rope_apply: vecs_per_pos must be > 0");
  const int64_t half = dim / 2;
  const int64_t npos = (nvec + vecs_per_pos - 1) / vecs_per_pos;
  const double sign = inverse ? -1.0 : 1.0;
#pragma omp parallel if (nvec * half >= (1 << 13))
  {
    std::vector<T> cs(half), sn(half);
#pragma omp for schedule(static)
    for (int64_t t = 0; t < npos; ++t) {
      const double pt = static_cast<double>(pos[t]);
      for (int64_t i = 0; i < half; ++i) {
        const double a = pt * freqs[i];
        cs[i] = static_cast<T>(std::cos(a));
        sn[i] = static_cast<T>(sign * std::sin(a));
      }
      const int64_t v1 = std::min(nvec, (t + 1) * vecs_per_pos);
      for (int64_t v = t * vecs_per_pos; v < v1; ++v) {
        T* xv = x + v * stride;
#pragma omp simd
        for (int64_t i = 0; i < half; ++i) {
          const T x0 = xv[2 * i], x1 = xv[2 * i + 1];
          xv[2 * i] = x0 * cs[i] - x1 * sn[i];
          xv[2 * i + 1] = x0 * sn[i] + x1 * cs[i];
        }
      }
    }
  }
}

template void rope_apply<float>(float*, int64_t, int64_t, int64_t, const int32_t*, const double*,
                                int64_t, bool);
template void rope_apply<double>(double*, int64_t, int64_t, int64_t, const int32_t*, const double*,
                                 int64_t, bool);

}  // namespace moetron::kernels::cpu
