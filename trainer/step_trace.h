// run.trace_steps in the training loop: for which steps the trace recorder (parallel/trace.h) is
// on, each traced step's slice, and the one merged file <run.dir>/trace.json after the last of
// them (or when the run stops before it).
//
// A step's window is StepClock's: from the previous step's end (its gather) to its own, so the
// recorder goes on right after the gather of the step before a traced one (the previous step's
// accounting and metrics are the traced step's time, as in metrics.jsonl) and off after the
// traced step's gather. Validation inside a traced step is one host slice: the recorder is off
// inside it (it is not the step's time in metrics.jsonl either: the step slice's eval_us says how
// much of it to leave out). Writing the file is outside every step's time.
#pragma once

#include <cstdint>
#include <iosfwd>

#include "trainer/step_stats.h"

namespace moetron {

struct Run;

class StepTrace {
 public:
  // Events a rank can hold (about 72 bytes each); more are counted as dropped.
  static constexpr size_t kCapacity = size_t{1} << 18;

  // Reserves the recorder when run.trace_steps names a step after r.state.step, and turns it on
  // when the first step to run is one.
  explicit StepTrace(const Run& r);
  // After step `step` (1-based)'s gather: its step slice (when traced; eval_seconds of validation
  // in it), then the recorder on or off for step + 1 (with the slice of this step's accounting
  // after the gather when on).
  void step_done(int64_t step, const StepClock& clock, double eval_seconds);
  // Whether the file is due after step `step`: the last traced step is done, or the run ends
  // (`last`) with traced steps recorded. The same on every rank.
  bool due(int64_t step, bool last) const;
  // Collective: writes <run.dir>/trace.json (rank 0) and says so on `log`.
  void write(Run& r, std::ostream& log);

 private:
  bool traced(int64_t step) const;
  const std::vector<int64_t>& steps_;
  int64_t first_ = 0;  // the first step this run traces, 0 = none
  bool written_ = false;
};

}  // namespace moetron
