// The training loop (torchtitan style: reads like the method). One process or many: the same
// loop runs on every rank of the grid world = PP x DP (EP inside DP).
//
//   for each step:
//     the loader hands this DP rank its share of the step's samples (global batch from the
//       batch-size schedule; data/loader.h)
//     the pipeline schedule runs this rank's micro-batches: forward (losses, expert loads) and
//       backward (gradients accumulate, scaled by 1 / micro-batches in the global batch)
//     the embedding's two copies (first stage, MTP on the last) sum their gradients
//     lr, gamma, lambda from their schedules at this step / token count
//     ZeRO-1: reduce-scatter gradients (dense over DP, experts over EDP), global gradient norm
//     non-finite guard: a NaN/Inf loss on any rank makes the norm NaN on every rank; a step
//       whose norm is not finite is skipped everywhere (no AdamW, no all-gather, no bias update:
//       weights, moments and expert bias stay as they were), logged with the ranks that saw it;
//       run.max_bad_steps consecutive ones stop the run (TrainingHalted, no save)
//     global-norm clip, AdamW on this rank's shard, all-gather the parameters
//     auxiliary-loss-free bias update from the step's expert loads (summed over DP)
//     every run.eval_interval steps: the validation loss (forward passes only)
//     every run.sample_interval steps: a greedy text sample (trainer/generate.h)
//     metrics line + metrics.jsonl (rank 0)
//   all along: the hang watchdog (parallel/watchdog.h; run.comm_timeout_s) is told the step and
//     phase, and aborts the job when a communication wait outlasts the timeout
#include "trainer/train.h"

#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "kernels/flop_counter.h"
#include "kernels/host_waits.h"
#include "kernels/ops.h"
#include "parallel/trace.h"
#include "parallel/watchdog.h"
#include "trainer/expert_balance.h"
#include "trainer/fault_inject.h"
#include "trainer/param_file.h"
#include "trainer/run.h"
#include "trainer/step_profile.h"
#include "trainer/step_stats.h"
#include "trainer/step_trace.h"

