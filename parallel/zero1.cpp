// ZeRO-1 over a reduction group: the arena layout, the gradient reduce-scatter, the norm's
// owned squares and the all-gather of the updated values; the update itself is AdamW's (see
// zero1.h, adamw.h).
#include "parallel/zero1.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <unordered_map>

#include "kernels/scalar.h"
#include "parallel/trace.h"

namespace moetron {

// A unit is what a bucket never splits: a parameter with its own storage, or a fused tensor with
// all its views (placed where its first view is listed). within[i]: params[i]'s offset in its
// unit.
struct Zero1::Plan {
  struct Unit {
    Param<float>* fused = nullptr;
    std::vector<int64_t> members;  // indices into params
    int64_t numel = 0;
  };
  std::vector<Unit> units;
  std::vector<int64_t> within;
  Device device = Device::CPU;
  int64_t numel = 0;  // parameter elements
};

Zero1::Zero1(std::vector<Param<float>*> params, Communicator& group, const Zero1Options& opt)
    : params_(std::move(params)), comm_(group), opt_(opt) {
  const Plan plan = plan_units(params_);
  ex_ = Exec::on(plan.device);
  numel_ = plan.numel;
  const int64_t flat = plan_buckets(plan);
  plan_shard();
  const int64_t G = comm_.size();
  sharded_ = opt_.shard_values && G > 1 &&
             std::any_of(units_.begin(), units_.end(),
                         [](const Unit& u) { return !u.storage->copies.empty(); });
  if (sharded_) {  // every owned master value, from the parameters before they move
    shard_value_ = Buffer<float>(ex_.device);
    zeroed(ex_, shard_value_, shard_);  // (padding stays zero)
    for (const Segment& seg : segments_)
      kernels::copy(ex_, shard_value_.data() + seg.shard_offset, seg.p->w() + seg.param_offset,
                    sizeof(float) * static_cast<size_t>(seg.len));
  }
  rehome(plan, flat);
  // the overlapped reduction's tables (zero1_reduce.cpp)
  bucket_of_.assign(params_.size(), 0);
  for (size_t b = 0; b < buckets_.size(); ++b) {
    shard_pos_.push_back(b == 0 ? 0 : shard_pos_.back() + buckets_[b - 1].padded / G);
    not_final_.push_back(static_cast<int64_t>(buckets_[b].params.size()));
    for (int64_t i : buckets_[b].params) bucket_of_[i] = static_cast<int64_t>(b);
  }
  final_.assign(params_.size(), 0);
  if (opt_.grad_reduce_bf16 && G > 1) {
    int64_t most = 0;
    for (const Bucket& b : buckets_) most = std::max(most, b.padded);
    stage16_.resize(static_cast<size_t>(std::max(1, opt_.staging)));
    for (size_t k = 0; k < stage16_.size(); ++k) {
      stage16_[k] = Buffer<uint16_t>(ex_.device);
      zeroed(ex_, stage16_[k], most + most / G), free16_.push_back(static_cast<int>(k));
    }
  }
  adamw_ = AdamW(shard_, opt_, ex_);
  seg_sq_ = Buffer<double>(ex_.device), bad_ = Buffer<int64_t>(ex_.device);
  zeroed(ex_, seg_sq_, static_cast<int64_t>(segments_.size()));
  zeroed(ex_, bad_, G > 1 ? static_cast<int64_t>(buckets_.size()) : 1);
}

namespace {
// The views of each fused tensor tile it exactly (else some are in another group).
void check_tiling(const std::vector<Param<float>*>& params, const std::vector<int64_t>& within,
                  const std::vector<int64_t>& members, int64_t numel) {
  std::vector<int64_t> m = members;
  std::sort(m.begin(), m.end(), [&](int64_t a, int64_t b) { return within[a] < within[b]; });
  int64_t next = 0;
  for (int64_t i : m) {
    if (within[i] != next)
      throw std::invalid_argument("Zero1: the views of a fused tensor (" + params[i]->name +
                                  ", ...) do not tile it: all of them must be in one group");
    next += params[i]->numel();
  }
  if (next != numel)
    throw std::invalid_argument("Zero1: the views of a fused tensor (" + params[m[0]]->name +
                                ", ...) do not cover it: all of them must be in one group");
}
}  // namespace

Zero1::Plan Zero1::plan_units(const std::vector<Param<float>*>& params) {
  Plan plan;
  std::unordered_map<const Param<float>*, size_t> unit_of_fused;
  plan.within.assign(params.size(), 0);
  for (size_t i = 0; i < params.size(); ++i) {
    Param<float>* p = params[i];
    if (!p->value.raw() || !p->grad.raw())
      throw std::invalid_argument("Zero1: parameter " + p->name + " has no memory (device " +
                                  device_name(p->value.device()) + ")");
    plan.device = p->value.device();
    plan.numel += p->numel();
    if (!p->fused) {
      plan.units.push_back({nullptr, {static_cast<int64_t>(i)}, p->numel()});
      continue;
    }
    auto [it, fresh] = unit_of_fused.try_emplace(p->fused, plan.units.size());
    if (fresh) plan.units.push_back({p->fused, {}, p->fused->numel()});
    plan.units[it->second].members.push_back(static_cast<int64_t>(i));
    const auto off = [](const Tensor& view, const Tensor& whole) {
      return (static_cast<const char*>(view.raw()) - static_cast<const char*>(whole.raw())) /
             static_cast<std::ptrdiff_t>(sizeof(float));
    };
    plan.within[i] = off(p->value, p->fused->value);
    if (off(p->grad, p->fused->grad) != plan.within[i])
      throw std::invalid_argument("Zero1: " + p->name + ": value and gradient views differ");
  }
  for (const Plan::Unit& u : plan.units)
    if (u.fused) check_tiling(params, plan.within, u.members, u.numel);
  return plan;
}

// Buckets of whole units, each padded to a multiple of G; sets buckets_, units_ and offset_,
// returns the arena length.
int64_t Zero1::plan_buckets(const Plan& plan) {
  const int64_t G = comm_.size();
  const auto& units = plan.units;
  int64_t flat = 0;
  const auto close_bucket = [&] {
    Bucket& b = buckets_.back();
    b.padded = (flat - b.begin + G - 1) / G * G;
    flat = b.begin + b.padded;
  };
  for (size_t u = 0; u < units.size(); ++u) {
    if (buckets_.empty() ||
        (flat - buckets_.back().begin) + units[u].numel > opt_.bucket_elements) {
      if (!buckets_.empty()) close_bucket();
      buckets_.push_back({flat, 0, {}, {}});
    }
    Param<float>* storage = units[u].fused ? units[u].fused : params_[units[u].members[0]];
    buckets_.back().units.push_back(static_cast<int64_t>(units_.size()));
    units_.push_back({storage, flat, units[u].numel, -1});
    std::vector<int64_t> m = units[u].members;  // in layout order
    std::sort(m.begin(), m.end(),
              [&](int64_t a, int64_t b) { return plan.within[a] < plan.within[b]; });
    for (int64_t i : m) buckets_.back().params.push_back(i);
    flat += units[u].numel;
  }
  if (!buckets_.empty()) close_bucket();
  offset_.resize(params_.size());
  unit_of_.resize(params_.size());
  for (size_t u = 0; u < units.size(); ++u)
    for (int64_t i : units[u].members)
      offset_[i] = units_[u].offset + plan.within[i], unit_of_[i] = static_cast<int64_t>(u);
  return flat;
}

// Allocates the arenas; every parameter (and fused tensor) moves onto its slice. Sharded: the
// value arena holds the resident units one after another (value_at), and a cached unit's copies
// are made from its values before they go (its value tensors keep their shapes on Meta).
void Zero1::rehome(const Plan& plan, int64_t flat) {
  int64_t resident = 0;
  for (size_t u = 0; u < units_.size(); ++u) {
    if (cached(u)) continue;
    units_[u].value_at = sharded_ ? resident : units_[u].offset;
    resident += units_[u].numel;
  }
  value_arena_ = Tensor({sharded_ ? resident : flat}, DType::F32, plan.device);
  grad_arena_ = Tensor({flat}, DType::F32, plan.device);
  for (size_t u = 0; u < plan.units.size(); ++u) {
    const Plan::Unit& unit = plan.units[u];
    const int64_t offset = units_[u].offset, at = units_[u].value_at, shift = at - offset;
    Param<float>& p = *units_[u].storage;
    const bool keep = at >= 0;
    if (keep) {
      kernels::copy(ex_, value_arena_.data<float>() + at, p.value.raw(), p.value.bytes());
    } else {  // the copies are made now, from the values about to go
      for (const auto& remake : p.copies) remake(p.w());
    }
    kernels::copy(ex_, grad_arena_.data<float>() + offset, p.grad.raw(), p.grad.bytes());
    const auto place = [&](Param<float>& q, int64_t offset) {
      q.value = keep ? value_arena_.view(offset + shift, q.value.shape())
                     : Tensor(q.value.shape(), DType::F32, Device::Meta);
      q.grad = grad_arena_.view(offset, q.grad.shape());
    };
    place(p, offset);
    if (unit.fused)  // views of the re-homed fused tensor
      for (int64_t i : unit.members) place(*params_[i], offset_[i]);
  }
}

// This rank's shard: the r-th 1/G of every bucket, as segments of parameters, in the parameter
// list's order (the norm's summation order).
void Zero1::plan_shard() {
  const int64_t G = comm_.size(), r = comm_.rank();
  for (const Bucket& b : buckets_) {
    const int64_t part = b.padded / G, lo = b.begin + r * part, hi = lo + part;
    for (int64_t i : b.params) {
      const int64_t p0 = offset_[i], p1 = p0 + params_[i]->numel();
      const int64_t s0 = std::max(p0, lo), s1 = std::min(p1, hi);
      if (s0 < s1) segments_.push_back({params_[i], s0 - p0, shard_ + (s0 - lo), s1 - s0, i, s0});
    }
    shard_ += part;
  }
  std::sort(segments_.begin(), segments_.end(), [](const Segment& a, const Segment& b) {
    return a.index != b.index ? a.index < b.index : a.param_offset < b.param_offset;
  });
}

double Zero1::owned_grad_sq() const {
  // per-segment partial sums on the device, then a fixed-order total: deterministic
  // (one op for all the segments: on a GPU two launches, not two per segment)
  const size_t n = segments_.size();
  std::vector<int64_t> begin(n), len(n);
  for (size_t i = 0; i < n; ++i)  // a replica's segment counts as empty
    begin[i] = segments_[i].arena_offset, len[i] = segments_[i].p->replica ? 0 : segments_[i].len;
  kernels::segment_sum_squares(ex_, owned_grads(), begin.data(), len.data(),
                               static_cast<int64_t>(n), seg_sq_.data());
  std::vector<double> host(n);
  kernels::copy_to_host(ex_, host.data(), seg_sq_.data(), sizeof(double) * n);
  double s = 0;
  for (double v : host) s += v;
  return s;
}

bool Zero1::local_grads_finite() const {
  if (G1())
    kernels::count_nonfinite(ex_, grad_arena_.data<float>(), grad_arena_.numel(), bad_.data());
  std::vector<int64_t> n(static_cast<size_t>(bad_.size()));
  kernels::copy_to_host(ex_, n.data(), bad_.data(), sizeof(int64_t) * n.size());
  return std::all_of(n.begin(), n.end(), [](int64_t k) { return k == 0; });
}

void Zero1::step(double lr, double grad_scale, int64_t step_number) {
  scale_owned_grads(grad_scale);
  const float* grads = grad_arena_.data<float>();
  std::vector<AdamW::Piece> pieces;  // in the value arena, or (sharded) the master shard
  pieces.reserve(segments_.size());
  for (const Segment& seg : segments_)
    pieces.push_back(
        {master(seg), grads + seg.arena_offset, seg.shard_offset, seg.len, seg.p->decay});
  adamw_.update(pieces, lr, step_number);
  all_gather_values();
}

void Zero1::scale_owned_grads(double grad_scale) {
  if (grad_scale == 1.0) return;
  if (G1())
    return kernels::scale_inplace(ex_, grad_arena_.data<float>(), static_cast<float>(grad_scale),
                                  grad_arena_.numel());
  for (size_t b = 0; b < buckets_.size(); ++b)  // the owned parts, where the reductions landed
    kernels::scale_inplace(ex_, owned_part(b), static_cast<float>(grad_scale),
                           buckets_[b].padded / comm_.size());
}

// Everyone gets everyone's updated block, in place in the value arena; sharded, in the spent
// gradient arena (this rank's block copied there from the master shard), then spread.
void Zero1::all_gather_values() {
  const int64_t G = comm_.size();
  if (G == 1) return;
  float* values = (sharded_ ? grad_arena_ : value_arena_).data<float>();
  for (size_t k = 0; k < buckets_.size(); ++k) {
    const Bucket& b = buckets_[k];
    const int64_t part = b.padded / G;
    float* mine = values + b.begin + comm_.rank() * part;
    if (sharded_)
      kernels::copy(ex_, mine, shard_value_.data() + shard_pos_[k],
                    sizeof(float) * static_cast<size_t>(part));
    const auto t0 = std::chrono::steady_clock::now();
    comm_.all_gather(mine, values + b.begin, part);
    comm_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    trace::span_since(trace::Track::Dp, "all-gather", trace::ns(t0), "bucket,elements",
                      static_cast<int64_t>(k), b.padded);
    if (sharded_) spread_bucket(k);
  }
}

// A gathered bucket (in the gradient arena): resident units' values into the value arena, cached
// units' to their copies.
void Zero1::spread_bucket(size_t b) {
  const float* gathered = grad_arena_.data<float>();
  for (int64_t u : buckets_[b].units) {
    const Unit& unit = units_[static_cast<size_t>(u)];
    if (cached(static_cast<size_t>(u))) {
      for (const auto& remake : unit.storage->copies) remake(gathered + unit.offset);
    } else {
      kernels::copy(ex_, value_arena_.data<float>() + unit.value_at, gathered + unit.offset,
                    sizeof(float) * static_cast<size_t>(unit.numel));
    }
  }
}

void Zero1::read_owned(const OwnedRange& r, float* host) const {
  if (!sharded_) return values_to_host(*r.param, r.offset, r.len, host);
  kernels::copy_to_host(ex_, host, shard_value_.data() + r.shard_offset,
                        sizeof(float) * static_cast<size_t>(r.len));
}

void Zero1::load_owned(const ReadValues& read) {
  if (!sharded_) throw std::logic_error("Zero1::load_owned: the values are not sharded");
  std::vector<float> host;
  for (const Segment& seg : segments_) {
    host.resize(static_cast<size_t>(seg.len));
    read(*seg.p, seg.param_offset, seg.len, host.data());
    kernels::copy_from_host(ex_, shard_value_.data() + seg.shard_offset, host.data(),
                            sizeof(float) * host.size());
  }
}

void Zero1::gather_values() {
  if (!sharded_) return;
  all_gather_values();
  gathered_.clear();
  for (size_t i = 0; i < params_.size(); ++i)
    if (!holds_values(i))
      gathered_[params_[i]] = grad_arena_.view(offset_[i], params_[i]->value.shape());
}

const Tensor& Zero1::whole_values(const Param<float>& p) const {
  const auto it = gathered_.find(&p);
  if (it != gathered_.end()) return it->second;
  if (!p.value.raw() && p.numel() > 0)
    throw std::logic_error("Zero1::whole_values: " + p.name +
                           ": its values are sharded and not gathered since the last step");
  return p.value;
}

std::vector<Zero1::MomentPiece> Zero1::export_moments() const {
  std::vector<MomentPiece> out;
  for (const Segment& seg : segments_) {
    MomentPiece p{seg.p->name, seg.param_offset, {}, {}};
    p.m.resize(seg.len), p.v.resize(seg.len);
    adamw_.read(seg.shard_offset, seg.len, p.m.data(), p.v.data());
    out.push_back(std::move(p));
  }
  return out;
}

void Zero1::import_moments(const std::vector<MomentPiece>& pieces) {
  for (const Segment& seg : segments_) {
    // pieces may overlap (a parameter held by two pipeline stages is saved twice, identically)
    std::vector<char> covered(seg.len, 0);
    std::vector<float> m(seg.len), v(seg.len);
    for (const MomentPiece& p : pieces) {
      if (p.name != seg.p->name) continue;
      const int64_t lo = std::max(p.offset, seg.param_offset);
      const int64_t hi =
          std::min(p.offset + static_cast<int64_t>(p.m.size()), seg.param_offset + seg.len);
      for (int64_t x = lo; x < hi; ++x) {
        const int64_t k = x - seg.param_offset;
        m[k] = p.m[x - p.offset], v[k] = p.v[x - p.offset];
        covered[k] = 1;
      }
    }
    if (std::find(covered.begin(), covered.end(), 0) != covered.end())
      throw std::runtime_error("optimizer state for " + seg.p->name + " [" +
                               std::to_string(seg.param_offset) + ", +" + std::to_string(seg.len) +
                               ") is not in the checkpoint");
    adamw_.write(seg.shard_offset, seg.len, m.data(), v.data());
  }
}

}  // namespace moetron
