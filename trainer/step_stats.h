// What a training step reports, and where its time went — kept beside the algorithm (train.cpp's
// train_step), not between its lines.
//
// StepStats: the step's losses and expert imbalance as sums over this rank's part, reduced over
// every rank in one all-reduce; means come from dividing by the global batch's micro-batches.
// StepClock: wall time of the step's phases on this rank and, per rank, where the time went:
//   compute_s          in compute ops, expert-exchange waits excluded
//   ep_wait_pair_s     blocked in expert-exchange waits inside DualPipe's overlapped pairs
//   ep_wait_single_s   ... inside every other compute op
//   ep_inflight_s      expert exchanges in flight (sum over exchanges of completion - post)
//   pp_idle_s          blocked on pipeline messages
//   bubble_pred_s      the pipeline idle simulate() predicts for this rank from the step's
//                      measured op costs (this rank's mean F, B, W, F&B for every rank): what the
//                      schedule itself costs; pp_idle_s beyond it is latency or imbalance
//   dp_comm_s          ZeRO-1 reduce-scatter and all-gather
//   optimizer_s        the optimizer step less dp_comm_s (norm, AdamW, the tied embedding)
//   other_s            the rest of the step (data, loads, bias update, bookkeeping, and the
//                      wait for the slowest rank at the step's end)
// All but ep_inflight_s and bubble_pred_s add up to the step. And this rank's mean op costs
// (what bubble_pred_s replays): op_F_s, op_B_s (a full backward, or input + weight parts),
// op_W_s, op_FB_s (an overlapped pair; 0 where none ran). Not a time: dp_early, the share of
// this rank's DP-reduced gradient elements whose reduce-scatter started during the backward
// (optimizer.overlap_grad_reduce; dp_comm_s is then only what the backward did not hide);
// mem_peak_gib and mem_live_gib, the most the run device's allocator held during the step and
// what it holds at its end, GiB: every buffer the trainer makes on the device (parameters,
// gradients, optimizer state, weight copies, activations, scratch, messages) — what `moetron
// plan` counts ahead, per pipeline rank, without the allocator's own rounding; mem_reserved_gib,
// the most it held from the device, a caching allocator's kept blocks included (on a GPU the
// stream-ordered pool's high mark; on the CPU, which keeps nothing, mem_peak_gib).
#pragma once

#include <chrono>
#include <cstdint>
#include <vector>

#include "kernels/device.h"
#include "parallel/comm.h"
#include "parallel/ep_dispatch.h"
#include "parallel/pipeline.h"
#include "trainer/optimizer.h"

namespace moetron {

struct StepStats {
  // sums over this rank's micro-batches (stages add their parts: the last stage holds the LM and
  // MTP losses, every stage its MoE layers' balance losses)
  double loss = 0, lm = 0, mtp = 0, balance = 0;
  // max load / mean load over experts, and over EP ranks, summed over this rank's MoE layers,
  // and their count: on DP rank 0 only (the other DP ranks hold the same layers and the same
  // all-reduced loads)
  double imbalance = 0, ep_imbalance = 0, moe_layers = 0;
  // GEMM FLOPs this rank's ops executed in the step's pipeline, and the recomputed part of them
  // (kernels/flop_counter.h); 0 unless run.count_flops
  double gemm_executed = 0, gemm_recompute = 0;
  // blocking device-to-host reads this rank's ops made in the step's pipeline (forward and
  // backward of every micro-batch): the stream drains of kernels/host_waits.h; 0 on the CPU
  double host_waits = 0;

  // Every field summed over all ranks of `world`, in one all-reduce.
  void reduce(Communicator& world);
};

class StepClock {
 public:
  using Clock = std::chrono::steady_clock;
  // A step starts where the previous one ended (its gather: the same instant on every rank), so
  // every rank's fields describe the same span and what happens between two steps' accounting
  // (metrics, samples) is the next step's.
  // The run device's allocator starts counting the step's peak here.
  void start(Clock::time_point previous_end, Device device) {
    t0_ = previous_end, device_ = device;
    allocator(device).reset_peak();
  }
  Clock::time_point begin() const { return t0_; }
  Clock::time_point end() const { return end_; }
  // After the pipeline: its time split and op costs, and the EP exchanges' time in flight.
  void pipeline_done(const PipelineExecutor<float>& pipeline, EpDispatcher<float>* ep);
  void optimizer_done() { t_opt_ = Clock::now(); }
  // At the end of the step, on every rank (collective): the step ends when the slowest rank is
  // done; `excluded` seconds (the validation pass) are not the step's. Fills the per-rank fields
  // and the most nodes any token's experts were on.
  void gather(Communicator& world, Optimizer& opt, double excluded);
  double step_seconds() const { return step_seconds_; }

  std::vector<double> rank_times;  // [world, 3]: compute, communication, idle
  // [field][world]: the fields above, in kBreakdownFields' order
  static constexpr const char* kBreakdownFields[] = {
      "compute_s",     "ep_wait_pair_s",  "ep_wait_single_s", "ep_inflight_s", "pp_idle_s",
      "bubble_pred_s", "dp_comm_s",       "optimizer_s",      "other_s",       "op_F_s",
      "op_B_s",        "op_W_s",          "op_FB_s",          "dp_early",      "mem_peak_gib",
      "mem_live_gib",  "mem_reserved_gib"};
  std::vector<std::vector<double>> breakdown;
  int64_t max_nodes_per_token = 1;
  // the most expert rows any EP rank received in one dispatch of the step (or of the validation
  // pass before it) over the mean: what `moetron plan --ep-imbalance` counts (1 at EP 1)
  double ep_rows_peak = 1;

 private:
  Clock::time_point t0_, t_pipe_, t_opt_, end_;
  Device device_ = Device::CPU;
  ExecStats pipe_;
  double bubble_pred_ = 0, ep_inflight_ = 0, step_seconds_ = 0;
};

}  // namespace moetron
