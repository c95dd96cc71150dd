// Per-step metrics: one human-readable progress line on stdout and one JSON object per line in
// <run_dir>/metrics.jsonl (step, losses, lr, grad norm, tokens, throughput, expert imbalance;
// the validation loss on the steps that evaluate; model FLOPs per token (model/flops.h) and what
// follows from them per device: tokens/s, model TFLOP/s, device-hours per 10^12 tokens; with
// run.count_flops the GEMM FLOPs the ops executed and their rate per device).
#pragma once

#include <cmath>
#include <cstdint>
#include <fstream>
#include <string>
#include <utility>
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
  double ep_imbalance = 0;      // max rows of an EP rank / mean over EP ranks, averaged likewise
  double bias_update_speed = 0, mtp_weight = 0;
  double eta_seconds = 0;
  double flops_per_token = 0;  // model FLOPs of training, per token (model/flops.h)
  int64_t devices = 1;         // processes of the run (each drives one device)
  // dense peaks per device (hardware.*); 0 = unknown. MFU is model TFLOP/s over the BF16 peak,
  // and over the FP8 peak too when the recipe is fp8 (peak_fp8 is left 0 otherwise).
  double peak_bf16_tflops = 0, peak_fp8_tflops = 0;
  // GEMM FLOPs the ops executed in this step on all devices, recompute included, and the
  // recomputed part (kernels/flop_counter.h); NaN unless run.count_flops. executed - recompute is
  // the GEMM part of flops_per_token x the step's tokens, exactly.
  double gemm_flops = NAN, gemm_flops_recompute = NAN;
  // blocking device-to-host reads (stream drains) of the step's pipeline on all devices
  // (kernels/host_waits.h); NaN on the CPU device
  double host_waits = NAN;
  double tokens_per_s_per_device() const { return tokens_per_s / static_cast<double>(devices); }
  double model_tflops_per_device() const {
    return tokens_per_s_per_device() * flops_per_token / 1e12;
  }
  // model TFLOP/s per device over a peak; NaN when the peak is unknown (0)
  double mfu(double peak_tflops) const {
    return peak_tflops > 0 ? model_tflops_per_device() / peak_tflops : NAN;
  }
  // executed GEMM TFLOP/s per device: the GEMM part of hardware FLOPs (HFU's numerator without the
  // attention core and the element-wise work)
  double gemm_tflops_per_device() const {
    return gemm_flops / step_seconds / static_cast<double>(devices) / 1e12;
  }
  // what 10^12 tokens cost at this step's rate, in device-hours
  double device_hours_per_1e12_tokens() const { return 1e12 / tokens_per_s_per_device() / 3600; }
  // per rank: compute, communication waited for, pipeline idle (seconds), flattened [world*3]
  std::vector<double> rank_times;
  // per rank, named: where the step's time went (trainer/step_stats.h StepClock), written as
  // "<name>": [rank 0, rank 1, ...]
  std::vector<std::pair<std::string, std::vector<double>>> breakdown;
  int64_t max_nodes_per_token = 1;  // most nodes any token's experts were on (EP runs)
  double ep_rows_peak = 1;          // most expert rows an EP rank received in a dispatch / the mean
  double mem_peak_gib = 0;          // the most any rank's device allocator held in the step
  // the non-finite guard (train.cpp): bad steps so far in this process; of a bad step, that it
  // was skipped and the ranks whose own loss or gradients were NaN/Inf
  int64_t bad_steps = 0;
  bool skipped = false;
  std::vector<int> bad_ranks;
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
