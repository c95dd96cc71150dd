// Test-only fault injection: the hooks the reliability tests use to make a step go bad on purpose
// (issue #15), read from the environment so that no config key exists for them.
//
//   MOETRON_FAULT_NAN=WHAT:RANK:STEP[:COUNT]
//     WHAT   grad: the first gradient element of rank RANK's first trainable layer parameter is
//                  NaN when the backward starts (which accumulates onto it), so it reaches the
//                  ZeRO-1 reduce-scatter; loss: rank RANK's loss of the step becomes NaN
//     STEP   1-based step number (metrics.jsonl's "step"); COUNT consecutive steps (default 1)
//
//   MOETRON_FAULT_SLOW_SAVE=STEP:SECONDS
//     every rank sleeps SECONDS after writing its shard of step STEP's checkpoint (into
//     step_STEP.tmp), before the manifest: the window in which a test kills or signals a rank or
//     removes the directory while a save is in flight
//
// Unset (the normal case) nothing is injected. A malformed value is a ConfigError naming the
// variable.
#pragma once

#include <cstdint>
#include <optional>
#include <string>

namespace moetron {

struct NanFault {
  enum class What { Grad, Loss } what = What::Grad;
  int rank = 0;
  int64_t first = 0, count = 1;  // steps [first, first + count), 1-based
  // Whether rank `r` poisons `what` at 1-based step `step`.
  bool hits(What w, int r, int64_t step) const {
    return w == what && r == rank && step >= first && step < first + count;
  }
};

struct SlowSave {
  int64_t step = 0;
  double seconds = 0;
};

// Parses `text` (the variable's value); throws ConfigError naming MOETRON_FAULT_NAN.
NanFault parse_nan_fault(const std::string& text);
// MOETRON_FAULT_NAN from the environment (nullopt when unset or empty).
std::optional<NanFault> nan_fault_from_env();
// MOETRON_FAULT_SLOW_SAVE (nullopt when unset or empty); throws ConfigError naming it.
std::optional<SlowSave> slow_save_from_env();

}  // namespace moetron
