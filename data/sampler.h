// The two stateless pieces of the global sample order (data/dataset.h, "Global order"): which
// source a sample comes from (Blender) and which window of that source (FeistelPermutation, keyed
// by epoch_key). Both are pure functions of their arguments, O(1) per sample, never materialised,
// so the sampler's whole state is the run's sample counter and seed.
//
// Determinism: every number that decides a sample is integer arithmetic with fixed widths
// (splitmix64 mixing, Feistel rounds, block positions), except the blend quotas, which come from
// the weights through one division and a multiplication by kBlock = 2^16 (exact, so FMA
// contraction cannot change them).
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace moetron::data {

// A keyed pseudo-random bijection of [0, n): a balanced Feistel network over the smallest even
// number of bits covering n (6 rounds, splitmix64-based round function), with cycle-walking
// (re-encrypt while the value is >= n; expected < 4 rounds of walking). n = 0 or 1: identity.
class FeistelPermutation {
 public:
  FeistelPermutation(uint64_t n, uint64_t key);
  uint64_t operator()(uint64_t i) const;  // i < n, else std::invalid_argument
  uint64_t size() const { return n_; }

 private:
  static constexpr int kRounds = 6;
  uint64_t encrypt(uint64_t x) const;

  uint64_t n_;
  unsigned half_bits_ = 0;
  uint64_t mask_ = 0;
  uint64_t keys_[kRounds] = {};
};

// The permutation key of (seed, source, epoch): each epoch of each source is shuffled anew.
uint64_t epoch_key(uint64_t seed, int source, int64_t epoch);

// Stateless weighted interleaving of sources (step 1 of the global order): each block of kBlock
// consecutive samples holds q_s samples of source s (weight_s * kBlock by largest remainder, at
// least 1), spread through the block evenly (stride scheduling).
class Blender {
 public:
  static constexpr int64_t kBlock = 65536;
  // Throws DataError if weights is empty, has more than kBlock entries, or a weight is not
  // positive and finite (the message names the source: names[s] if given, else "source s").
  explicit Blender(const std::vector<double>& weights, const std::vector<std::string>& names = {});
  // Global sample i -> (source, that source's sample counter k).
  std::pair<int, int64_t> locate(int64_t i) const;
  // Samples of source s among the first i global samples (exact).
  int64_t count_before(int s, int64_t i) const;
  int n_sources() const { return static_cast<int>(quota_.size()); }
  double effective_weight(int s) const { return static_cast<double>(quota_[s]) / kBlock; }

 private:
  std::vector<int64_t> quota_;  // q_s per block; sums to kBlock
  std::vector<uint16_t> src_;   // [kBlock]: source of each position in a block
  std::vector<uint32_t> rank_;  // [kBlock]: how many of that source precede it in the block
  std::vector<std::vector<uint32_t>> pos_;  // per source: its positions in a block, increasing
};

}  // namespace moetron::data
