// `moetron estimate`: how fast a layout runs on a device, before any device-hour is spent —
// computed from the config (model, layout, schedule, precision) and a hardware profile (peaks,
// bandwidths and a few global efficiency factors), not measured (DESIGN-NOTES Part B §3.5).
//
// The chain: per-layer phase costs of one micro-batch through a stage — GEMM FLOPs at the
// efficiency of their precision (bf16/fp32 or fp8), the attention core, memory-bound kernels as
// bytes over HBM bandwidth, EP exchanges as bytes over the links from the routing (a Monte-Carlo
// of the group-limited top-k: distinct destination ranks and nodes per token, node-limited
// routing sending a row once per node over IB and on over NVLink) — are cut into the pieces the
// executor runs (a piece ends where an exchange is posted); an op alone costs its pieces with
// every exchange exposed, a DualPipe pair costs the two-stream replay of its pieces in the
// executor's order (backward piece, forward piece, ...: each piece's compute hides the other
// stream's exchange in flight). The per-op costs F, B, W and pairs go to pipeline::simulate(),
// which replays the schedule's op lists; the step adds the ZeRO-1 reduce-scatter/all-gather (and
// the tied-embedding all-reduce), exposed as the trainer runs them, and the optimizer.
//
// CPU hosts (a profile with devices_per_node 0; peaks and bandwidths are the node's, with all its
// cores): a rank gets 1/ranks of the node while the ranks fit its cores (cores_per_node; 0 =
// unknown: always 1/ranks). With more ranks than cores (Open MPI oversubscribed), a rank that
// waits sleeps (parallel.wait: auto) and leaves its core: ops are priced at one core, and the
// schedule is replayed a second time on the node's cores shared by the processes computing at each
// moment (pipeline::simulate_shared); what that adds to the critical path is the core wait. The
// DP collectives and the optimizer, run by all ranks at once, keep 1/ranks. docs/performance.md has
// the calibration and its residuals.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "trainer/config.h"
#include "trainer/plan.h"

