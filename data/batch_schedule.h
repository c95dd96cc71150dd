// Batch-size schedule: the DeepSeek-V3 ramp of the global batch (SPEC §2: 3072 -> 15360
// sequences over the first 469B tokens, then constant; the ramp's shape is unspecified, linear
// here).
//
// batch_size_at(tokens) = round_down(start + (final - start) * tokens / ramp_tokens) while
// tokens < ramp_tokens, round_down(final) after, where round_down rounds down to a multiple of
// unit = dp * micro_batch_size and never below unit (every DP rank gets whole micro-batches).
// `tokens` counts the tokens consumed before the step, = samples consumed * seq_len (a sample is
// seq_len inputs + 1 target; the extra target token is not counted, as in tokens/s). The step
// that starts at a token count uses the batch size at that count. consumed_before(step)
// replays the schedule, so a resumed run can check (or rebuild) the sampler's state from the
// step number alone. All arithmetic is 64-bit integer (128-bit for the interpolation).
#pragma once

#include <cstdint>

namespace moetron::data {

class BatchSchedule {
 public:
  // Ramp from `start` to `final` sequences over `ramp_tokens` tokens (ramp_tokens = 0: constant
  // `final`). Throws std::invalid_argument unless start, final, seq_len, dp, micro_batch >= 1 and
  // ramp_tokens >= 0.
  BatchSchedule(int64_t start, int64_t final, int64_t ramp_tokens, int64_t seq_len, int64_t dp,
                int64_t micro_batch);
  static BatchSchedule constant(int64_t global_batch, int64_t seq_len, int64_t dp,
                                int64_t micro_batch) {
    return BatchSchedule(global_batch, global_batch, 0, seq_len, dp, micro_batch);
  }

  // Global batch (sequences, over all DP ranks) of the step that starts after `tokens_consumed`.
  int64_t batch_size_at(int64_t tokens_consumed) const;

  struct Consumed {
    int64_t samples = 0;
    int64_t tokens = 0;
  };
  // Samples and tokens consumed by steps [0, step): the sampler state at the start of `step`.
  Consumed consumed_before(int64_t step) const;

  int64_t seq_len() const { return seq_len_; }
  int64_t dp() const { return dp_; }
  int64_t micro_batch() const { return micro_; }
  int64_t unit() const { return dp_ * micro_; }  // the granularity of every batch size
  int64_t ramp_tokens() const { return ramp_tokens_; }

 private:
  int64_t round(int64_t b) const;

  int64_t start_, final_, ramp_tokens_, seq_len_, dp_, micro_;
};

}  // namespace moetron::data
