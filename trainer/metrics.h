// Per-step metrics: one human-readable progress line on stdout and one JSON object per line in
// <run_dir>/metrics.jsonl (step, losses, lr, grad norm, tokens, throughput, expert imbalance;
// the validation loss on the steps that evaluate).
#pragma once

#include <cmath>
#include <cstdint>
#include <fstream>
#include <string>
#include <vector>

namespace moetron {

struct StepMetrics {
  int64_t step = 0, total_steps = 0;  // step is 1-based
  double loss = 0, lm_loss = 0, mtp_loss = 0, balance_loss = 0;
  double lr = 0, grad_norm = 0;
  int64_t tokens = 0;        // consumed so far (all ranks)
  int64_t global_batch = 0;  // sequences in this step (the batch-size schedule's value)
  double valid_loss = NAN;   // next-token loss on the validation set; NaN: not evaluated
  double tokens_per_s = 0;   // this step
  double step_seconds = 0;
  double expert_imbalance = 0;  // max load / mean load, averaged over MoE layers
  double bias_update_speed = 0, mtp_weight = 0;
  double eta_seconds = 0;
  // per rank: compute, communication waited for, pipeline idle (seconds), flattened [world*3]
  std::vector<double> rank_times;
  int64_t max_nodes_per_token = 1;  // most nodes any token's experts were on (EP runs)
};

class MetricsLog {
 public:
  // Opens (appends to) run_dir/metrics.jsonl. Throws std::runtime_error naming the file.
  explicit MetricsLog(const std::string& run_dir);
  void write(const StepMetrics& m);  // JSON line, flushed
  static std::string progress_line(const StepMetrics& m);

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace moetron
