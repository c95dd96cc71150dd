// The sampler (see sampler.h): the Feistel permutation that shuffles a source's windows, the key
// of each (seed, source, epoch), and the blender that interleaves sources by weight.
//
// The blender is built once per dataset: the weights are checked and turned into per-block quotas
// (largest remainder, every source at least once), then the quotas into a stride-scheduled block
// layout (src_, rank_, pos_) that locate() and count_before() read in O(1) / O(log q).
#include "data/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <stdexcept>

#include "data/token_file.h"

namespace moetron::data {

namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

uint64_t splitmix64(uint64_t x) {
  x += kGolden;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The weights' sum; throws DataError on no weights, too many, or one not positive and finite.
double checked_weight_sum(const std::vector<double>& weights,
                          const std::vector<std::string>& names) {
  auto name = [&](size_t s) {
    return s < names.size() && !names[s].empty() ? names[s] : "source " + std::to_string(s);
  };
  if (weights.empty()) throw DataError("dataset: no sources");
  if (weights.size() > static_cast<size_t>(Blender::kBlock)) {
    throw DataError("dataset: more than " + std::to_string(Blender::kBlock) + " sources");
  }
  double sum = 0;
  for (size_t s = 0; s < weights.size(); ++s) {
    if (!(weights[s] > 0) || !std::isfinite(weights[s])) {
      throw DataError(name(s) + ": blending weight must be positive and finite, got " +
                      std::to_string(weights[s]));
    }
    sum += weights[s];
  }
  if (!std::isfinite(sum)) throw DataError("dataset: blending weights sum to infinity");
  return sum;
}

// q_s per block: floor(w_s * B) plus one for the largest remainders (ties: lower s), then every
// source at least once (taken from the largest quota, lowest index first).
std::vector<int64_t> block_quotas(const std::vector<double>& weights, double sum) {
  const size_t n = weights.size();
  std::vector<int64_t> quota(n, 0);
  std::vector<double> rem(n);
  int64_t total = 0;
  for (size_t s = 0; s < n; ++s) {
    const double ideal = weights[s] / sum * static_cast<double>(Blender::kBlock);  // exact * 2^16
    quota[s] = std::min<int64_t>(Blender::kBlock, static_cast<int64_t>(std::floor(ideal)));
    rem[s] = ideal - static_cast<double>(quota[s]);
    total += quota[s];
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return rem[a] > rem[b]; });
  // (the floors never add up to more than kBlock: their sum is an integer <= kBlock * (1 + eps))
  for (size_t i = 0; total < Blender::kBlock; i = (i + 1) % n, ++total) ++quota[order[i]];
  for (size_t s = 0; s < n; ++s) {
    if (quota[s] == 0) {
      --*std::max_element(quota.begin(), quota.end());
      quota[s] = 1;
    }
  }
  return quota;
}

// One block's samples in order, as (source, its j-th sample in the block): stride scheduling puts
// the j-th item of source s at (j + 1/2) / q_s of the block.
struct Item {
  uint32_t s, j;
};
std::vector<Item> stride_schedule(const std::vector<int64_t>& quota) {
  std::vector<Item> items;
  items.reserve(Blender::kBlock);
  for (size_t s = 0; s < quota.size(); ++s) {
    for (int64_t j = 0; j < quota[s]; ++j) {
      items.push_back({static_cast<uint32_t>(s), static_cast<uint32_t>(j)});
    }
  }
  std::sort(items.begin(), items.end(), [&](const Item& a, const Item& b) {
    // (2 a.j + 1) / q_a  <  (2 b.j + 1) / q_b, exactly (values < 2^17 * 2^16)
    const uint64_t lhs = (2 * uint64_t{a.j} + 1) * static_cast<uint64_t>(quota[b.s]);
    const uint64_t rhs = (2 * uint64_t{b.j} + 1) * static_cast<uint64_t>(quota[a.s]);
    return lhs != rhs ? lhs < rhs : a.s < b.s;
  });
  return items;
}

}  // namespace

// The permutation key of (seed, source, epoch).
uint64_t epoch_key(uint64_t seed, int source, int64_t epoch) {
  uint64_t k = splitmix64(seed);
  k = splitmix64(k ^ static_cast<uint64_t>(source));
  return splitmix64(k ^ static_cast<uint64_t>(epoch));
}

// ---------------------------------------------------------------- FeistelPermutation

FeistelPermutation::FeistelPermutation(uint64_t n, uint64_t key) : n_(n) {
  if (n_ <= 1) return;
  unsigned bits = 64 - static_cast<unsigned>(__builtin_clzll(n_ - 1));  // bits of n-1
  bits = std::max(bits, 2u);
  bits += bits & 1u;
  half_bits_ = bits / 2;
  mask_ = (uint64_t{1} << half_bits_) - 1;
  for (int r = 0; r < kRounds; ++r) {
    keys_[r] = splitmix64(key ^ (static_cast<uint64_t>(r + 1) * 0xD1B54A32D192ED03ull));
  }
}

uint64_t FeistelPermutation::encrypt(uint64_t x) const {
  uint64_t l = x >> half_bits_, r = x & mask_;
  for (int i = 0; i < kRounds; ++i) {
    const uint64_t f = splitmix64(r ^ keys_[i]) & mask_;
    const uint64_t nl = r;
    r = l ^ f;
    l = nl;
  }
  return (l << half_bits_) | r;
}

uint64_t FeistelPermutation::operator()(uint64_t i) const {
  // (outside [0, n) the walk could cycle among values >= n forever)
  if (i >= n_ && n_ > 0) {
    throw std::invalid_argument("FeistelPermutation: index " + std::to_string(i) + " not below " +
                                std::to_string(n_));
  }
  if (n_ <= 1) return i;
  uint64_t y = encrypt(i);
  while (y >= n_) y = encrypt(y);  // cycle-walking: stays a bijection of [0, n)
  return y;
}

// ---------------------------------------------------------------- Blender

Blender::Blender(const std::vector<double>& weights, const std::vector<std::string>& names) {
  quota_ = block_quotas(weights, checked_weight_sum(weights, names));
  const std::vector<Item> items = stride_schedule(quota_);
  src_.resize(kBlock);
  rank_.resize(kBlock);
  pos_.assign(quota_.size(), {});
  for (size_t p = 0; p < items.size(); ++p) {
    src_[p] = static_cast<uint16_t>(items[p].s);
    rank_[p] = items[p].j;
    pos_[items[p].s].push_back(static_cast<uint32_t>(p));
  }
}

std::pair<int, int64_t> Blender::locate(int64_t i) const {
  if (i < 0) {
    throw std::invalid_argument("Blender: sample index must be >= 0, got " + std::to_string(i));
  }
  const int64_t block = i / kBlock, p = i % kBlock;
  const int s = src_[static_cast<size_t>(p)];
  return {s, block * quota_[s] + rank_[static_cast<size_t>(p)]};
}

int64_t Blender::count_before(int s, int64_t i) const {
  if (i < 0 || s < 0 || s >= n_sources()) {
    throw std::invalid_argument("Blender: bad count_before(" + std::to_string(s) + ", " +
                                std::to_string(i) + ")");
  }
  const int64_t block = i / kBlock, p = i % kBlock;
  const auto& pos = pos_[static_cast<size_t>(s)];
  const int64_t in_block =
      std::lower_bound(pos.begin(), pos.end(), static_cast<uint32_t>(p)) - pos.begin();
  return block * quota_[static_cast<size_t>(s)] + in_block;
}

}  // namespace moetron::data
