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

namespace {
template <class M>
void update_pieces(const Exec& ex, const std::vector<AdamW::Piece>& pieces, M* m, M* v,
                   const kernels::AdamWParams& ap) {
  std::vector<kernels::AdamWSegment<M>> segs;
  segs.reserve(pieces.size());
  for (const AdamW::Piece& p : pieces)
    segs.push_back({p.w, p.g, m + p.at, v + p.at, p.len, p.decay});
  kernels::adamw_update_segments<M>(ex, segs.data(), static_cast<int64_t>(segs.size()), ap);
}
}  // namespace

void AdamW::update(const std::vector<Piece>& pieces, double lr, int64_t step_number) {
  for (const Piece& p : pieces)
    if (p.at < 0 || p.len < 0 || p.at + p.len > n_)
      throw std::out_of_range("AdamW::update: elements");
  kernels::AdamWParams ap;
  ap.lr = lr, ap.beta1 = opt_.beta1, ap.beta2 = opt_.beta2, ap.eps = opt_.eps;
  ap.step = step_number;
  ap.weight_decay = opt_.weight_decay;  // where a piece's decay says so
  if (opt_.bf16_moments)
    update_pieces<uint16_t>(ex_, pieces, m16_.data(), v16_.data(), ap);
  else
    update_pieces<float>(ex_, pieces, m32_.data(), v32_.data(), ap);
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
