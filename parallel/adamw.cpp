// AdamW moments and update over a flat run of elements (see adamw.h).
#include "parallel/adamw.h"

#include "kernels/ops.h"
#include "kernels/scalar.h"

namespace moetron {

AdamW::AdamW(int64_t elements, const AdamWOptions& opt) : opt_(opt), n_(elements) {
  if (opt_.bf16_moments) {
    m16_.assign(n_, 0), v16_.assign(n_, 0);
  } else {
    m32_.assign(n_, 0.f), v32_.assign(n_, 0.f);
  }
}

void AdamW::update(float* w, const float* g, int64_t at, int64_t len, bool decay, double lr,
                   int64_t step_number) {
  kernels::AdamWParams ap;
  ap.lr = lr, ap.beta1 = opt_.beta1, ap.beta2 = opt_.beta2, ap.eps = opt_.eps;
  ap.step = step_number;
  ap.weight_decay = decay ? opt_.weight_decay : 0.0;
  if (opt_.bf16_moments)
    kernels::adamw_update<uint16_t>(Exec{}, w, g, m16_.data() + at, v16_.data() + at, len, ap);
  else
    kernels::adamw_update<float>(Exec{}, w, g, m32_.data() + at, v32_.data() + at, len, ap);
}

float AdamW::m(int64_t k) const { return opt_.bf16_moments ? bf16_to_f32(m16_[k]) : m32_[k]; }
float AdamW::v(int64_t k) const { return opt_.bf16_moments ? bf16_to_f32(v16_[k]) : v32_[k]; }

void AdamW::set(int64_t k, float m, float v) {
  if (opt_.bf16_moments)
    m16_[k] = f32_to_bf16(m), v16_[k] = f32_to_bf16(v);
  else
    m32_[k] = m, v32_[k] = v;
}

int64_t AdamW::state_bytes() const { return opt_.bf16_moments ? 2 * n_ * 2 : 2 * n_ * 4; }

}  // namespace moetron