namespace moetron {

namespace {

volatile std::sig_atomic_t g_stop = 0;
// The first SIGINT/SIGTERM asks for a stop after the step (with a save); a second one exits at
// once (only async-signal-safe calls): a save in flight stays a step_N.tmp that is never loaded.
extern "C" void on_stop_signal(int sig) {
  if (g_stop) {
    static const char msg[] =
        "moetron: second stop signal: exiting now without a checkpoint (a save in flight is "
        "left as step_N.tmp and never loaded)\n";
    [[maybe_unused]] const auto n = write(2, msg, sizeof msg - 1);
    _exit(128 + sig);
  }
  g_stop = 1;
}

// The learning rate, the bias-update speed gamma and the MTP weight lambda at a step: schedules
// over optimizer steps or over consumed tokens (schedule.unit).
struct Hyper {
  double lr = 0, gamma = 0, lambda = 0;
};
Hyper hyperparameters(const ScheduleConfig& sc, int64_t step, int64_t tokens_consumed) {
  const double consumed = static_cast<double>(tokens_consumed);
  const double x = sc.tokens() ? consumed : static_cast<double>(step);
  return {sc.lr.at(step, consumed, sc.tokens()), sc.bias_update_speed.at(x), sc.mtp_weight.at(x)};
}

struct StepResult {
  StepStats stats;  // reduced over every rank
  Hyper hyper;
  double grad_norm = 0;  // NaN or Inf: a bad step, not applied
  std::vector<int>
      bad_ranks;             // of a bad step: the ranks whose own loss or gradients were not finite
  int64_t microbatches = 0;  // of the whole global batch (all DP ranks)
  int64_t global_batch = 0, tokens = 0;
};

// MOETRON_FAULT_NAN (tests only, trainer/fault_inject.h) at 1-based step `step`: with `sum`,
// this rank's loss becomes NaN; without (called after the gradients are zeroed, before the
// backward), the first gradient element of its first trainable layer parameter does — the
// backward accumulates onto it and the NaN reaches the reduction (started during the backward,
// parallel/zero1.h) as a NaN of the backward's own would. (A layer's, not the embedding's: the
// tied embedding's sum would carry it to the last stage's rank too.)
void inject_nan_fault(Run& r, int64_t step, Losses* sum) {
  if (!r.nan_fault) return;
  const int rank = r.world->rank();
  if (sum && r.nan_fault->hits(NanFault::What::Loss, rank, step)) sum->loss = NAN;
  if (!sum && r.nan_fault->hits(NanFault::What::Grad, rank, step))
    for (const auto& p : r.params->all())
      if (p->trainable && !p->replica && p->name.rfind("model.layers.", 0) == 0) {
        const float nan = NAN;
        kernels::copy_from_host(Exec::on(p->grad.device()), p->g(), &nan, sizeof nan);
        break;
      }
}

// Of a bad step (collective): the ranks whose own loss or own gradients (before the reduction)
// were not finite. Empty when none was: the reduction itself overflowed.
std::vector<int> ranks_that_saw(Run& r, double local_loss) {
  std::vector<int64_t> saw(static_cast<size_t>(r.world->size()), 0);
  saw[static_cast<size_t>(r.world->rank())] =
      !std::isfinite(local_loss) || !r.optimizer->local_grads_finite();
  r.world->all_reduce(saw.data(), saw.size(), ReduceOp::Max);
  std::vector<int> out;
  for (size_t i = 0; i < saw.size(); ++i)
    if (saw[i]) out.push_back(static_cast<int>(i));
  return out;
}

// One optimizer step of DeepSeek-V3 pretraining (the header comment, line by line).
// (While tracing, each part is a slice of its track: parallel/trace.h.)
StepResult train_step(Run& r, int64_t step, StepClock& clock) {
  using trace::Track;
  // this DP rank's rows of the step: micro-batch m is rows [m*B, (m+1)*B)
  int64_t t = trace::stamp();
  const data::Batch batch = r.loader->next();
  trace::span_since(Track::Data, "next batch", t), t = trace::stamp();
  const int64_t M = batch.rows / r.B;
  if (M != r.pipeline->schedule().microbatches)
    r.pipeline->set_schedule(make_step_schedule(r.cfg, r.grid.pp, static_cast<int>(M)));
  const Hyper h = hyperparameters(r.cfg.schedule, step, r.state.tokens);
  watchdog::set_step(step + 1, "pipeline");

  r.params->zero_grad();
  inject_nan_fault(r, step + 1, nullptr);  // a gradient fault: before the backward accumulates
  for (Model<float>* chunk : r.chunk_list()) chunk->zero_loads();
  kernels::flop_counter::reset();  // the step's GEMM FLOPs (run.count_flops)
  kernels::host_waits::reset();    // and its pipeline's stream drains
  trace::span_since(Track::Host, "step setup", t);
  Losses sum;  // forward and backward of every micro-batch; gradients scaled to the global mean
  r.pipeline->run([&](int m) { return batch.row(m * r.B); }, r.B, r.S, h.lambda,
                  1.0 / static_cast<double>(M * r.grid.dp), sum);
  t = trace::stamp();
  clock.pipeline_done(*r.pipeline, r.ep.get());
  const kernels::GemmFlops gemm = kernels::flop_counter::read();
  const int64_t waits = kernels::host_waits::read();
  trace::span_since(Track::Host, "pipeline stats", t), t = trace::stamp();

  // the embedding's copies on the first and last stage share one gradient
  watchdog::set_phase("optimizer");
  if (const auto& tied = r.groups->device().tied; tied && r.embed)
    tied->all_reduce(r.embed->g(), r.embed->numel());
  inject_nan_fault(r, step + 1, &sum);  // a loss fault
  trace::span_since(Track::Host, "tied embedding all-reduce", t), t = trace::stamp();
  // ZeRO-1 AdamW, global-norm clip (DualPipe: the twins' gradients summed in the same groups)
  const double grad_norm = r.optimizer->reduce(std::isfinite(sum.loss));
  trace::span_since(Track::Optimizer, "reduce gradients, norm", t), t = trace::stamp();
  const bool good = std::isfinite(grad_norm);  // the same on every rank
  if (good) r.optimizer->update(h.lr, grad_norm, step + 1), r.chunks.front()->weights_updated();
  clock.optimizer_done();
  trace::span_since(Track::Optimizer, "AdamW, all-gather", t), t = trace::stamp();
  const LoadImbalance imbalance =
      good
          ? update_expert_bias(r.chunk_list(), r.groups->device().dense_group(), h.gamma, r.grid.ep)
          : LoadImbalance{};
  trace::span_since(Track::Host, "expert bias update", t), t = trace::stamp();

  // the imbalance of each MoE layer once: DP rank 0 of the stage (the lower DualPipe twin)
  const bool dp0 = r.grid.dp_rank == 0 && r.groups->primary_twin();
  StepStats stats{sum.loss,
                  sum.lm,
                  sum.mtp,
                  sum.balance,
                  dp0 ? imbalance.expert : 0.0,
                  dp0 ? imbalance.ep_rank : 0.0,
                  dp0 ? static_cast<double>(imbalance.layers) : 0.0,
                  static_cast<double>(gemm.executed),
                  static_cast<double>(gemm.recompute),
                  static_cast<double>(waits)};
  watchdog::set_phase("step statistics");
  stats.reduce(*r.world);
  trace::span_since(Track::Host, "step stats all-reduce", t);
  return {stats,
          h,
          grad_norm,
          good ? std::vector<int>{} : ranks_that_saw(r, sum.loss),
          M * r.grid.dp,
          batch.global_batch,
          batch.global_batch * r.S};
}

// The next-token loss of the main model over the validation batches (forward passes only; every
// rank gets the same value).
double validation_loss(Run& r) {
  const trace::Scope slice(trace::Track::Host, "validation");
  const trace::Paused off;  // its forward passes are not the step's
  const kernels::op_profile::Paused not_profiled;
  const Config& cfg = r.cfg;
  const int64_t rows = cfg.data.global_batch_size / r.grid.dp, Me = rows / r.B;
  watchdog::set_phase("evaluation");
  pipeline::Schedule train_schedule = r.pipeline->schedule();
  // along the training schedule's first route (DualPipe: its first direction; DualPipeV: the V)
  r.pipeline->set_schedule(
      pipeline::make_forward_only(r.grid.pp, static_cast<int>(Me), train_schedule.route[0]));
  double lm = 0;
  for (int64_t b = 0; b < r.eval_batches; ++b) {
    const data::Batch eb =
        r.valid_data->eval_batch(b, cfg.data.global_batch_size, r.grid.dp, r.grid.dp_rank);
    Losses sum;
    r.pipeline->run([&](int m) { return eb.row(m * r.B); }, r.B, r.S, 0.0, 0.0, sum);
    lm += sum.lm;
  }
  r.pipeline->set_schedule(std::move(train_schedule));
  r.world->all_reduce(&lm, 1);
  if (r.ep) {  // evaluation's routing and exchanges are not the step's
    r.ep->take_max_nodes_per_token();
    r.ep->take_inflight_seconds(), r.ep->take_skew_seconds(), r.ep->take_exchanges();
  }
  return lm / static_cast<double>(Me * r.grid.dp * r.eval_batches);
}

void report_saved(const Run& r, const std::string& dir, std::ostream& log) {
  if (!r.rank0 || dir.empty()) return;
  const double mb = static_cast<double>(r.writer->shard_bytes()) / 1e6;
  log << "moetron: saved " << dir << " (rank 0 shard " << mb << " MB in "
      << r.writer->write_seconds() << " s: " << mb / std::max(r.writer->write_seconds(), 1e-9)
      << " MB/s)\n";
}

// Asynchronous: training waits only for the previous save and the copy to host buffers.
void checkpoint(Run& r, std::ostream& log) {
  const trace::Scope slice(trace::Track::Host, "checkpoint");
  report_saved(r, r.writer->wait(), log);
  const double blocked = r.writer->save(
      r.cfg, r.state, *r.params, std::as_const(*r.optimizer).shards(),
      /*write_unsharded=*/r.grid.dp_rank == 0 && r.groups->primary_twin(), r.tokenizer);
  if (r.rank0)
    log << "moetron: checkpoint of step " << r.state.step << " being written; training blocked "
        << static_cast<int>(blocked * 1e3) << " ms\n";
}

// Every rank agrees whether a stop signal arrived anywhere.
bool stop_requested(Communicator& world) {
  watchdog::set_phase("end of step");
  const trace::Scope slice(trace::Track::Host, "stop check");
  int64_t stop = g_stop;
  world.all_reduce(&stop, 1, ReduceOp::Max);
  return stop != 0;
}

// A step whose busiest EP rank received more expert rows than `moetron plan` fits this layout
// for: its expert buffers grew to them and keep them (plan.h ep_imbalance_limit). Said once per
// new high.
void warn_expert_rows(Run& r, const StepMetrics& m, std::ostream& log) {
  const double limit = r.plan.ep_imbalance_limit;
  if (limit <= 0 || m.ep_rows_peak <= limit || m.ep_rows_peak <= r.ep_rows_warned) return;
  r.ep_rows_warned = m.ep_rows_peak;
  log << "moetron: warning: step " << m.step << ": an EP rank received " << m.ep_rows_peak
      << "x the mean expert rows in one dispatch; `moetron plan` fits this layout up to " << limit
      << "x (--ep-imbalance): its expert buffers, which keep what they grew to, may not fit the "
      << "device\n";
}

StepMetrics step_metrics(const Run& r, const StepResult& s, const StepClock& clock, int64_t step,
                         double valid_loss, double step_seconds, double elapsed) {
  const double mtot = static_cast<double>(s.microbatches);
  StepMetrics m;
  m.step = step + 1, m.total_steps = r.cfg.run.steps;
  m.loss = s.stats.loss / mtot, m.lm_loss = s.stats.lm / mtot, m.mtp_loss = s.stats.mtp / mtot;
  m.balance_loss = s.stats.balance / mtot;
  m.lr = s.hyper.lr, m.grad_norm = s.grad_norm, m.tokens = r.state.tokens;
  m.skipped = !std::isfinite(s.grad_norm), m.bad_ranks = s.bad_ranks;
  m.global_batch = s.global_batch, m.valid_loss = valid_loss;
  m.step_seconds = step_seconds;
  m.tokens_per_s = static_cast<double>(s.tokens) / step_seconds;
  m.expert_imbalance = s.stats.moe_layers > 0 ? s.stats.imbalance / s.stats.moe_layers : 0.0;
  m.ep_imbalance = s.stats.moe_layers > 0 ? s.stats.ep_imbalance / s.stats.moe_layers : 0.0;
  m.bias_update_speed = s.hyper.gamma, m.mtp_weight = s.hyper.lambda;
  m.rank_times = clock.rank_times;
  for (size_t f = 0; f < clock.breakdown.size(); ++f)
    m.breakdown.emplace_back(StepClock::kBreakdownFields[f], clock.breakdown[f]);
  m.max_nodes_per_token = clock.max_nodes_per_token;
  m.ep_rows_peak = clock.ep_rows_peak;
  for (size_t f = 0; f < clock.breakdown.size(); ++f)  // the most any rank's device held
    if (std::string_view(StepClock::kBreakdownFields[f]) == "mem_peak_gib")
      for (double g : clock.breakdown[f]) m.mem_peak_gib = std::max(m.mem_peak_gib, g);
  m.flops_per_token = r.flops.training(), m.devices = r.world->size();
  m.peak_bf16_tflops = r.cfg.hardware.peak_bf16_tflops;
  if (r.cfg.precision.recipe == Recipe::FP8) m.peak_fp8_tflops = r.cfg.hardware.peak_fp8_tflops;
  if (r.cfg.run.count_flops)
    m.gemm_flops = s.stats.gemm_executed, m.gemm_flops_recompute = s.stats.gemm_recompute;
  if (r.cfg.run.device != Device::CPU) m.host_waits = s.stats.host_waits;
  m.eta_seconds =
      elapsed / static_cast<double>(step + 1) * static_cast<double>(r.cfg.run.steps - step - 1);
  return m;
}

// run.save_params: every parameter this rank holds, whole (collective: sharded master values are
// gathered first).
void save_final_params(Run& r) {
  r.optimizer->gather_values();
  save_params(*r.params, r.cfg.run.save_params + ".rank" + std::to_string(r.world->rank()) + ".h5",
              [&](const Param<float>& p) -> const Tensor& { return r.optimizer->whole_values(p); });
}

// A greedy continuation of run.sample_prompt by the main model (collective: every rank hands
// rank 0 the main model's parameters it owns); rank 0 prints it and appends it to samples.txt.
void text_sample(Run& r, std::ostream& log) {
  watchdog::set_phase("text sample");
  const RankGrid& g = r.grid;
  const bool primary = r.groups->primary_twin();
  r.optimizer->gather_values();  // (sharded master values: the gradients are spent by now)
  const std::string text = r.sampler->sample(
      *r.params,
      [&](const Param<float>& p) {
        return primary && !p.replica && (p.expert ? g.dp_rank < g.ep : g.dp_rank == 0);
      },
      *r.world, r.ex,
      [&](const Param<float>& p) -> const Tensor& { return r.optimizer->whole_values(p); });
  if (!r.rank0) return;
  const Config& cfg = r.cfg;
  const std::string full = r.sampler->prompt() + text;
  std::ofstream f(cfg.run.dir + "/samples.txt", std::ios::app);
  f << "== step " << r.state.step << " (greedy, " << cfg.run.sample_tokens << " tokens) ==\n"
    << full << "\n\n";
  if (!f) throw std::runtime_error(cfg.run.dir + "/samples.txt: write failed");
  std::string indented = "  ";
  for (char ch : full) indented += ch == '\n' ? std::string("\n  ") : std::string(1, ch);
  log << "moetron: sample at step " << r.state.step << " (greedy, " << cfg.run.sample_tokens
      << " tokens; " << cfg.run.dir << "/samples.txt):\n"
      << indented << std::endl;
}

// The non-finite guard's bookkeeping: bad steps in a row and in all, and what to say about them.
struct BadSteps {
  int64_t in_row = 0, total = 0;
  // Counts a step; true when it makes `limit` (> 0) bad steps in a row (the run stops).
  bool note(bool good, int64_t limit) {
    in_row = good ? 0 : in_row + 1;
    total += good ? 0 : 1;
    return !good && limit > 0 && in_row >= limit;
  }
  std::string warning(const StepResult& s, int64_t step, int64_t limit) const {
    std::string who;
    for (int rk : s.bad_ranks) who += (who.empty() ? "" : ", ") + std::to_string(rk);
    std::ostringstream o;
    o << "moetron: warning: step " << step << ": gradient norm " << s.grad_norm << " ("
      << (who.empty() ? "no rank's own loss or gradients were non-finite: the reduction overflowed"
                      : "non-finite loss or gradients on rank(s) " + who)
      << "); update skipped: weights, Adam moments and expert bias unchanged (" << in_row
      << " bad step(s) in a row, " << total << " in all; run.max_bad_steps " << limit << ")\n";
    return o.str();
  }
  std::string halt_message(int64_t step, const RunConfig& run) const {
    std::string newest = run.save_interval > 0 ? find_checkpoint(run.dir, nullptr) : "";
    return "training stopped at step " + std::to_string(step) + ": " + std::to_string(in_row) +
           " steps in a row (" + std::to_string(step - in_row + 1) + " to " + std::to_string(step) +
           ") had a non-finite loss or gradient norm (run.max_bad_steps = " +
           std::to_string(run.max_bad_steps) +
           "); none of them changed weights, moments or expert bias, so every checkpoint holds "
           "good ones" +
           (newest.empty() ? std::string()
                           : "; the newest checkpoint is " + newest + " (--resume auto uses it)");
  }
};

// The hang watchdog of this process (none when run.comm_timeout_s is 0): heartbeats in
// <run.dir>/status/, and a wait past the timeout aborts the job (abort_all).
std::unique_ptr<watchdog::Watchdog> start_watchdog(const Run& r) {
  watchdog::set_step(r.state.step, "setup");
  if (r.cfg.run.comm_timeout_s <= 0) return nullptr;
  watchdog::Options o;
  o.timeout_s = r.cfg.run.comm_timeout_s;
  o.status_dir = r.cfg.run.dir + "/status";
  o.rank = r.world->rank(), o.world = r.world->size();
  o.on_hang = [](const std::string& message) { abort_all(message); };
  std::error_code ec;
  std::filesystem::create_directories(o.status_dir, ec);  // (no status files if it fails)
  if (ec) o.status_dir.clear();
  auto w = std::make_unique<watchdog::Watchdog>(std::move(o));
  w->start();
  return w;
}

// The step's collective end: the stop check, validation and a checkpoint when due, and the step's
// time split (StepClock::gather).
struct StepEnd {
  bool stop = false, last = false;
  double valid_loss = NAN, eval_seconds = 0;
};
StepEnd end_step(Run& r, StepClock& clock, bool halt, std::ostream& log) {
  const RunConfig& rc = r.cfg.run;
  StepEnd e;
  e.stop = stop_requested(*r.world);
  e.last = r.state.step == rc.steps || e.stop;
  const bool eval = r.valid_data && (r.state.step % rc.eval_interval == 0 || e.last);
  const auto te = std::chrono::steady_clock::now();
  if (eval) e.valid_loss = validation_loss(r);
  e.eval_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - te).count();
  watchdog::set_phase("checkpoint");
  if (!halt && rc.save_interval > 0 && (r.state.step % rc.save_interval == 0 || e.last))
    checkpoint(r, log);
  watchdog::set_phase("step times");
  clock.gather(*r.world, *r.optimizer, e.eval_seconds);  // where the step went
  return e;
}

void report_end(const Run& r, std::ostream& log) {
  if (!r.rank0) return;
  // on a GPU: whether the FP8 GEMMs reached cuBLASLt (the fallback kernel is far slower)
  const kernels::Fp8GemmPaths fp8 = kernels::fp8_gemm_paths();
  if (r.cfg.run.device == Device::CUDA && fp8.cublaslt + fp8.kernel > 0)
    log << "moetron: FP8 GEMMs of rank 0: " << fp8.cublaslt << " through cuBLASLt, " << fp8.kernel
        << " on the fallback kernel (" << 100 * fp8.kernel / (fp8.cublaslt + fp8.kernel)
        << "%; precision.expert_row_align " << r.cfg.policy().expert_row_align << ")\n";
  // launches cost the host microseconds each, the routed experts' GEMMs only as much GPU time
  if (r.cfg.run.device == Device::CUDA) {
    log << "moetron: kernels launched by rank 0: " << kernels::gpu_kernel_launches()
        << " of moetron's own (cuBLASLt's, CUB's and NCCL's not counted)\n";
    std::vector<std::pair<int64_t, std::string>> by;  // most first
    for (const auto& [name, n] : kernels::gpu_kernel_launches_by_name()) by.push_back({-n, name});
    std::sort(by.begin(), by.end());
    log << "moetron: launches by kernel:";
    for (const auto& [n, name] : by) log << " " << name << " " << -n << ";";
    log << "\n";
  }
  if (!r.ep) return;
  auto mb = [&](EpPhase ph) { return static_cast<double>(r.ep->bytes_sent(ph)) / 1e6; };
  log << "moetron: expert-parallel payload sent by rank 0 (" << r.cfg.precision.recipe
      << "): dispatch " << mb(EpPhase::Dispatch) << " MB, combine " << mb(EpPhase::Combine)
      << " MB, combine backward " << mb(EpPhase::CombineBackward) << " MB, dispatch backward "
      << mb(EpPhase::DispatchBackward) << " MB\n";
}

}  // namespace

