// AdamW step over one flat parameter buffer, with fp32 or bf16 moments.
//
// Shapes: param, grad [n] fp32 (master weights and gradients); m, v [n] as float, or uint16_t
// holding bf16 bit patterns (halves optimizer memory, ARCHITECTURE contract 6). Per element, in
// fp32:
//   p -= lr * wd * p                                (decoupled weight decay, on the old p)
//   m  = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
// With bf16 moments the update uses the fp32 m, v of this step; they are then stored rounded to
// nearest even (f32_to_bf16). Bias corrections are computed once in double. Parallel, SIMD.
// The four multiply-adds that are one fma each are spelled out (std::fma): the GPU's kernel
// (kernels/cuda/adamw.cu) rounds them once, and a build whose -march has no FMA (the sanitizer
// build, a portable Release) would otherwise round twice where -march=native fused them.
#include <cmath>
#include <stdexcept>
#include <type_traits>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"

namespace moetron::kernels::cpu {

namespace {

template <class M>
float load(M x) {
  if constexpr (std::is_same_v<M, float>) {
    return x;
  } else {
    return bf16_to_f32(x);
  }
}

template <class M>
M store(float x) {
  if constexpr (std::is_same_v<M, float>) {
    return x;
  } else {
    return f32_to_bf16(x);
  }
}

}  // namespace

template <class M>
void adamw_update(float* param, const float* grad, M* m, M* v, int64_t n, const AdamWParams& p) {
  if (p.step < 1) throw std::invalid_argument("adamw_update: step is 1-based");
  const float lr = static_cast<float>(p.lr);
  const float b1 = static_cast<float>(p.beta1), b2 = static_cast<float>(p.beta2);
  const float omb1 = static_cast<float>(1.0 - p.beta1), omb2 = static_cast<float>(1.0 - p.beta2);
  const float decay = static_cast<float>(std::fma(-p.lr, p.weight_decay, 1.0));
  const double t = static_cast<double>(p.step);
  const float bc1 = static_cast<float>(1.0 / (1.0 - std::pow(p.beta1, t)));
  const float bc2 = static_cast<float>(1.0 / (1.0 - std::pow(p.beta2, t)));
  const float eps = static_cast<float>(p.eps);
#pragma omp parallel for simd schedule(static) if (n >= (1 << 15))
  for (int64_t i = 0; i < n; ++i) {
    const float g = grad[i];
    const float mi = std::fma(b1, load(m[i]), omb1 * g);
    const float vi = std::fma(b2, load(v[i]), omb2 * g * g);
    param[i] = std::fma(decay, param[i], -(lr * (mi * bc1) / (std::sqrt(vi * bc2) + eps)));
    m[i] = store<M>(mi);
    v[i] = store<M>(vi);
  }
}

template <class M>
void adamw_update_segments(const AdamWSegment<M>* segs, int64_t n, const AdamWParams& p) {
  for (int64_t s = 0; s < n; ++s) {
    AdamWParams ps = p;
    if (!segs[s].decay) ps.weight_decay = 0.0;
    adamw_update<M>(segs[s].param, segs[s].grad, segs[s].m, segs[s].v, segs[s].n, ps);
  }
}

template void adamw_update<float>(float*, const float*, float*, float*, int64_t,
                                  const AdamWParams&);
template void adamw_update<uint16_t>(float*, const float*, uint16_t*, uint16_t*, int64_t,
                                     const AdamWParams&);
template void adamw_update_segments<float>(const AdamWSegment<float>*, int64_t, const AdamWParams&);
template void adamw_update_segments<uint16_t>(const AdamWSegment<uint16_t>*, int64_t,
                                              const AdamWParams&);

}  // namespace moetron::kernels::cpu
