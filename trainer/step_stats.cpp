// StepStats' one reduction and StepClock's per-rank time split (see step_stats.h).
#include "trainer/step_stats.h"

#include <iterator>

#include "parallel/trace.h"

namespace moetron {

void StepStats::reduce(Communicator& world) {
  double v[10] = {loss,         lm,         mtp,           balance,        imbalance,
                  ep_imbalance, moe_layers, gemm_executed, gemm_recompute, host_waits};
  world.all_reduce(v, std::size(v));
  loss = v[0], lm = v[1], mtp = v[2], balance = v[3], imbalance = v[4], ep_imbalance = v[5];
  moe_layers = v[6], gemm_executed = v[7], gemm_recompute = v[8], host_waits = v[9];
}

namespace {
constexpr double kGiB = 1024.0 * 1024.0 * 1024.0;

// The pipeline idle simulate() predicts for `rank` with every rank's ops costing this rank's
// measured means (an op kind this rank did not run costs what the others imply).
double predicted_bubble(const pipeline::Schedule& sched, const ExecStats& st, int rank) {
  if (sched.ranks <= 1) return 0;
  pipeline::Costs c;
  c.F = st.cost_F;
  c.B = st.cost_B > 0 ? st.cost_B : st.cost_Bi + st.cost_W;
  c.W = st.cost_W;
  c.FB = st.cost_FB > 0 ? st.cost_FB : c.F + c.B;
  if (c.B <= 0) c.B = c.FB - c.F;
  if (c.F <= 0 || c.B <= 0) return 0;
  try {
    return pipeline::simulate(sched, c).idle.at(rank);
  } catch (const std::exception&) {
    return 0;  // a schedule simulate() does not take (forward-only) predicts nothing
  }
}
}  // namespace

void StepClock::pipeline_done(const PipelineExecutor<float>& pipeline, EpDispatcher<float>* ep) {
  t_pipe_ = Clock::now();
  pipe_ = pipeline.stats();
  bubble_pred_ = predicted_bubble(pipeline.schedule(), pipe_, pipeline.rank());
  ep_inflight_ = ep ? ep->take_inflight_seconds() : 0.0;
  max_nodes_per_token = ep ? ep->take_max_nodes_per_token() : 1;
  ep_rows_peak = ep ? ep->take_rows_peak() : 1;
}

void StepClock::gather(Communicator& world, Optimizer& opt, double excluded) {
  const ExecStats& st = pipe_;
  const double dp_comm = opt.take_comm_seconds();
  const int64_t tb = trace::stamp();
  world.barrier();  // the wait for the slowest rank is this rank's (in other_s)
  const auto now = end_ = Clock::now();
  trace::span(trace::Track::Host, "wait for all ranks", tb, trace::ns(now));
  auto secs = [](Clock::time_point a, Clock::time_point b) {
    return std::chrono::duration<double>(b - a).count();
  };
  step_seconds_ = secs(t0_, now) - excluded;
  const double in_ops = st.compute + st.ep_wait_pair + st.ep_wait_single + st.pp_idle;
  const double mine[] = {st.compute,
                         st.ep_wait_pair,
                         st.ep_wait_single,
                         ep_inflight_,
                         st.pp_idle,
                         bubble_pred_,
                         dp_comm,
                         secs(t_pipe_, t_opt_) - dp_comm,
                         secs(t0_, t_pipe_) - in_ops + secs(t_opt_, now) - excluded,
                         st.cost_F,
                         st.cost_B > 0 ? st.cost_B : st.cost_Bi + st.cost_W,
                         st.cost_W,
                         st.cost_FB,
                         opt.reduce_started_early(),
                         static_cast<double>(allocator(device_).stats().peak_bytes) / kGiB,
                         static_cast<double>(allocator(device_).stats().live_bytes) / kGiB,
                         static_cast<double>(allocator(device_).reserved_peak_bytes()) / kGiB};
  const size_t F = std::size(kBreakdownFields), W = static_cast<size_t>(world.size());
  std::vector<double> all(F * W, 0.0);
  for (size_t f = 0; f < F; ++f) all[f * W + static_cast<size_t>(world.rank())] = mine[f];
  world.all_reduce(all.data(), all.size());
  breakdown.assign(F, {});
  for (size_t f = 0; f < F; ++f)
    breakdown[f].assign(all.begin() + f * W, all.begin() + (f + 1) * W);
  // the older triple: compute (with the optimizer's work), communication waited for, idle
  rank_times.assign(3 * W, 0.0);
  for (size_t r = 0; r < W; ++r) {
    rank_times[3 * r] = breakdown[0][r] + breakdown[7][r] + breakdown[8][r];
    rank_times[3 * r + 1] = breakdown[1][r] + breakdown[2][r] + breakdown[6][r];
    rank_times[3 * r + 2] = breakdown[4][r];
  }
  world.all_reduce(&max_nodes_per_token, 1, ReduceOp::Max);
  world.all_reduce(&ep_rows_peak, 1, ReduceOp::Max);
}

}  // namespace moetron