TrainSummary train(const Config& cfg, std::ostream& log, const std::string& resume) {
  // the test-only fault hooks (trainer/fault_inject.h) are checked before anything is written
  const std::optional<NanFault> fault = nan_fault_from_env();
  slow_save_from_env();
  if (fault && fault->rank >= world().size())
    throw ConfigError("MOETRON_FAULT_NAN: rank " + std::to_string(fault->rank) +
                      " is not a rank of this job (" + std::to_string(world().size()) + ")");
  const std::unique_ptr<Run> run = setup(cfg, log, resume);
  Run& r = *run;
  const std::unique_ptr<watchdog::Watchdog> dog = start_watchdog(r);
  r.nan_fault = fault;
  g_stop = 0;
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  TrainSummary summary;
  summary.tokens = r.state.tokens;
  const auto t_start = std::chrono::steady_clock::now();
  BadSteps bad;
  StepTrace tracer(r);      // run.trace_steps
  StepProfile profiler(r);  // run.profile_steps

  StepClock::Clock::time_point step_begin = StepClock::Clock::now();
  for (int64_t step = r.state.step; step < cfg.run.steps; ++step) {
    StepClock clock;
    clock.start(step_begin, cfg.run.device);
    profiler.begin(step + 1);
    const StepResult s = train_step(r, step, clock);
    summary.tokens += s.tokens;
    summary.losses.push_back(s.stats.loss / static_cast<double>(s.microbatches));
    r.state.step = step + 1, r.state.tokens = summary.tokens;
    r.state.samples = r.loader->samples_consumed();
    const bool halt = bad.note(std::isfinite(s.grad_norm), cfg.run.max_bad_steps);

    const StepEnd e = end_step(r, clock, halt, log);
    const bool stop = e.stop, last = e.last;
    step_begin = clock.end();
    tracer.step_done(step + 1, clock, e.eval_seconds);
    profiler.end(step + 1, clock.step_seconds());

    if (r.rank0) {
      const trace::Scope slice(trace::Track::Host, "metrics");
      const double elapsed =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
      StepMetrics m = step_metrics(r, s, clock, step, e.valid_loss, clock.step_seconds(), elapsed);
      m.bad_steps = bad.total;
      r.metrics->write(m);
      warn_expert_rows(r, m, log);
      if ((step + 1) % cfg.run.log_interval == 0 || last || m.skipped)
        log << MetricsLog::progress_line(m) << std::endl;
      if (m.skipped) log << bad.warning(s, r.state.step, cfg.run.max_bad_steps) << std::flush;
    }
    if (halt) {
      report_saved(r, r.writer->wait(), log);  // a save of an earlier (good) step completes
      throw TrainingHalted(bad.halt_message(r.state.step, cfg.run));
    }
    if (r.sampler->due(r.state.step, last)) {  // outside the step's time
      text_sample(r, log);
      step_begin = StepClock::Clock::now();
    }
    if (tracer.due(step + 1, last)) {  // outside the step's time
      tracer.write(r, log);
      step_begin = StepClock::Clock::now();
    }
    if (profiler.due(step + 1, last)) {  // outside the step's time
      profiler.write(r, log);
      step_begin = StepClock::Clock::now();
    }
    if (stop) {
      if (r.rank0) log << "moetron: stopped by signal after step " << r.state.step << "\n";
      break;
    }
  }
  report_saved(r, r.writer->wait(), log);  // the last save completes before train() returns
  watchdog::set_phase("finish");
  report_end(r, log);
  summary.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  if (!cfg.run.save_params.empty()) save_final_params(r);
  return summary;
}

}  // namespace moetron
