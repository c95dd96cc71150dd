// StepStats' one reduction and StepClock's per-rank time split (see step_stats.h).
#include "trainer/step_stats.h"

namespace moetron {

void StepStats::reduce(Communicator& world) {
  double v[8] = {loss, lm, mtp, balance, imbalance, moe_layers, gemm_executed, gemm_recompute};
  world.all_reduce(v, 8);
  loss = v[0], lm = v[1], mtp = v[2], balance = v[3], imbalance = v[4], moe_layers = v[5];
  gemm_executed = v[6], gemm_recompute = v[7];
}

void StepClock::gather(Communicator& world, PipelineExecutor<float>& pipeline,
                       EpDispatcher<float>* ep, Optimizer& opt) {
  const double ep_comm = ep ? ep->take_comm_seconds() : 0.0;
  const double dp_comm = opt.take_comm_seconds();
  // the step's tail after the pipeline: loads, optimizer, bias update
  const double tail = std::chrono::duration<double>(Clock::now() - t_pipe_).count();
  rank_times.assign(3 * static_cast<size_t>(world.size()), 0.0);
  const size_t me = 3 * static_cast<size_t>(world.rank());
  rank_times[me] = pipeline.compute_seconds() - ep_comm + tail - dp_comm;
  rank_times[me + 1] = ep_comm + dp_comm;
  rank_times[me + 2] = pipeline.idle_seconds();
  world.all_reduce(rank_times.data(), rank_times.size());
  max_nodes_per_token = ep ? ep->take_max_nodes_per_token() : 1;
  world.all_reduce(&max_nodes_per_token, 1, ReduceOp::Max);
}

}  // namespace moetron
