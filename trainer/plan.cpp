// The plan of a layout (see plan.h): the model and each pipeline stage built on the meta device,
// their parameters counted by kind, the schedule's ops walked for what each rank keeps in flight,
// and the verdict against the device's memory.
#include "trainer/plan.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <map>
#include <optional>
#include <stdexcept>

#include "data/batch_schedule.h"
#include "model/memory.h"
#include "model/model.h"
#include "parallel/ep_dispatch.h"
#include "parallel/pipeline.h"
#include "trainer/run.h"

namespace moetron {

namespace {

// The routed experts of one EP rank of `ep`, for a model built on the meta device: it gives the
// layers their share of experts and cannot move a token.
class ShardDispatcher final : public TokenDispatcher<float> {
 public:
  explicit ShardDispatcher(int64_t ep) : ep_(ep) {}
  int64_t first_expert(int64_t) const override { return 0; }
  int64_t local_experts(int64_t n_experts) const override { return n_experts / ep_; }
  void dispatch_start(DispatchState<float>&, const float*, const int32_t*, const float*, int64_t,
                      int64_t, int64_t, int64_t) override {
    cannot_run();
  }
  void dispatch_wait(DispatchState<float>&) override { cannot_run(); }
  void combine_start(DispatchState<float>&) override { cannot_run(); }
  void combine_wait(DispatchState<float>&, float*) override { cannot_run(); }
  void combine_backward_start(DispatchState<float>&, const float*) override { cannot_run(); }
  void combine_backward_wait(DispatchState<float>&) override { cannot_run(); }
  void dispatch_backward_start(DispatchState<float>&) override { cannot_run(); }
  void dispatch_backward_wait(DispatchState<float>&, float*, float*) override { cannot_run(); }

