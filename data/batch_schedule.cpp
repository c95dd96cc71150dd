// Batch-size schedule (see batch_schedule.h). consumed_before() steps through the ramp one step
// at a time (about 13K steps for the V3 ramp with 4K sequences) and jumps over the constant part
// in closed form.
#include "data/batch_schedule.h"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <string>

namespace moetron::data {

BatchSchedule::BatchSchedule(int64_t start, int64_t final, int64_t ramp_tokens, int64_t seq_len,
                             int64_t dp, int64_t micro_batch)
    : start_(start),
      final_(final),
      ramp_tokens_(ramp_tokens),
      seq_len_(seq_len),
      dp_(dp),
      micro_(micro_batch) {
  auto need = [](bool ok, const std::string& what) {
    if (!ok) throw std::invalid_argument("batch schedule: " + what);
  };
  need(start >= 1, "start batch must be >= 1, got " + std::to_string(start));
  need(final >= 1, "final batch must be >= 1, got " + std::to_string(final));
  need(ramp_tokens >= 0, "ramp_tokens must be >= 0, got " + std::to_string(ramp_tokens));
  need(seq_len >= 1, "seq_len must be >= 1, got " + std::to_string(seq_len));
  need(dp >= 1, "dp must be >= 1, got " + std::to_string(dp));
  need(micro_batch >= 1, "micro_batch must be >= 1, got " + std::to_string(micro_batch));
  need(dp <= std::numeric_limits<int64_t>::max() / micro_batch, "dp * micro_batch overflows");
}

int64_t BatchSchedule::round(int64_t b) const {
  const int64_t u = unit();
  return std::max(u, b / u * u);
}

int64_t BatchSchedule::batch_size_at(int64_t tokens_consumed) const {
  if (tokens_consumed < 0) {
    throw std::invalid_argument("batch schedule: tokens_consumed must be >= 0, got " +
                                std::to_string(tokens_consumed));
  }
  if (tokens_consumed >= ramp_tokens_) return round(final_);
  // start + (final - start) * t / ramp, truncated toward start
  const __int128 delta = static_cast<__int128>(final_ - start_) * tokens_consumed / ramp_tokens_;
  return round(start_ + static_cast<int64_t>(delta));
}

BatchSchedule::Consumed BatchSchedule::consumed_before(int64_t step) const {
  if (step < 0) {
    throw std::invalid_argument("batch schedule: step must be >= 0, got " + std::to_string(step));
  }
  Consumed c;
  int64_t s = 0;
  for (; s < step && c.tokens < ramp_tokens_; ++s) {
    const int64_t b = batch_size_at(c.tokens);
    c.samples += b;
    c.tokens += b * seq_len_;
  }
  if (s < step) {
    const __int128 samples = static_cast<__int128>(step - s) * round(final_) + c.samples;
    const __int128 tokens = samples * seq_len_;
    if (tokens > std::numeric_limits<int64_t>::max()) {
      throw std::invalid_argument("batch schedule: token count of step " + std::to_string(step) +
                                  " overflows int64");
    }
    c.samples = static_cast<int64_t>(samples);
    c.tokens = static_cast<int64_t>(tokens);
  }
  return c;
}

}  // namespace moetron::data
