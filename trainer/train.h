// The training loop: what one `moetron train` does, from a validated Config to metrics.
#pragma once

#include <iosfwd>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/dataset.h"
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
// A step whose loss or gradient norm is NaN/Inf on any rank changes nothing (trainer/train.cpp);
// run.max_bad_steps of them in a row throw TrainingHalted on every rank, without a save.
TrainSummary train(const Config& cfg, std::ostream& log, const std::string& resume = "");

// The run stopped itself: run.max_bad_steps consecutive steps were not finite. Thrown on every
// rank at the same step (like an input error, no rank is left waiting).
struct TrainingHalted : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// The data of `setting` (data.train_path or data.valid_path, named `key` in messages) as a
// Dataset: samples of data.seq_len + 1 tokens in the seeded order (shuffle) or in stream order.
// Every shard is checked now, identically on every rank: it exists and is intact, it was written
// by data.tokenizer (when set; else all shards agree on one tokenizer), its vocabulary fits the
// model, each source holds at least one sample. Throws data::DataError naming the file.
std::unique_ptr<data::Dataset> open_dataset(const Config& cfg, const std::string& setting,
                                            const std::string& key, bool shuffle);

// Intra-op threads for this process: cfg.run.threads, or (0) the machine's cores divided by the
// processes that share it.
int resolve_threads(const RunConfig& run);

}  // namespace moetron
