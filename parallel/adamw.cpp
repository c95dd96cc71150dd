// AdamW moments and update over a flat run of elements (see adamw.h).
#include "parallel/adamw.h"

#include <stdexcept>

#include "kernels/ops.h"
#include "kernels/scalar.h"

namespace moetron {

AdamW::AdamW(int64_t elements, const AdamWOptions& opt, const Exec& ex)
    : opt_(opt),
      ex_(ex),
      n_(elements),
      m32_(ex.device),
      v32_(ex.device),
      m16_(ex.device),
      v16_(ex.device) {
  if (opt_.bf16_moments) {
    zeroed(ex_, m16_, n_), zeroed(ex_, v16_, n_);
  } else {
    zeroed(ex_, m32_, n_), zeroed(ex_, v32_, n_);
  }
}

void AdamW::update(float* w, const float* g, int64_t at, int64_t len, bool decay, double lr,
                   int64_t step_number) {
  kernels::AdamWParams ap;
  ap.lr = lr, ap.beta1 = opt_.beta1, ap.beta2 = opt_.beta2, ap.eps = opt_.eps;
  ap.step = step_number;
  ap.weight_decay = decay ? opt_.weight_decay : 0.0;
  if (opt_.bf16_moments)
    kernels::adamw_update<uint16_t>(ex_, w, g, m16_.data() + at, v16_.data() + at, len, ap);
  else
    kernels::adamw_update<float>(ex_, w, g, m32_.data() + at, v32_.data() + at, len, ap);
}

void AdamW::read(int64_t at, int64_t len, float* m, float* v) const {
  if (at < 0 || len < 0 || at + len > n_) throw std::out_of_range("AdamW::read: elements");
  if (!opt_.bf16_moments) {
    kernels::copy_to_host(ex_, m, m32_.data() + at, sizeof(float) * len);
    kernels::copy_to_host(ex_, v, v32_.data() + at, sizeof(float) * len);
    return;
  }
  std::vector<uint16_t> h(static_cast<size_t>(len));
  for (auto [dst, src] : {std::pair{m, &m16_}, std::pair{v, &v16_}}) {
    kernels::copy_to_host(ex_, h.data(), src->data() + at, sizeof(uint16_t) * len);
    for (int64_t j = 0; j < len; ++j) dst[j] = bf16_to_f32(h[j]);
  }
}

void AdamW::write(int64_t at, int64_t len, const float* m, const float* v) {
  if (at < 0 || len < 0 || at + len > n_) throw std::out_of_range("AdamW::write: elements");
  if (!opt_.bf16_moments) {
    kernels::copy_from_host(ex_, m32_.data() + at, m, sizeof(float) * len);
    kernels::copy_from_host(ex_, v32_.data() + at, v, sizeof(float) * len);
    return;
  }
  std::vector<uint16_t> h(static_cast<size_t>(len));
  for (auto [src, dst] : {std::pair{m, &m16_}, std::pair{v, &v16_}}) {
    for (int64_t j = 0; j < len; ++j) h[j] = f32_to_bf16(src[j]);
    kernels::copy_from_host(ex_, dst->data() + at, h.data(), sizeof(uint16_t) * len);
  }
}

int64_t AdamW::state_bytes() const { return opt_.bf16_moments ? 2 * n_ * 2 : 2 * n_ * 4; }

}  // namespace moetron
