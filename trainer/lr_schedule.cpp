// LrSchedule::at and PiecewiseConstant::at (see lr_schedule.h): the learning rate, gamma and
// lambda as functions of the step or of the tokens consumed.
#include "trainer/lr_schedule.h"

#include <algorithm>
#include <cmath>
#include <numbers>
#include <stdexcept>

namespace moetron {

// values[i] holds for x < until[i]; from until[i] on (inclusive) the next value applies.
double PiecewiseConstant::at(double x) const {
  if (values.empty()) throw std::logic_error("PiecewiseConstant::at on an empty schedule");
  const size_t bounded = std::min(until.size(), values.size() - 1);
  for (size_t i = 0; i < bounded; ++i) {
    if (x < until[i]) return values[i];
  }
  return values[bounded];
}

// Warm-up is always counted in optimizer steps (0-based: step 0 already trains with
// peak / warmup_steps, the last warm-up step with peak). After warm-up, x is the step or the
// number of tokens consumed (`unit_tokens`), and the LR is: peak until constant_until, a half
// cosine from peak to min_lr between constant_until and decay_until, then the tails (or min_lr
// when there are none). decay_until == 0 means "no decay": constant peak after warm-up, for the
// whole run (validation then forbids tails, which would never apply).
double LrSchedule::at(int64_t step, double tokens, bool unit_tokens) const {
  if (step < warmup_steps) {
    return peak * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  }
  if (decay_until <= 0) return peak;
  const double x = unit_tokens ? tokens : static_cast<double>(step);
  if (x < constant_until) return peak;
  if (x < decay_until) {
    const double progress = (x - constant_until) / (decay_until - constant_until);
    return min_lr + 0.5 * (peak - min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
  }
  return tails.values.empty() ? min_lr : tails.at(x);
}

}  // namespace moetron
