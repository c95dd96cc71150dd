// The training loop: what one `moetron train` does, from a validated Config to metrics.
#pragma once

#include <iosfwd>
#include <vector>

#include "trainer/config.h"

namespace moetron {

struct TrainSummary {
  std::vector<double> losses;  // per step
  double seconds = 0;
  int64_t tokens = 0;
};

// Validates everything that can be checked before writing (data files, layout against the
// process count), then creates run.dir and trains. Throws on any error; nothing is written
// before the checks pass. Progress lines go to `log`.
// resume: "" (fresh), "auto" (the newest complete checkpoint in run.dir, or fresh if none) or a
// checkpoint directory. SIGINT/SIGTERM finish the current step, save a checkpoint (if
// run.save_interval > 0) and return.
TrainSummary train(const Config& cfg, std::ostream& log, const std::string& resume = "");

// Intra-op threads for this process: cfg.run.threads, or (0) the machine's cores divided by the
// processes that share it.
int resolve_threads(const RunConfig& run);

}  // namespace moetron
