// AdamW with global-norm clipping (see optimizer.h).
#include "trainer/optimizer.h"

#include <cmath>

#include "kernels/ops.h"

namespace moetron {

AdamW::AdamW(ParamStore<float>& params, const OptimizerConfig& cfg)
    : params_(params), cfg_(cfg), bf16_(cfg.moment_dtype == "bf16") {
  for (auto& p : params_.all()) {
    const size_t n = p->trainable ? static_cast<size_t>(p->numel()) : 0;
    if (bf16_) {
      m16_.emplace_back(n, 0);
      v16_.emplace_back(n, 0);
    } else {
      m32_.emplace_back(n, 0.f);
      v32_.emplace_back(n, 0.f);
    }
  }
}

double AdamW::grad_norm() const {
  double sum = 0;
  for (auto& p : params_.all()) {
    if (!p->trainable) continue;
    const float* g = p->grad.data<float>();
    double s = 0;
#pragma omp parallel for reduction(+ : s)
    for (int64_t i = 0; i < p->numel(); ++i) s += static_cast<double>(g[i]) * g[i];
    sum += s;
  }
  return std::sqrt(sum);
}

double AdamW::step(double lr) {
  const double norm = grad_norm();
  const double clip = cfg_.grad_clip > 0 && norm > cfg_.grad_clip ? cfg_.grad_clip / norm : 1.0;
  ++step_;
  const auto& all = params_.all();
  for (size_t i = 0; i < all.size(); ++i) {
    Param<float>& p = *all[i];
    if (!p.trainable) continue;
    float* g = p.g();
    if (clip != 1.0) {
      const float c = static_cast<float>(clip);
      for (int64_t j = 0; j < p.numel(); ++j) g[j] *= c;
    }
    kernels::AdamWParams ap;
    ap.lr = lr, ap.beta1 = cfg_.beta1, ap.beta2 = cfg_.beta2, ap.eps = cfg_.eps;
    ap.weight_decay = p.decay ? cfg_.weight_decay : 0.0;
    ap.step = step_;
    if (bf16_)
      kernels::adamw_update<uint16_t>(p.w(), g, m16_[i].data(), v16_[i].data(), p.numel(), ap);
    else
      kernels::adamw_update<float>(p.w(), g, m32_[i].data(), v32_[i].data(), p.numel(), ap);
  }
  return norm;
}

int64_t AdamW::state_bytes() const {
  int64_t b = 0;
  for (auto& m : m32_) b += 2 * static_cast<int64_t>(m.size()) * 4;
  for (auto& m : m16_) b += 2 * static_cast<int64_t>(m.size()) * 2;
  return b;
}

}  // namespace moetron
