// WindowSampler: the minimal deterministic, resumable sampler of training windows.
//
// Sample `index` (the global 0-based sample counter of a run) is the seq_len+1 tokens starting
// at an offset that depends only on (seed, index) through a fixed 64-bit mix (splitmix64), so
// the same run sees the same windows on any machine, and resuming needs nothing but the
// counter. Windows ignore document boundaries (documents end with EOS). The full sampler
// (blending, packing, epochs without repeats) replaces this in a later issue.
#pragma once

#include <cstdint>

#include "data/token_file.h"

namespace moetron::data {

class WindowSampler {
 public:
  // Keeps a reference to `file`, which must outlive the sampler. Throws DataError if seq_len < 1
  // or the file has fewer than seq_len + 1 tokens, or if its vocab does not fit int32 ids.
  WindowSampler(const TokenFile& file, int64_t seq_len, uint64_t seed);

  int64_t seq_len() const { return seq_len_; }
  uint64_t seed() const { return seed_; }
  // First token of sample `index`: in [0, n_tokens - seq_len - 1].
  int64_t offset(int64_t index) const;
  // Writes the seq_len + 1 token ids of sample `index` (inputs = out[0, seq_len), targets =
  // out[1, seq_len]) into out. Thread-safe (reads are serialised inside TokenFile).
  void sample(int64_t index, int32_t* out) const;

 private:
  const TokenFile& file_;
  int64_t seq_len_;
  uint64_t seed_;
  uint64_t n_starts_;  // number of valid window starts: n_tokens - seq_len
};

}  // namespace moetron::data