 private:
  [[noreturn]] static void cannot_run() {
    throw std::logic_error("a model built for planning cannot run");
  }
  int64_t ep_;
};

Model<float> meta_model(const Config& cfg, StageSpec stage, int64_t ep) {
  std::shared_ptr<TokenDispatcher<float>> d;
  if (ep > 1) d = std::make_shared<ShardDispatcher>(ep);
  return Model<float>(cfg.model, cfg.policy(), d, stage, Exec::on(Device::Meta));
}

bool has(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

// The component a weight matrix belongs to, by the layers' parameter names (model/*.cpp); none
// for the embedding, the head, MTP's eh_proj and every vector.
std::optional<Component> component_of(const Param<float>& p) {
  if (p.value.ndim() != 2) return std::nullopt;
  const std::string& n = p.name;
  if (has(n, ".mlp.experts.")) return Component::RoutedExpert;
  if (has(n, ".mlp.shared_experts.")) return Component::SharedExpert;
  if (has(n, ".mlp.gate.")) return Component::Gate;
  if (has(n, ".mlp.")) return Component::DenseMlp;
  if (has(n, ".self_attn.")) return Component::AttentionProj;
  return std::nullopt;
}

// One FP8 copy of one [R, C] matrix: E4M3 codes and one fp32 scale per 128x128 block. An
// Fp8WeightCache holds one (W, for Fprop), or two under fp8_weight_transpose: cached (and W^T,
// for Dgrad, made once per weight version).
int64_t fp8_copy_bytes(const Tensor& w) {
  const int64_t R = w.shape()[0], C = w.shape()[1];
  return R * C + 4 * ((R + 127) / 128) * ((C + 127) / 128);
}

// Whether a weight matrix's GEMMs run BF16 and so keep a bf16 copy (Bf16WeightCache): its
// component's recipe; for MTP's eh_proj the attention projections' GEMM precision (mtp.cpp); for
// the output head (shared by the MTP modules) the head's.
bool bf16_copy(const Param<float>& p, const PrecisionPolicy& pol) {
  using kernels::GemmPrecision;
  if (const std::optional<Component> c = component_of(p)) return pol.recipe_of(*c) == Recipe::BF16;
  if (p.name == "lm_head.weight") return pol.gemm(Component::Head) == GemmPrecision::BF16;
  return has(p.name, ".eh_proj.") && pol.gemm(Component::AttentionProj) == GemmPrecision::BF16;
}

// The expert rows a rank's MoE layer holds per micro-batch, over the mean (N tokens x K): the
// imbalance, plus each local expert's rows padded up to a multiple of precision.expert_row_align
// (model/moe.h; 16 for FP8 experts on a GPU), counted at the most, align - 1 rows an expert. The
// `load` of model/memory.h.
double expert_load(const Config& cfg, const Plan& p) {
  const ModelConfig& m = cfg.model;
  const int64_t mean = p.micro_batch * p.seq_len * m.num_experts_per_tok;
  const int64_t pad = m.n_routed_experts / p.ep * (cfg.policy().expert_row_align - 1);
  return p.ep_imbalance + (mean > 0 ? static_cast<double>(pad) / static_cast<double>(mean) : 0.0);
}

// What one model stage holds and keeps per micro-batch, on one EP rank.
struct StageCensus {
  int64_t params = 0, expert = 0, dense_trainable = 0, replica = 0, fp8_cache = 0, bf16_cache = 0;
  int64_t copied_dense = 0, copied_expert = 0;  // read only through copies (Param::copies)
  int64_t moe_layers = 0;
  SlotBytes slot;          // activations of one micro-batch (model/memory.h)
  int64_t ep_slot = 0;     // the EP dispatch state of one micro-batch, every MoE layer
  int64_t rows = 0;        // the MoE layers' [R, D] rows (MoE::Scratch::OnePiece::rows)
  int64_t one_piece = 0;   // the rest of the one-piece MoE scratch: once per rank
  int64_t scratch = 0;     // the MoE layers' Scratch each chunk keeps for itself
  int64_t wt_scratch = 0;  // fp8_weight_transpose per_call: the largest Linear's W^T
};

StageCensus census(const Config& cfg, const Plan& p, int stage) {
  const Model<float> m = meta_model(cfg, StageSpec{stage, p.stages}, p.ep);
  const PrecisionPolicy pol = cfg.policy();
  StageCensus s;
  const bool keep_wt = pol.weight_transpose == WeightTranspose::Cached;
  std::map<const Param<float>*, int64_t> linear_wt;  // per FP8 Linear's weight: one copy's bytes
  for (const auto& q : m.params().all()) {
    s.params += q->numel();
    if (q->expert) s.expert += q->numel();
    if (q->trainable && !q->expert) s.dense_trainable += q->numel();
    if (q->replica) s.replica += q->numel();
    const std::optional<Component> c = component_of(*q);
    const Param<float>& storage = q->fused ? *q->fused : *q;  // what one Linear reads
    if (c && pol.recipe_of(*c) == Recipe::FP8) {
      s.fp8_cache += (keep_wt ? 2 : 1) * fp8_copy_bytes(q->value);
      linear_wt[&storage] += fp8_copy_bytes(q->value);
    }
    if (bf16_copy(*q, pol)) s.bf16_cache += 2 * q->numel();
    if (q->trainable && !storage.copies.empty())
      (q->expert ? s.copied_expert : s.copied_dense) += q->numel();
  }
  if (!keep_wt)
    for (const auto& [w, bytes] : linear_wt) s.wt_scratch = std::max(s.wt_scratch, bytes);
  s.moe_layers = static_cast<int64_t>(m.moe_layers().size());
  const ModelConfig& mc = cfg.model;
  const int64_t N = p.micro_batch * p.seq_len;
  const double load = expert_load(cfg, p);
  s.slot = slot_activation_bytes(mc, pol, stage, p.stages, p.micro_batch, p.seq_len, 4, p.ep_rows,
                                 load);
  if (s.moe_layers > 0) {  // one MoE::Scratch per stage (its layers run one at a time)
    const ScratchBytes sc = moe_scratch_bytes(mc, pol, N, 4, p.ep_rows, load);
    s.scratch = sc.own;
    s.one_piece = sc.one_piece;
    s.rows = sc.received;
  }
  if (p.ep > 1)
    s.ep_slot = s.moe_layers * EpDispatcher<float>::state_bytes(N, p.ep, mc.n_routed_experts);
  return s;
}

// The whole model's parameter counts (plan.h: Plan's params_*).
void count_parameters(const Config& cfg, Plan& p) {
  const ModelConfig& mc = cfg.model;
  const Model<float> m = meta_model(cfg, StageSpec{}, 1);
  const double share = static_cast<double>(mc.num_experts_per_tok) / mc.n_routed_experts;
  double total = 0, activated = 0, mtp = 0, mtp_activated = 0;
  for (const auto& q : m.params().all()) {
    bool in_mtp = false;
    for (int64_t k = 0; k < mc.num_nextn_predict_layers; ++k)
      in_mtp =
          in_mtp ||
          q->name.rfind("model.layers." + std::to_string(mc.num_hidden_layers + k) + ".", 0) == 0;
    const double n = static_cast<double>(q->numel()), used = q->expert ? n * share : n;
    if (in_mtp) {
      mtp += n, mtp_activated += used;
    } else {
      total += n;
      if (q->name != "model.embed_tokens.weight") activated += used;
    }
  }
  p.params_total = static_cast<int64_t>(total);
  p.params_activated = std::llround(activated);
  p.params_mtp = static_cast<int64_t>(mtp);
  p.params_mtp_activated = std::llround(mtp_activated);
}

// The schedule the plan walks: that of the full global batch.
pipeline::Schedule plan_schedule(const Config& cfg, Plan& p) {
  pipeline::Schedule s;
  try {
    s = pipeline::make_schedule(p.schedule, p.pp, p.microbatches);
    pipeline::validate(s);
  } catch (const std::invalid_argument& e) {
    throw ConfigError(cfg.source + ": parallel.schedule: " + e.what());
  }
  if (cfg.data.batch_ramp_start > 0) {
    const data::BatchSchedule batches(cfg.data.batch_ramp_start, cfg.data.global_batch_size,
                                      cfg.data.batch_ramp_tokens, p.seq_len, p.dp, p.micro_batch);
    const int64_t first = batches.batch_size_at(0);
    try {
      pipeline::make_schedule(p.schedule, p.pp, static_cast<int>(first / (p.micro_batch * p.dp)));
    } catch (const std::invalid_argument& e) {
      p.notes.push_back("the batch ramp's first global batch (" + std::to_string(first) +
                        " sequences) cannot be scheduled: " + e.what());
    }
  }
  return s;
}

// What rank r's pools of micro-batch states and gradient sets hold at their peak, op by op as the
// executor runs them (PipelineExecutor::pool_plan): a live state weighted by what its stage keeps
// per micro-batch (activations and EP dispatch state), an idle held one and every set at the
// largest of the rank's stages (an entry keeps the stage it last served: at most the largest).
// A sending stage's state holds its output only from its forward to the send's post, which
// follows that compute op: counted during the op (pp_messages counts it from the post on).
struct PoolPeak {
  int slots = 0, sets = 0;
  int64_t activations = 0, ep = 0, largest = 0, set_bytes = 0;
  bool shared = false;
};

PoolPeak peak_pools(const pipeline::Schedule& s, int r, const std::vector<StageCensus>& st,
                    int64_t output_bytes) {
  using Exec = PipelineExecutor<float>;
  PoolPeak peak;
  // a stage whose outputs this rank sends keeps a micro-batch's state without its output (the
  // executor moves it into the send) but during the forward that makes it (`making`, per op)
  const std::vector<pipeline::Op>& ops = s.per_rank[r];
  std::vector<uint8_t> sends(st.size(), 0);
  for (const pipeline::Op& op : ops) sends[op.stage] |= op.kind == pipeline::OpKind::SendActivation;
  std::vector<int64_t> forward(st.size()), making(ops.size(), 0);
  for (size_t stage = 0; stage < st.size(); ++stage)
    forward[stage] = st[stage].slot.forward - (sends[stage] ? output_bytes : 0);
  for (size_t i = 0; i < ops.size(); ++i) {
    const bool fwd = ops[i].kind == pipeline::OpKind::Forward ||
                     ops[i].kind == pipeline::OpKind::ForwardBackward;
    if (fwd && sends[ops[i].stage]) making[i] = output_bytes;
  }
  int64_t largest_ep = 0;
  for (const pipeline::Chunk& c : s.chunks_of_rank[r]) {
    peak.largest = std::max(peak.largest, forward[c.stage]);
    peak.set_bytes = std::max(peak.set_bytes, st[c.stage].slot.backward);
    largest_ep = std::max(largest_ep, st[c.stage].ep_slot);
  }
  const Exec::PoolPlan plan = Exec::pool_plan(s, r);
  peak.shared = plan.share;
  size_t i = 0;  // the op walk_pools is at (it visits each op once, in order)
  Exec::walk_pools(plan, [&](const std::vector<int>& live, int held_slots, int held_sets) {
    const int64_t idle = held_slots - static_cast<int64_t>(live.size());
    int64_t act = idle * peak.largest + held_sets * peak.set_bytes + making[i++];
    int64_t ep = idle * largest_ep;
    for (int k : live) act += forward[k % s.stages], ep += st[k % s.stages].ep_slot;
    if (act + ep > peak.activations + peak.ep)
      peak.slots = held_slots, peak.sets = held_sets, peak.activations = act, peak.ep = ep;
  });
  return peak;
}

// Parameters and optimizer state of pipeline rank r: its stages' parameters (an embedding copy
// for MTP counts once on a rank that also holds the first stage: DualPipe shares it in the
// process, SPEC §4.2), ZeRO-1 shards of dense parameters over DP and experts over EDP (both
// doubled by DualPipe's twins).
void rank_parameters(const Config& cfg, const Plan& p, const std::vector<StageCensus>& st,
                     RankPlan& rp) {
  const bool first_here = std::count(rp.stages.begin(), rp.stages.end(), 0) > 0;
  int64_t dense = 0, copied_dense = 0, copied_expert = 0;
  for (int s : rp.stages) {
    const int64_t shared = s > 0 && first_here ? st[s].replica : 0;
    rp.params += st[s].params - shared;
    rp.params_expert += st[s].expert;
    dense += st[s].dense_trainable - shared;
    copied_dense += st[s].copied_dense, copied_expert += st[s].copied_expert;
    rp.bytes.fp8_weight_cache += st[s].fp8_cache;
    rp.bytes.bf16_weight_cache += st[s].bf16_cache;
  }
  // DualPipe's twins (ranks r and P-1-r hold the same stages) share one ZeRO-1 group
  // (process_groups.h): the optimizer state of a stage is sharded over both
  const int64_t twins = p.schedule == "dualpipe" ? 2 : 1;
  const int64_t dp = twins * p.dp, edp = twins * (p.dp / p.ep);
  const int64_t dense_owned = (dense + dp - 1) / dp;
  const int64_t expert_owned = (rp.params_expert + edp - 1) / edp;
  rp.owned = dense_owned + expert_owned;
  rp.bytes.gradients = 4 * rp.params;
  // optimizer.shard_master_weights: a group of more than one rank with weights read only through
  // copies keeps their fp32 values only as its owned masters (parallel/zero1.h), every owned
  // element's master in the shard
  const bool shard = cfg.optimizer.shard_master_weights;
  const bool dense_sharded = shard && dp > 1 && copied_dense > 0;
  const bool expert_sharded = shard && edp > 1 && copied_expert > 0;
  rp.bytes.weights =
      4 * (rp.params - (dense_sharded ? copied_dense : 0) - (expert_sharded ? copied_expert : 0));
  rp.bytes.master_shard =
      4 * ((dense_sharded ? dense_owned : 0) + (expert_sharded ? expert_owned : 0));
  const int64_t moment = cfg.optimizer.moment_dtype == FloatFormat::BF16 ? 2 : 4;
  rp.bytes.optimizer_moments = 2 * moment * rp.owned;
  // Zero1 reduces in place (the owned sums land in the gradient arena); a group of more than one
  // rank under grad_reduce_dtype bf16 stages the buckets in flight, a send and a receive each
  if (cfg.optimizer.grad_reduce_dtype == FloatFormat::BF16)
    for (const int64_t group : {dp, edp}) {
      if (group == 1) continue;
      const int64_t bucket = cfg.optimizer.grad_bucket_elements;
      rp.bytes.grad_staging += 2 * Zero1Options{}.staging * (bucket + bucket / group);
    }
}

// The EP exchanges rank r has in flight at once, at most: one per running program whose chunk
// has MoE layers. A program (a chunk's forward or backward) has at most one: every MoE phase
// posts its exchange, yields, and waits for it before the next phase posts (MoE::forward_program,
// backward_program; blocks and chunks step their layers' programs one after another). The
// executor runs one compute op at a time, each to its end (PipelineExecutor::compute): a
// Forward, Backward or BackwardInput runs one program, a ForwardBackward two, piece by piece
// under parallel.overlap interleave (run_pair; with none, one after the other: one at a time).
// One dispatcher serves every chunk of a rank (build_model), so its pool holds that many pairs.
int64_t peak_exchanges(const Config& cfg, const pipeline::Schedule& s, int r,
                       const std::vector<StageCensus>& st) {
  auto moe = [&](int stage) -> int64_t { return st[stage].moe_layers > 0 ? 1 : 0; };
  const bool interleave = cfg.parallel.overlap == PairOverlap::Interleave;
  int64_t peak = 0;
  for (const pipeline::Op& op : s.per_rank[r]) {
    switch (op.kind) {
      case pipeline::OpKind::Forward:
      case pipeline::OpKind::Backward:
      case pipeline::OpKind::BackwardInput:
        peak = std::max(peak, moe(op.stage));
        break;
      case pipeline::OpKind::ForwardBackward:
        peak = std::max(peak, interleave ? moe(op.stage) + moe(op.stage2)
                                         : std::max(moe(op.stage), moe(op.stage2)));
        break;
      default:  // BackwardWeight and the messages post no EP exchange
        break;
    }
  }
  return peak;
}

// The EP wires of rank r: the dispatcher pools them (parallel/ep_dispatch.h), one send and one
// receive wire per exchange in flight, each grown to the widest phase's rows (the same for every
// MoE stage: N tokens of width D). At EP 1 the local dispatcher's: one [N, D] per exchange
// (model/dispatch.h).
int64_t ep_wire_bytes(const Config& cfg, const Plan& p, const pipeline::Schedule& s, int r,
                      const std::vector<StageCensus>& st) {
  const int64_t N = p.micro_batch * p.seq_len;
  if (p.ep == 1) return peak_exchanges(cfg, s, r, st) * N * cfg.model.hidden_size * 4;
  return peak_exchanges(cfg, s, r, st) *
         EpDispatcher<float>::exchange_bytes(dispatch_wire(cfg.precision.recipe), N,
                                             cfg.model.hidden_size, cfg.model.num_experts_per_tok,
                                             p.ep_rows);
}

RankPlan plan_rank(const Config& cfg, const Plan& p, const pipeline::Schedule& s, int r,
                   const std::vector<StageCensus>& st) {
  RankPlan rp;
  rp.pp_rank = r;
  for (const pipeline::Chunk& c : s.chunks_of_rank[r]) rp.stages.push_back(c.stage);
  rank_parameters(cfg, p, st, rp);
  const int64_t message = p.micro_batch * p.seq_len * cfg.model.hidden_size * 4;
  const PoolPeak in = peak_pools(s, r, st, message);
  rp.slots = in.slots, rp.slot_bytes = in.largest;
  rp.grad_sets = in.sets, rp.grad_set_bytes = in.set_bytes, rp.shared_pools = in.shared;
  rp.bytes.activations = in.activations;
  // the MoE scratch: each chunk's own, and once per rank the one-piece scratch its chunks share
  // (Model's sibling: their programs interleave only at yields, where none of it is live); the
  // rows (one-piece too) and the wires: the EP buffers, or at EP 1 (no exchange) the MoE scratch
  int64_t rows = 0, one_piece = 0;
  for (int stage : rp.stages) {
    rp.bytes.moe_scratch += st[stage].scratch;
    one_piece = std::max(one_piece, st[stage].one_piece);
    rows = std::max(rows, st[stage].rows);
  }
  rp.bytes.moe_scratch += one_piece;
  const int64_t wires = ep_wire_bytes(cfg, p, s, r, st);
  rp.bytes.ep_buffers = in.ep;
  (p.ep > 1 ? rp.bytes.ep_buffers : rp.bytes.moe_scratch) += rows + wires;
  // the other layers' scratch: the rank's chunks share one MLA, Mlp and Linear scratch (Model's
  // sibling: their programs interleave only where none of it is live), each has its Block::Own
  const std::vector<int64_t> stages(rp.stages.begin(), rp.stages.end());
  rp.bytes.layer_scratch = layer_scratch_bytes(cfg.model, cfg.policy(), stages, p.stages,
                                               p.micro_batch * p.seq_len, 4, expert_load(cfg, p))
                               .total();
  int64_t wt = 0;  // per_call W^T: in the Linear scratch the rank's chunks share
  for (int stage : rp.stages) wt = std::max(wt, st[stage].wt_scratch);
  rp.bytes.layer_scratch += wt;
  if (p.pp > 1) {
    // the message pool serves the validation pass's forwards too (train.cpp validation_loss:
    // along the first route, as many micro-batches a pass)
    rp.messages = PipelineExecutor<float>::peak_message_buffers(s, r);
    if (cfg.run.eval_interval > 0)
      rp.messages = std::max(rp.messages,
                             PipelineExecutor<float>::peak_message_buffers(
                                 pipeline::make_forward_only(p.pp, p.microbatches, s.route[0]), r));
    rp.bytes.pp_messages = rp.messages * message;
  }
  return rp;
}

// The layout: world, ranks, the step's micro-batches; ConfigError when `world` is not the
// config's pp x dp or the layout is invalid (make_grid's checks).
void plan_layout(const Config& cfg, int world, Plan& p) {
  const ParallelConfig& par = cfg.parallel;
  const int64_t want = par.pp * par.dp;
  if (world == 0) world = static_cast<int>(want);
  if (world != want)
    throw ConfigError(
        cfg.source + ": --world " + std::to_string(world) +
        " does not match the layout: parallel.pp x parallel.dp = " + std::to_string(par.pp) +
        " x " + std::to_string(par.dp) + " = " + std::to_string(want) + " ranks");
  make_grid(cfg, world, 0);
  p.source = cfg.source;
  p.world = world, p.pp = static_cast<int>(par.pp), p.dp = static_cast<int>(par.dp);
  p.ep = static_cast<int>(par.ep), p.ranks_per_node = static_cast<int>(par.ranks_per_node);
  p.schedule = to_word(par.schedule);
  p.micro_batch = cfg.data.micro_batch_size, p.seq_len = cfg.data.seq_len;
  p.microbatches = static_cast<int>(cfg.data.global_batch_size / (p.micro_batch * p.dp));
  p.ep_rows =
      p.ep > 1 ? static_cast<double>(std::min<int64_t>(cfg.model.num_experts_per_tok, p.ep)) : 1.0;
  // the busiest rank's received tokens grow with its rows, up to every peer's every token
  p.ep_rows = std::min(p.ep_rows * p.ep_imbalance, static_cast<double>(p.ep));
  p.hardware = cfg.hardware.name, p.memory_gib = cfg.hardware.memory_gib;
}

// The plan at one expert-row imbalance (make_plan's, before the limit).
Plan plan_at(const Config& cfg, int world, double ep_imbalance) {
  if (!(ep_imbalance >= 1))
    throw ConfigError(cfg.source + ": ep_imbalance " + std::to_string(ep_imbalance) +
                      ": the busiest EP rank's expert rows over the mean, >= 1");
  Plan p;
  p.ep_imbalance = cfg.parallel.ep > 1 ? ep_imbalance : 1;
  plan_layout(cfg, world, p);
  const pipeline::Schedule s = plan_schedule(cfg, p);
  p.stages = s.stages;
  count_parameters(cfg, p);
  std::vector<StageCensus> st;
  try {
    for (int stage = 0; stage < p.stages; ++stage) st.push_back(census(cfg, p, stage));
  } catch (const std::invalid_argument& e) {  // layers that cannot be cut into the stages
    throw ConfigError(cfg.source + ": parallel.schedule " + p.schedule + ": " + e.what());
  }
  for (int r = 0; r < p.pp; ++r) p.ranks.push_back(plan_rank(cfg, p, s, r, st));
  return p;
}

}  // namespace

Plan make_plan(const Config& cfg, int world, double ep_imbalance) {
  Plan p = plan_at(cfg, world, ep_imbalance);
  if (p.ep > 1 && p.memory_known() && p.fits()) {
    // what each rank's memory grows by per unit of imbalance (linear, but for the received
    // tokens' cap: beyond it the growth is less, so the limit errs low)
    const Plan more = plan_at(cfg, world, p.ep_imbalance + 1);
    p.ep_imbalance_limit = std::numeric_limits<double>::infinity();
    for (size_t r = 0; r < p.ranks.size(); ++r) {
      const double now = static_cast<double>(p.ranks[r].bytes.total());
      const double slope = static_cast<double>(more.ranks[r].bytes.total()) - now;
      if (slope > 0)
        p.ep_imbalance_limit =
            std::min(p.ep_imbalance_limit,
                     p.ep_imbalance + (static_cast<double>(p.memory_bytes()) - now) / slope);
    }
    if (!std::isfinite(p.ep_imbalance_limit)) p.ep_imbalance_limit = 0;  // (no expert rows)
  }
  return p;
}

int64_t MemoryTerms::total() const {
  int64_t t = 0;
  for (const MemoryTermInfo& k : kMemoryTerms) t += this->*k.bytes;
  return t;
}

const RankPlan& Plan::peak() const {
  if (ranks.empty()) throw std::logic_error("Plan::peak: no ranks");
  const RankPlan* best = &ranks[0];
  for (const RankPlan& r : ranks)
    if (r.bytes.total() > best->bytes.total()) best = &r;
  return *best;
}

int64_t Plan::memory_bytes() const { return static_cast<int64_t>(memory_gib * (1 << 30)); }

namespace {

// "79.6 GiB", "46.5 MiB"
std::string gib(int64_t bytes) {
  char b[32];
  const double x = static_cast<double>(bytes);
  if (x >= (1 << 30))
    std::snprintf(b, sizeof b, "%.1f GiB", x / (1 << 30));
  else
    std::snprintf(b, sizeof b, "%.1f MiB", x / (1 << 20));
  return b;
}

// "stage 3", "stages 0 and 15"
std::string stage_list(const std::vector<int>& stages) {
  std::string out = stages.size() == 1 ? "stage " : "stages ";
  for (size_t i = 0; i < stages.size(); ++i)
    out += (i == 0 ? "" : i + 1 == stages.size() ? " and " : ", ") + std::to_string(stages[i]);
  return out;
}

// A term with how it is made up where that helps: "activations 98.1 GiB (17 micro-batch slots of
// up to 4.1 GiB + 2 gradient sets of 15.2 GiB)".
std::string term_text(const RankPlan& r, const MemoryTermInfo& t) {
  std::string out = std::string(t.key) + " " + gib(r.bytes.*t.bytes);
  if (t.bytes == &MemoryTerms::activations)
    out += " (" + std::to_string(r.slots) + " micro-batch slots of up to " + gib(r.slot_bytes) +
           " + " + std::to_string(r.grad_sets) + " gradient sets of " + gib(r.grad_set_bytes) + ")";
  if (t.bytes == &MemoryTerms::pp_messages && r.messages > 0)
    out += " (" + std::to_string(r.messages) + " messages)";
  return out;
}

}  // namespace

std::string plan_refusal(const Plan& p) {
  if (p.fits()) return "";
  const RankPlan& r = p.peak();
  const int64_t mem = p.memory_bytes(), total = r.bytes.total();
  std::string msg = p.source + ": the layout does not fit in device memory: pipeline rank " +
                    std::to_string(r.pp_rank) + " (" + stage_list(r.stages) + ") needs " +
                    gib(total) + " per device, the " +
                    (p.hardware.empty() ? std::string("device") : p.hardware) + " has " + gib(mem) +
                    " (hardware.memory_gib): over by " + gib(total - mem);
  std::vector<MemoryTermInfo> terms(kMemoryTerms.begin(), kMemoryTerms.end());
  std::stable_sort(terms.begin(), terms.end(), [&](const auto& a, const auto& b) {
    return r.bytes.*a.bytes > r.bytes.*b.bytes;
  });
  bool alone = false;
  for (const MemoryTermInfo& t : terms) {
    if (r.bytes.*t.bytes <= mem) continue;
    msg += "; the term " + std::string(t.key) + " (" + gib(r.bytes.*t.bytes) +
           ") alone exceeds the device by " + gib(r.bytes.*t.bytes - mem);
    alone = true;
  }
  if (!alone)
    msg += "; no term alone exceeds the device: the largest, " + std::string(terms[0].key) + " (" +
           gib(r.bytes.*terms[0].bytes) + "), would have to shrink by " + gib(total - mem);
  msg += ". Per device: ";
  bool first = true;
  for (const MemoryTermInfo& t : terms) {
    if (r.bytes.*t.bytes == 0) continue;
    msg += (first ? "" : ", ") + term_text(r, t);
    first = false;
  }
  return msg;
}

void check_memory(const Plan& p) {
  const std::string why = plan_refusal(p);
  if (!why.empty()) throw ConfigError(why);
}

void check_memory(const Config& cfg, int world) {
  if (cfg.hardware.memory_gib > 0) check_memory(make_plan(cfg, world));  // (unknown: no check)
}

}  // namespace moetron
