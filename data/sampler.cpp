// WindowSampler (see sampler.h): offset(index) = splitmix64(seed ^ index * golden) mod
// (n_tokens - seq_len). Only integer arithmetic with fixed widths, so the sequence of windows
// is the same on every platform and compiler. The modulo bias is below n_tokens / 2^64.
#include "data/sampler.h"

#include <limits>
#include <string>

namespace moetron::data {

namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

uint64_t splitmix64(uint64_t x) {
  x += kGolden;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

}  // namespace

WindowSampler::WindowSampler(const TokenFile& file, int64_t seq_len, uint64_t seed)
    : file_(file), seq_len_(seq_len), seed_(seed), n_starts_(0) {
  const int64_t n = file.info().n_tokens;
  if (seq_len < 1) {
    throw DataError(file.path() + ": seq_len must be at least 1, got " + std::to_string(seq_len));
  }
  if (n < 1 || seq_len > n - 1) {
    throw DataError(file.path() + ": has " + std::to_string(n) +
                    " tokens, fewer than seq_len+1 = " + std::to_string(seq_len) + "+1");
  }
  if (file.info().vocab_size > int64_t{std::numeric_limits<int32_t>::max()} + 1) {
    throw DataError(file.path() + ": vocab_size " + std::to_string(file.info().vocab_size) +
                    " does not fit int32 token ids");
  }
  n_starts_ = static_cast<uint64_t>(n - seq_len);
}

int64_t WindowSampler::offset(int64_t index) const {
  if (index < 0) {
    throw DataError(file_.path() + ": sample index must be >= 0, got " + std::to_string(index));
  }
  const uint64_t mixed = splitmix64(seed_ ^ (static_cast<uint64_t>(index) * kGolden));
  return static_cast<int64_t>(mixed % n_starts_);
}

void WindowSampler::sample(int64_t index, int32_t* out) const {
  // int32 and uint32 may alias; every id is below vocab_size <= 2^31, so it reads back as a
  // non-negative int32.
  file_.read(offset(index), seq_len_ + 1, reinterpret_cast<uint32_t*>(out));
}

}  // namespace moetron::data
