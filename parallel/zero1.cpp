// ZeRO-1 sharded AdamW over a reduction group (see zero1.h).
#include "parallel/zero1.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <stdexcept>

#include "kernels/scalar.h"

namespace moetron {

Zero1::Zero1(std::vector<Param<float>*> params, Communicator& group, const Zero1Options& opt)
    : params_(std::move(params)), comm_(group), opt_(opt) {
  const int64_t G = comm_.size(), r = comm_.rank();
  // buckets of whole parameters
  int64_t flat = 0;
  offset_.resize(params_.size());
  for (size_t i = 0; i < params_.size(); ++i) {
    const int64_t n = params_[i]->numel();
    numel_ += n;
    if (buckets_.empty() || (flat - buckets_.back().begin) + n > opt_.bucket_elements) {
      if (!buckets_.empty()) {
        Bucket& b = buckets_.back();
        b.padded = (flat - b.begin + G - 1) / G * G;
        flat = b.begin + b.padded;
      }
      buckets_.push_back({flat, 0, {}});
    }
    offset_[i] = flat;
    buckets_.back().params.push_back(static_cast<int64_t>(i));
    flat += n;
  }
  if (!buckets_.empty()) {
    Bucket& b = buckets_.back();
    b.padded = (flat - b.begin + G - 1) / G * G;
    flat = b.begin + b.padded;
  }
  flat_.assign(flat, 0.f);
  // this rank's shard: the r-th 1/G of every bucket, as segments of parameters
  for (const Bucket& b : buckets_) {
    const int64_t part = b.padded / G, lo = b.begin + r * part, hi = lo + part;
    for (int64_t i : b.params) {
      const int64_t p0 = offset_[i], p1 = p0 + params_[i]->numel();
      const int64_t s0 = std::max(p0, lo), s1 = std::min(p1, hi);
      if (s0 < s1) segments_.push_back({params_[i], s0 - p0, shard_ + (s0 - lo), s1 - s0});
    }
    shard_ += part;
  }
  shard_grad_.assign(shard_, 0.f);
  if (opt_.bf16_moments) {
    m16_.assign(shard_, 0), v16_.assign(shard_, 0);
  } else {
    m32_.assign(shard_, 0.f), v32_.assign(shard_, 0.f);
  }
}

void Zero1::reduce_scatter_grads() {
  const int64_t G = comm_.size();
  // with a group of one the shard is the whole flat layout: pack straight into it
  float* dst = G == 1 ? shard_grad_.data() : flat_.data();
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t i = 0; i < params_.size(); ++i)
    std::memcpy(dst + offset_[i], params_[i]->g(), sizeof(float) * params_[i]->numel());
  if (G == 1) return;
  int64_t shard_pos = 0;
  for (const Bucket& b : buckets_) {
    const int64_t part = b.padded / G;
    const auto t0 = std::chrono::steady_clock::now();
    comm_.reduce_scatter(flat_.data() + b.begin, shard_grad_.data() + shard_pos, part);
    comm_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    shard_pos += part;
  }
}

double Zero1::owned_grad_sq() const {
  // per-segment partial sums, then a fixed-order total: deterministic at any thread count
  std::vector<double> part(segments_.size(), 0.0);
#pragma omp parallel for schedule(dynamic, 1)
  for (size_t i = 0; i < segments_.size(); ++i) {
    const Segment& seg = segments_[i];
    if (seg.p->replica) continue;
    const float* g = shard_grad_.data() + seg.shard_offset;
    double s = 0;
    for (int64_t j = 0; j < seg.len; ++j) s += static_cast<double>(g[j]) * g[j];
    part[i] = s;
  }
  double s = 0;
  for (double v : part) s += v;
  return s;
}

