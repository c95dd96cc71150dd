// The step-dependent hyper-parameters of a run (config section `schedule`): the learning rate
// (LrSchedule: DeepSeek-V3's warm-up, constant, cosine, tails shape), the bias-update speed gamma
// and the MTP loss weight lambda (piecewise-constant). Their own files because they are math the
// training loop evaluates every step, not configuration machinery; trainer/config.cpp only
// reads and validates them.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "kernels/enum_words.h"

namespace moetron {

// A piecewise-constant schedule: value i holds until `until[i]` (in the schedule's unit);
// the last entry has no bound.
struct PiecewiseConstant {
  std::vector<double> until;  // size = values.size() - 1
  std::vector<double> values;
  double at(double x) const;
};

// The DeepSeek-V3 LR shape: linear warm-up (steps), constant, cosine decay to `min_lr`, then
// constant tails.
struct LrSchedule {
  double peak = 3e-3;
  int64_t warmup_steps = 20;
  double constant_until = 0;  // in `unit`; cosine decay starts here
  double decay_until = 0;     // cosine reaches min_lr here; 0 = no decay (peak after warm-up)
  double min_lr = 3e-4;
  PiecewiseConstant tails;  // after decay_until (empty: stay at min_lr)
  double at(int64_t step, double tokens, bool unit_tokens) const;
};

// What every `until` counts: optimizer steps or tokens consumed.
enum class ScheduleUnit { Steps, Tokens };
inline constexpr EnumWord<ScheduleUnit> kScheduleUnitWords[] = {{ScheduleUnit::Steps, "steps"},
                                                                {ScheduleUnit::Tokens, "tokens"}};
constexpr auto enum_words(ScheduleUnit) { return std::span(kScheduleUnitWords); }

struct ScheduleConfig {
  ScheduleUnit unit = ScheduleUnit::Steps;  // the unit of every `until` below
  LrSchedule lr;
  PiecewiseConstant bias_update_speed{{}, {1e-3}};  // gamma
  PiecewiseConstant mtp_weight{{}, {0.3}};          // lambda
  bool tokens() const { return unit == ScheduleUnit::Tokens; }
};

}  // namespace moetron
