// LrSchedule::at and PiecewiseConstant::at: the LR shape at every phase boundary, in steps and in
// tokens, and the boundary convention of piecewise schedules (a value holds up to, not including,
// its `until`).
#include <gtest/gtest.h>

#include <cmath>
#include <numbers>
#include <stdexcept>

#include "trainer/config.h"

namespace moetron {
namespace {

constexpr double kPeak = 1e-3, kMin = 1e-4;

LrSchedule schedule() {
  LrSchedule s;
  s.peak = kPeak;
  s.warmup_steps = 10;
  s.constant_until = 100;
  s.decay_until = 200;
  s.min_lr = kMin;
  s.tails = {{300}, {5e-5, 1e-5}};
  return s;
}

double cosine(double progress) {
  return kMin + 0.5 * (kPeak - kMin) * (1 + std::cos(std::numbers::pi * progress));
}

TEST(LrSchedule, WarmUpIsLinearAndZeroBased) {
  const LrSchedule s = schedule();
  EXPECT_DOUBLE_EQ(s.at(0, 0, false), kPeak / 10);
  EXPECT_DOUBLE_EQ(s.at(4, 0, false), kPeak * 5 / 10);
  EXPECT_DOUBLE_EQ(s.at(9, 0, false), kPeak);
}

TEST(LrSchedule, ConstantThenCosineThenTailsInSteps) {
  const LrSchedule s = schedule();
  EXPECT_DOUBLE_EQ(s.at(10, 0, false), kPeak);
  EXPECT_DOUBLE_EQ(s.at(99, 0, false), kPeak);
  EXPECT_DOUBLE_EQ(s.at(100, 0, false), kPeak);  // cosine starts at peak
  EXPECT_DOUBLE_EQ(s.at(150, 0, false), (kPeak + kMin) / 2);
  EXPECT_DOUBLE_EQ(s.at(175, 0, false), cosine(0.75));
  EXPECT_DOUBLE_EQ(s.at(199, 0, false), cosine(0.99));
  EXPECT_GT(s.at(199, 0, false), kMin);
  EXPECT_DOUBLE_EQ(s.at(200, 0, false), 5e-5);  // first tail
  EXPECT_DOUBLE_EQ(s.at(299, 0, false), 5e-5);
  EXPECT_DOUBLE_EQ(s.at(300, 0, false), 1e-5);  // last tail, to the end
  EXPECT_DOUBLE_EQ(s.at(1000000, 0, false), 1e-5);
}

TEST(LrSchedule, EndsAtMinLrWithoutTails) {
  LrSchedule s = schedule();
  s.tails = {};
  EXPECT_DOUBLE_EQ(s.at(200, 0, false), kMin);
  EXPECT_DOUBLE_EQ(s.at(5000, 0, false), kMin);
}

TEST(LrSchedule, TokensUnitUsesTokensAfterWarmUp) {
  LrSchedule s = schedule();
  s.constant_until = 1e6;
  s.decay_until = 2e6;
  s.tails = {{3e6}, {5e-5, 1e-5}};
  // Warm-up is counted in steps whatever the token count.
  EXPECT_DOUBLE_EQ(s.at(0, 5e6, true), kPeak / 10);
  EXPECT_DOUBLE_EQ(s.at(9, 5e6, true), kPeak);
  // After warm-up the step number no longer matters.
  EXPECT_DOUBLE_EQ(s.at(10, 0, true), kPeak);
  EXPECT_DOUBLE_EQ(s.at(5000, 999999, true), kPeak);
  EXPECT_DOUBLE_EQ(s.at(11, 1.5e6, true), (kPeak + kMin) / 2);
  EXPECT_DOUBLE_EQ(s.at(12, 1.25e6, true), cosine(0.25));
  EXPECT_DOUBLE_EQ(s.at(13, 2e6, true), 5e-5);
  EXPECT_DOUBLE_EQ(s.at(14, 3e6, true), 1e-5);
}

TEST(LrSchedule, NoDecayMeansConstantPeak) {
  LrSchedule s = schedule();
  s.constant_until = 0;
  s.decay_until = 0;
  s.tails = {};
  EXPECT_DOUBLE_EQ(s.at(0, 0, false), kPeak / 10);
  EXPECT_DOUBLE_EQ(s.at(10, 0, false), kPeak);
  EXPECT_DOUBLE_EQ(s.at(1000000, 1e15, true), kPeak);
}

TEST(LrSchedule, NoWarmUpStartsAtPeak) {
  LrSchedule s = schedule();
  s.warmup_steps = 0;
  EXPECT_DOUBLE_EQ(s.at(0, 0, false), kPeak);
}

TEST(LrSchedule, StepDecayWhenConstantEqualsDecay) {
  LrSchedule s = schedule();
  s.decay_until = s.constant_until;
  s.tails = {};
  EXPECT_DOUBLE_EQ(s.at(99, 0, false), kPeak);
  EXPECT_DOUBLE_EQ(s.at(100, 0, false), kMin);
}

TEST(PiecewiseConstant, ValueHoldsUpToItsBound) {
  const PiecewiseConstant p{{10, 20}, {1, 2, 3}};
  EXPECT_EQ(p.at(0), 1);
  EXPECT_EQ(p.at(9.999), 1);
  EXPECT_EQ(p.at(10), 2);
  EXPECT_EQ(p.at(19.5), 2);
  EXPECT_EQ(p.at(20), 3);
  EXPECT_EQ(p.at(1e18), 3);
}

TEST(PiecewiseConstant, SingleValueIsConstant) {
  const PiecewiseConstant p{{}, {0.3}};
  EXPECT_EQ(p.at(0), 0.3);
  EXPECT_EQ(p.at(1e15), 0.3);
}

TEST(PiecewiseConstant, DefaultsOfTheSchedule) {
  const ScheduleConfig s;
  EXPECT_EQ(s.bias_update_speed.at(123), 1e-3);
  EXPECT_EQ(s.mtp_weight.at(123), 0.3);
}

TEST(PiecewiseConstant, EmptyIsAProgrammingError) {
  EXPECT_THROW(PiecewiseConstant{}.at(0), std::logic_error);
}

}  // namespace
}  // namespace moetron