void Zero1::step(double lr, double grad_scale, int64_t step_number) {
  if (grad_scale != 1.0) {
    const float c = static_cast<float>(grad_scale);
    float* g = shard_grad_.data();
#pragma omp parallel for simd
    for (int64_t i = 0; i < shard_; ++i) g[i] *= c;
  }
  kernels::AdamWParams ap;
  ap.lr = lr, ap.beta1 = opt_.beta1, ap.beta2 = opt_.beta2, ap.eps = opt_.eps;
  ap.step = step_number;
  for (const Segment& seg : segments_) {
    ap.weight_decay = seg.p->decay ? opt_.weight_decay : 0.0;
    float* w = seg.p->w() + seg.param_offset;
    const float* g = shard_grad_.data() + seg.shard_offset;
    if (opt_.bf16_moments)
      kernels::adamw_update<uint16_t>(Exec{}, w, g, m16_.data() + seg.shard_offset,
                                      v16_.data() + seg.shard_offset, seg.len, ap);
    else
      kernels::adamw_update<float>(Exec{}, w, g, m32_.data() + seg.shard_offset,
                                   v32_.data() + seg.shard_offset, seg.len, ap);
  }
  // everyone gets everyone's updated shard
  const int64_t G = comm_.size();
  if (G == 1) return;  // the parameters were updated in place
  std::vector<float> mine;
  for (const Bucket& b : buckets_) {
    const int64_t part = b.padded / G, lo = b.begin + comm_.rank() * part;
    for (int64_t i : b.params) {  // owned values into the flat buffer
      const int64_t p0 = offset_[i], p1 = p0 + params_[i]->numel();
      const int64_t s0 = std::max(p0, lo), s1 = std::min(p1, lo + part);
      if (s0 < s1)
        std::memcpy(flat_.data() + s0, params_[i]->w() + (s0 - p0), sizeof(float) * (s1 - s0));
    }
    mine.assign(flat_.begin() + lo, flat_.begin() + lo + part);
    const auto t0 = std::chrono::steady_clock::now();
    comm_.all_gather(mine.data(), flat_.data() + b.begin, part);
    comm_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    for (int64_t i : b.params)
      std::memcpy(params_[i]->w(), flat_.data() + offset_[i], sizeof(float) * params_[i]->numel());
  }
}

std::vector<Zero1::MomentPiece> Zero1::export_moments() const {
  std::vector<MomentPiece> out;
  for (const Segment& seg : segments_) {
    MomentPiece p{seg.p->name, seg.param_offset, {}, {}};
    p.m.resize(seg.len), p.v.resize(seg.len);
    for (int64_t j = 0; j < seg.len; ++j) {
      const int64_t k = seg.shard_offset + j;
      p.m[j] = opt_.bf16_moments ? bf16_to_f32(m16_[k]) : m32_[k];
      p.v[j] = opt_.bf16_moments ? bf16_to_f32(v16_[k]) : v32_[k];
    }
    out.push_back(std::move(p));
  }
  return out;
}

void Zero1::import_moments(const std::vector<MomentPiece>& pieces) {
  for (const Segment& seg : segments_) {
    // pieces may overlap (a parameter held by two pipeline stages is saved twice, identically)
    std::vector<char> covered(seg.len, 0);
    for (const MomentPiece& p : pieces) {
      if (p.name != seg.p->name) continue;
      const int64_t lo = std::max(p.offset, seg.param_offset);
      const int64_t hi =
          std::min(p.offset + static_cast<int64_t>(p.m.size()), seg.param_offset + seg.len);
      for (int64_t x = lo; x < hi; ++x) {
        const int64_t k = seg.shard_offset + (x - seg.param_offset);
        const float m = p.m[x - p.offset], v = p.v[x - p.offset];
        if (opt_.bf16_moments)
          m16_[k] = f32_to_bf16(m), v16_[k] = f32_to_bf16(v);
        else
          m32_[k] = m, v32_[k] = v;
        covered[x - seg.param_offset] = 1;
      }
    }
    if (std::find(covered.begin(), covered.end(), 0) != covered.end())
      throw std::runtime_error("optimizer state for " + seg.p->name + " [" +
                               std::to_string(seg.param_offset) + ", +" + std::to_string(seg.len) +
                               ") is not in the checkpoint");
  }
}

int64_t Zero1::state_bytes() const { return opt_.bf16_moments ? 2 * shard_ * 2 : 2 * shard_ * 4; }

}  // namespace moetron
