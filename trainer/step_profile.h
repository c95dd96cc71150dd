// run.profile_steps in the training loop: the op profile (kernels/op_profile.h) is on from the
// start of each profiled step to its end (its validation excepted: validation_loss pauses it),
// and after the last of them (or when the run stops before it) every rank writes its totals to
// <run.dir>/op_profile/rank_<R>.tsv and rank 0 logs its slowest ops:
//
//   moetron: op profile of 2 step(s), rank 0 (cuda): ops ran 1.734 s of the steps' 1.902 s (91.2%)
//   moetron:   op                            calls        ms   share   ms/call  TFLOP/s
//   moetron:   grouped_fp8_fprop               384    612.40   32.2%     1.595    803.1
//
// "share" is of the profiled steps' time (metrics.jsonl's step_seconds, summed). On a GPU the ops'
// sum against the steps' time is how busy the compute stream was: the rest is the GPU waiting for
// the host (launches, host waits), for communication, or for the pipeline.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <string>
#include <vector>

#include "kernels/op_profile.h"

namespace moetron {

struct Run;

class StepProfile {
 public:
  // How many ops rank 0 logs (the file has them all).
  static constexpr size_t kLogged = 15;

  explicit StepProfile(const Run& r);
  // Around step `step` (1-based): the profile on when it is profiled; off again, with the step's
  // time (StepClock::step_seconds) added to the steps' total.
  void begin(int64_t step);
  void end(int64_t step, double step_seconds);
  // Whether the totals are due after step `step`: the last profiled step is done, or the run ends
  // (`last`) with profiled steps run. The same on every rank.
  bool due(int64_t step, bool last) const;
  // Writes this rank's file and (rank 0) the table on `log`. Not collective.
  void write(const Run& r, std::ostream& log);

  // The table of `rows` against `step_seconds` of steps (what write() logs; tests read it).
  static std::string table(const std::vector<kernels::op_profile::Row>& rows, double step_seconds,
                           size_t max_rows);
  // The file: a header and one tab-separated line per op, all of them.
  static std::string tsv(const std::vector<kernels::op_profile::Row>& rows, double step_seconds);

 private:
  bool profiled(int64_t step) const;
  const std::vector<int64_t>& steps_;
  int64_t first_ = 0;  // the first step this run profiles, 0 = none
  int64_t done_ = 0;   // profiled steps run
  double seconds_ = 0;
  bool written_ = false;
};

}  // namespace moetron