namespace moetron {

// Work of one segment of a micro-batch, before it is priced.
struct Work {
  double gemm_fp32 = 0, gemm_bf16 = 0, gemm_fp8 = 0;  // FLOPs by GEMM precision
  double attention = 0;       // attention-core FLOPs with bf16 products (attention_core: bf16)
  double attention_fp32 = 0;  // attention-core FLOPs with fp32 products (attention_core: fp32)
  double bytes = 0;           // memory-bound kernels' traffic
  Work& operator+=(const Work& o);
  Work scaled(double k) const;
};

// One piece of a stage's forward or backward: compute, then the exchange it posts (seconds).
struct Piece {
  double compute = 0, exchange = 0;
};

// One model stage, one micro-batch (seconds).
struct StageCost {
  int stage = 0;
  int blocks = 0, moe_layers = 0;
  double f = 0, b = 0, w = 0;           // compute: forward, full backward, its weight part
  double f_ep = 0, b_ep = 0;            // EP exchanges on the wire, forward and backward
  std::vector<Piece> fwd, bwd;          // the pieces, in execution order (backward: full, with W)
  double op_f = 0, op_b = 0, op_w = 0;  // simulate()'s costs alone: exchanges exposed
  double op_fb = 0;                     // a pair F(this) & B(this) overlapped (DualPipe)
};

// Expert-parallel routing per token sent (Monte-Carlo of the gate's group-limited top-k).
struct Routing {
  double ranks = 0;         // distinct destination EP ranks other than the sender's
  double remote_nodes = 0;  // distinct nodes other than the sender's (rows sent over IB)
  double ib_rows = 0;       // rows on the inter-node link (per node when node-limited)
};

// What the estimate assumes of the run beside its config and profile.
struct EstimateOptions {
  // The busiest EP rank's routed-expert rows over the mean of its EP group, per MoE layer
  // (metrics.jsonl's ep_imbalance). Every EP rank waits for the busiest at the layer's combine
  // (forward) and its dispatch's backward: (ep_imbalance - 1) x the routed experts' compute is
  // added to those exchanges. 1: balanced (what auxiliary-loss-free balancing aims at).
  double ep_imbalance = 1;
};

struct Estimate {
  Plan plan;                // layout, micro-batches, memory per rank (trainer/plan.h)
  double ep_imbalance = 1;  // EstimateOptions::ep_imbalance (EP > 1)
  std::string hardware;     // hardware.name
  int ranks_per_node = 0;   // effective (world when unset)
  double rank_share = 1;    // CPU: 1 / ranks on a node (their share of its peaks); GPU: 1
  double busy_share = 1;    // CPU: a busy rank's share, 1 / min(ranks, cores); GPU: 1
  int64_t tokens_per_microbatch = 0, tokens_per_step = 0;
  double flops_per_token = 0;  // model FLOPs (model/flops.h), training
  Routing routing;
  std::vector<StageCost> stages;
  double pp_message_s = 0;  // one PP message (latency + bytes / link)
  // the step (seconds) and its breakdown; compute + exposed_ep + bubble + core_wait = makespan
  // (core_wait: ranks > cores, the node's total work / cores beyond the critical path)
  double makespan_s = 0, compute_s = 0, exposed_ep_s = 0, bubble_s = 0, core_wait_s = 0;
  double dp_s = 0, optimizer_s = 0, step_s = 0;
  int critical_rank = 0;  // the pipeline rank the breakdown is read from (most busy)
  double tokens_per_s_per_gpu = 0, mfu = 0, mfu_fp8 = 0;
  double gpu_hours_per_1e12_tokens = 0, run_tokens = 0, run_gpu_hours = 0;
  // The predicted timeline of one step (moetron estimate --trace): per pipeline rank, each
  // compute op as simulate() placed it (names as a real trace's: F, B, BI, W, F&B), then the DP
  // reduction and the optimizer. Seconds from the step's start.
  struct Slice {
    int rank = 0;
    const char* name = "";
    double t0 = 0, t1 = 0;
    int mb = 0, stage = 0;
    bool compute = true;  // false: DP reduction / optimizer
  };
  std::vector<Slice> timeline;
};

// The estimate of `cfg` (its hardware section: a profile with every estimator key) on `world`
// ranks (0: pp x dp). Throws ConfigError naming the key for a profile that lacks a figure the
// estimate needs (a zero peak, bandwidth or efficiency), and what make_plan throws for a layout
// that cannot be formed or a --world that does not match.
Estimate make_estimate(const Config& cfg, int world = 0, const EstimateOptions& o = {});

// Calibration on one measured or published point: the one factor k that, multiplying both GEMM
// efficiencies of the profile (their ratio kept: a prior), makes the estimate's tokens/s/GPU equal
// `tokens_per_s_per_gpu` (bisection; memory and communication factors unchanged). Throws
// ConfigError when no k with both efficiencies <= 1 reaches it.
struct GemmEfficiency {
  double bf16 = 0, fp8 = 0;  // hardware.gemm_efficiency, hardware.gemm_efficiency_fp8
};
GemmEfficiency calibrate_gemm_efficiency(Config cfg, double tokens_per_s_per_gpu, int world = 0,
                                         const EstimateOptions& o = {});

// Parts, exposed for tests.
Routing routing_stats(const ModelConfig& m, int ep, int ep_ranks_per_node, bool node_limited,
                      int samples = 4000);
// Two streams' pieces interleaved as the executor runs a pair (backward first), one compute
// resource, exchanges on one link in posting order; returns the pair's duration.
double interleave(const std::vector<Piece>& fwd, const std::vector<Piece>& bwd);
// The pieces of one stream run alone: compute and every exchange in sequence.
double run_alone(const std::vector<Piece>& pieces);

}  // namespace moetron
