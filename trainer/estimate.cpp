// The estimator (see estimate.h): the work of every layer of a stage per micro-batch, priced on
// the profile, cut into the executor's pieces; op costs for simulate(); the step's tail; the
// figures a user buys GPU-hours by.
#include "trainer/estimate.h"

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <set>
#include <stdexcept>
#include <tuple>

#include "model/flops.h"
#include "model/model.h"
#include "parallel/schedule.h"

namespace moetron {

Work& Work::operator+=(const Work& o) {
  gemm_fp32 += o.gemm_fp32, gemm_bf16 += o.gemm_bf16, gemm_fp8 += o.gemm_fp8;
  attention += o.attention, attention_fp32 += o.attention_fp32, bytes += o.bytes;
  return *this;
}

Work Work::scaled(double k) const {
  return {gemm_fp32 * k, gemm_bf16 * k, gemm_fp8 * k, attention * k, attention_fp32 * k, bytes * k};
}

namespace {

constexpr double kMessageLatency = 20e-6;  // one PP message or exchange, seconds (a floor)

Work operator+(Work a, const Work& b) { return a += b; }

Work gemm(Recipe r, double flops) {
  Work w;
  (r == Recipe::FP8 ? w.gemm_fp8 : r == Recipe::BF16 ? w.gemm_bf16 : w.gemm_fp32) = flops;
  return w;
}

Work bytes(double b) {
  Work w;
  w.bytes = b;
  return w;
}

// Forward work per token of the model's parts (FLOPs from model/flops.h, divided per layer;
// memory-bound traffic counted as the element-wise passes each part makes, read + write).
struct TokenWork {
  Work attention;  // norms, MLA projections, RoPE, core, residual: the attention half
  Work dense_ffn;  // a dense layer's FFN half
  Work gate;       // a MoE layer's router and its ffn norm, permutation
  Work experts;    // shared + K routed experts, SwiGLU, combine, residual
  Work routed;     // of which the K routed experts' GEMMs (what an EP rank's skew scales)
  Work head;       // final norm, head, cross-entropy
  Work mtp_in;     // an MTP module's eh_proj and norms
  Work recompute;  // added to every block's backward (activations.recompute_*)
  double act = 4;  // bytes of an activation element
};

TokenWork token_work(const Config& cfg) {
  const ModelConfig& c = cfg.model;
  const PrecisionPolicy pol = cfg.policy();
  const FlopsPerToken f = flops_per_token(c, cfg.data.seq_len);
  const double L = static_cast<double>(c.num_hidden_layers), D = static_cast<double>(c.hidden_size);
  const double nd = static_cast<double>(c.first_k_dense_replace), nm = L - nd;
  const double H = static_cast<double>(c.num_attention_heads), ql = c.q_lora_rank * 1.0;
  const double kl = c.kv_lora_rank * 1.0, dr = c.qk_rope_head_dim * 1.0;
  const double dn = c.qk_nope_head_dim * 1.0, dv = c.v_head_dim * 1.0;
  const double K = c.num_experts_per_tok * 1.0, F = c.moe_intermediate_size * 1.0;
  const double V = c.vocab_size * 1.0, E = c.n_routed_experts * 1.0;
  TokenWork t;
  t.act = cfg.precision.recipe == Recipe::FP32 ? 4 : 2;
  const double a = t.act;
  const Recipe hi = pol.recipe_of(Component::Gate);  // bf16 or fp32: what is not FP8
  t.attention = gemm(pol.recipe_of(Component::AttentionProj), f.attention_proj / L) +
                bytes(a * (2 * (D + ql + kl) + 2 * (H * dr + dr) + 3 * D));
  (pol.recipe_of(Component::AttentionCore) == Recipe::FP32 ? t.attention.attention_fp32
                                                           : t.attention.attention) =
      f.attention_core / L;
  if (nd > 0)
    t.dense_ffn = gemm(pol.recipe_of(Component::DenseMlp), f.dense_ffn / nd) +
                  bytes(a * (2 * D + 3 * c.intermediate_size + 3 * D));
  if (nm > 0) {
    t.gate = gemm(hi, f.moe_gate / nm) + bytes(a * (2 * D + 2 * K * D) + 8 * E);
    t.routed = gemm(pol.recipe_of(Component::RoutedExpert), f.moe_routed / nm);
    t.experts = gemm(pol.recipe_of(Component::SharedExpert), f.moe_shared / nm) + t.routed +
                bytes(a * (3 * F * (K + c.n_shared_experts) + (K + 1) * D + 3 * D));
  }
  t.head = gemm(pol.recipe_of(Component::Head), f.head) + bytes(a * 2 * D + 3 * 4 * V);
  t.mtp_in = gemm(hi, 4 * D * D) + bytes(a * 8 * D);
  const double up = 2 * (ql > 0 ? ql : D) * H * (dn + dr) + 2 * kl * H * (dn + dv);
  if (cfg.activations.recompute_mla_up)
    t.recompute += gemm(pol.recipe_of(Component::AttentionProj), up);
  if (cfg.activations.recompute_norms) t.recompute += bytes(a * (6 * D + ql + kl));  // 4 norms
  return t;
}

// Seconds of `w` on the profile (peaks per rank: times `share` on a shared CPU node).
struct Pricer {
  const HardwareConfig& hw;
  double share = 1;
  double operator()(const Work& w) const {
    const double e = hw.gemm_efficiency, tf = 1e12 * share;
    double t = 0;
    if (w.gemm_fp32 > 0) t += w.gemm_fp32 / (hw.peak_fp32_tflops * tf * e);
    if (w.gemm_bf16 > 0) t += w.gemm_bf16 / (hw.peak_bf16_tflops * tf * e);
    if (w.gemm_fp8 > 0) t += w.gemm_fp8 / (hw.peak_fp8_tflops * tf * hw.gemm_efficiency_fp8);
    if (w.attention > 0) {  // a profile without a bf16 peak (a CPU's) runs it at its fp32 one
      const double peak = hw.peak_bf16_tflops > 0 ? hw.peak_bf16_tflops : hw.peak_fp32_tflops;
      t += w.attention / (peak * tf * e);
    }
    if (w.attention_fp32 > 0) t += w.attention_fp32 / (hw.peak_fp32_tflops * tf * e);
    if (w.bytes > 0) t += w.bytes / (hw.hbm_gbs * 1e9 * share * hw.memory_efficiency);
    return t;
  }
};

// The figures the estimate cannot do without, by what the config uses.
void check_profile(const Config& cfg, const Plan& p) {
  const HardwareConfig& hw = cfg.hardware;
  const PrecisionPolicy pol = cfg.policy();
  bool fp32 = cfg.precision.recipe == Recipe::FP32, bf16 = !fp32, fp8 = false;
  for (const ComponentInfo& c : kComponents) {
    const Recipe r = pol.recipe_of(c.id);
    fp32 |= r == Recipe::FP32, bf16 |= r == Recipe::BF16, fp8 |= r == Recipe::FP8;
  }
  const int rpn = p.ranks_per_node > 0 ? p.ranks_per_node : p.world;
  const bool links = p.world > 1, nodes = p.world > rpn;
  const std::vector<std::tuple<const char*, double, bool, const char*>> need = {
      {"peak_fp32_tflops", hw.peak_fp32_tflops, fp32, "fp32 GEMMs"},
      {"peak_bf16_tflops", hw.peak_bf16_tflops, bf16 && hw.devices_per_node > 0, "bf16 GEMMs"},
      {"peak_fp8_tflops", hw.peak_fp8_tflops, fp8, "FP8 GEMMs"},
      {"hbm_gbs", hw.hbm_gbs, true, "memory-bound kernels"},
      {"nvlink_gbs", hw.nvlink_gbs, links, "messages inside a node"},
      {"ib_gbs", hw.ib_gbs, nodes, "messages between nodes"},
      {"gemm_efficiency", hw.gemm_efficiency, true, "GEMMs and attention"},
      {"gemm_efficiency_fp8", hw.gemm_efficiency_fp8, fp8, "FP8 GEMMs"},
      {"memory_efficiency", hw.memory_efficiency, true, "memory-bound kernels"},
      {"comm_efficiency", hw.comm_efficiency, links, "communication"}};
  for (const auto& [key, value, used, what] : need)
    if (used && !(value > 0))
      throw ConfigError(cfg.source + ": hardware." + key + " is 0 (unknown" +
                        (hw.profile.empty() ? std::string() : " in " + hw.profile) +
                        "): moetron estimate needs it for " + what +
                        " (give it in the profile or with --set hardware." + key + "=...)");
  if (!fp32 && hw.peak_bf16_tflops <= 0 && hw.peak_fp32_tflops <= 0)
    throw ConfigError(cfg.source +
                      ": hardware.peak_bf16_tflops is 0 (unknown): moetron estimate "
                      "needs a peak for bf16 GEMMs");
}

}  // namespace

Routing routing_stats(const ModelConfig& m, int ep, int ep_ranks_per_node, bool node_limited,
                      int samples) {
  Routing r;
  if (ep <= 1) return r;
  const int E = static_cast<int>(m.n_routed_experts), K = static_cast<int>(m.num_experts_per_tok);
  const int G = std::max<int>(1, static_cast<int>(m.n_group));
  const int TG = G > 1 ? static_cast<int>(m.topk_group) : 1, per = E / G, epr = E / ep;
  const int rpn = std::max(1, ep_ranks_per_node);
  std::mt19937 rng(1234);
  std::normal_distribution<double> normal;
  std::vector<double> s(E), gs(G);
  std::vector<int> order(std::max(E, G));
  for (int t = 0; t < samples; ++t) {
    for (double& x : s) x = 1 / (1 + std::exp(-normal(rng)));
    for (int g = 0; g < G; ++g) {  // group score: the sum of its top two (one if alone)
      std::vector<double> in(s.begin() + g * per, s.begin() + (g + 1) * per);
      std::sort(in.rbegin(), in.rend());
      gs[g] = in[0] + (per > 1 ? in[1] : 0);
    }
    std::vector<int> groups(G);
    for (int g = 0; g < G; ++g) groups[g] = g;
    std::partial_sort(groups.begin(), groups.begin() + TG, groups.end(),
                      [&](int x, int y) { return gs[x] > gs[y]; });
    std::vector<int> cand;
    for (int i = 0; i < TG; ++i)
      for (int e = groups[i] * per; e < (groups[i] + 1) * per; ++e) cand.push_back(e);
    std::partial_sort(cand.begin(), cand.begin() + std::min<int>(K, static_cast<int>(cand.size())),
                      cand.end(), [&](int x, int y) { return s[x] > s[y]; });
    const int me = t % ep;
    std::set<int> ranks, nodes, remote_ranks;
    for (int i = 0; i < K && i < static_cast<int>(cand.size()); ++i) {
      const int dst = cand[i] / epr;
      if (dst == me) continue;
      ranks.insert(dst);
      if (dst / rpn != me / rpn) nodes.insert(dst / rpn), remote_ranks.insert(dst);
    }
    r.ranks += static_cast<double>(ranks.size());
    r.remote_nodes += static_cast<double>(nodes.size());
    r.ib_rows += static_cast<double>(node_limited ? nodes.size() : remote_ranks.size());
  }
  r.ranks /= samples, r.remote_nodes /= samples, r.ib_rows /= samples;
  return r;
}

double interleave(const std::vector<Piece>& fwd, const std::vector<Piece>& bwd) {
  double t = 0, link = 0;
  double ready[2] = {0, 0};  // 0: backward stream, 1: forward stream
  size_t next[2] = {0, 0};
  const std::vector<Piece>* stream[2] = {&bwd, &fwd};
  int turn = 0;
  while (next[0] < bwd.size() || next[1] < fwd.size()) {
    if (next[turn] >= stream[turn]->size()) turn ^= 1;
    const Piece& p = (*stream[turn])[next[turn]++];
    t = std::max(t, ready[turn]) + p.compute;
    ready[turn] = t;
    if (p.exchange > 0) {
      link = std::max(link, t) + p.exchange;
      ready[turn] = link;
    }
    turn ^= 1;
  }
  return std::max({t, ready[0], ready[1]});
}

double run_alone(const std::vector<Piece>& pieces) {
  double t = 0;
  for (const Piece& p : pieces) t += p.compute + p.exchange;
  return t;
}

namespace {

// Bytes per second of one rank's links after comm_efficiency: NVLink's published figure counts
// both directions; on a shared CPU node the copy bandwidth is shared too.
struct Links {
  double intra = 0, inter = 0;
};

Links links_of(const HardwareConfig& hw, double share) {
  return {hw.nvlink_gbs / 2 * 1e9 * hw.comm_efficiency * share,
          hw.ib_gbs * 1e9 * hw.comm_efficiency};
}

// The four exchanges of a MoE layer for one micro-batch (seconds on the wire).
struct Exchanges {
  double dispatch_f = 0, combine_f = 0, dispatch_b = 0, combine_b = 0;
};

// The wait for the busiest EP rank (Estimate::ep_imbalance) rides on the combine and on the
// backward of the dispatch: the exchanges that wait for its experts' rows.
Exchanges exchanges(const Config& cfg, const Estimate& e, const Links& l, const TokenWork& t,
                    const Pricer& price) {
  Exchanges x;
  if (e.plan.ep <= 1) return x;
  const double act = t.act;
  const double D = static_cast<double>(cfg.model.hidden_size), T = e.tokens_per_microbatch * 1.0;
  const auto time = [&](double row) {
    const double nv = T * e.routing.ranks * row / l.intra;
    const double ib = e.routing.ib_rows > 0 ? T * e.routing.ib_rows * row / l.inter : 0;
    return kMessageLatency + std::max(nv, ib);
  };
  const bool fp8 = cfg.policy().recipe_of(Component::RoutedExpert) == Recipe::FP8;
  x.dispatch_f = time(fp8 ? D + D / 128 * 4 : act * D);  // E4M3 codes + a scale per 128
  x.combine_f = x.dispatch_b = x.combine_b = time(act * D);
  const double skew = e.ep_imbalance - 1;
  x.combine_f += skew * price(t.routed.scaled(T));
  x.dispatch_b += skew * price(t.routed.scaled(2 * T));  // input and weight gradients
  return x;
}

// The backward of forward work: input and weight gradients of the GEMMs, the attention core's
// backward (2.5x, FlashAttention's), the element-wise passes twice.
Work backward_of(const Work& f) {
  Work b = f.scaled(2);
  b.attention = 2.5 * f.attention, b.attention_fp32 = 2.5 * f.attention_fp32;
  return b;
}

Work gemms_of(const Work& f) { return {f.gemm_fp32, f.gemm_bf16, f.gemm_fp8, 0, 0, 0}; }

// One stage's pieces: a piece closes where a MoE layer posts its dispatch, then its combine.
StageCost stage_cost(const Config& cfg, const TokenWork& t, const Pricer& price, const Exchanges& x,
                     int stage, int n_stages, double T) {
  const ModelConfig& c = cfg.model;
  StageCost sc;
  sc.stage = stage;
  const auto [b0, b1] = stage_blocks(c, StageSpec{stage, n_stages});
  sc.blocks = static_cast<int>(b1 - b0);
  std::vector<Work> fw, rec;
  std::vector<double> fx, bx;
  Work cur, cur_rec;
  const auto close = [&](double xf, double xb) {
    fw.push_back(cur), rec.push_back(cur_rec), fx.push_back(xf), bx.push_back(xb);
    cur = cur_rec = Work{};
  };
  const auto block = [&](int64_t l) {
    cur += t.attention, cur_rec += t.recompute;
    if (!c.is_moe_layer(l)) return void(cur += t.dense_ffn);
    cur += t.gate, close(x.dispatch_f, x.dispatch_b);
    cur += t.experts, close(x.combine_f, x.combine_b);
    ++sc.moe_layers;
  };
  if (stage == 0) cur += bytes(t.act * 2 * static_cast<double>(c.hidden_size));
  for (int64_t l = b0; l < b1; ++l) block(l);
  if (stage == n_stages - 1) {
    for (int64_t k = -1; k < c.num_nextn_predict_layers; ++k) {
      if (k >= 0) cur += t.mtp_in, block(c.num_hidden_layers + k);
      cur += t.head, cur_rec += gemms_of(t.head);  // the chunked CE recomputes its logits
    }
  }
  close(0, 0);
  const size_t n = fw.size();
  for (size_t i = 0; i < n; ++i) {
    sc.fwd.push_back({price(fw[i].scaled(T)), fx[i]});
    sc.f += sc.fwd.back().compute, sc.f_ep += fx[i];
    sc.w += price(gemms_of(fw[i]).scaled(T));
  }
  for (size_t j = 0; j < n; ++j) {
    const size_t i = n - 1 - j;
    sc.bwd.push_back({price((backward_of(fw[i]) + rec[i]).scaled(T)), i > 0 ? bx[i - 1] : 0});
    sc.b += sc.bwd.back().compute, sc.b_ep += sc.bwd.back().exchange;
  }
  sc.op_f = run_alone(sc.fwd), sc.op_b = run_alone(sc.bwd), sc.op_w = sc.w;
  sc.op_fb = interleave(sc.fwd, sc.bwd);
  return sc;
}

// A backward's pieces without the weight gradients (a pair or Bi that defers them to a W).
std::vector<Piece> input_only(const StageCost& s) {
  std::vector<Piece> out = s.bwd;
  const double k = s.b > 0 ? (s.b - s.w) / s.b : 1;
  for (Piece& p : out) p.compute *= k;
  return out;
}

// simulate() with the stages' op costs; the breakdown read off the busiest rank.
void replay_schedule(Estimate& e) {
  using pipeline::OpKind;
  const pipeline::Schedule sched =
      pipeline::make_schedule(e.plan.schedule, e.plan.pp, e.plan.microbatches);
  std::map<std::tuple<int, int, bool>, double> pairs;
  const auto pair = [&](const pipeline::Op& op) {
    const auto key = std::make_tuple(op.stage, op.stage2, op.defer_weight);
    if (!pairs.count(key)) {
      const StageCost& b = e.stages[op.stage2];
      pairs[key] = interleave(e.stages[op.stage].fwd, op.defer_weight ? input_only(b) : b.bwd);
    }
    return pairs[key];
  };
  const auto cost = [&](bool full, const pipeline::Op& op) -> double {
    const StageCost& s = e.stages[op.stage];
    switch (op.kind) {
      case OpKind::Forward:
        return full ? s.op_f : s.f;
      case OpKind::Backward:
        return full ? s.op_b : s.b;
      case OpKind::BackwardInput:
        return full ? s.op_b - s.op_w : s.b - s.w;
      case OpKind::BackwardWeight:
        return s.w;
      case OpKind::ForwardBackward: {
        const StageCost& b = e.stages[op.stage2];
        return full ? pair(op) : s.f + b.b - (op.defer_weight ? b.w : 0);
      }
      default:
        return 0;
    }
  };
  const pipeline::SimResult sim = pipeline::simulate(
      sched, [&](int, const pipeline::Op& op) { return cost(true, op); }, e.pp_message_s);
  const int r =
      static_cast<int>(std::max_element(sim.busy.begin(), sim.busy.end()) - sim.busy.begin());
  e.critical_rank = r;
  e.makespan_s = sim.makespan;
  e.compute_s = 0;
  for (const pipeline::Op& op : sched.per_rank[r]) e.compute_s += cost(false, op);
  e.exposed_ep_s = sim.busy[r] - e.compute_s;
  e.bubble_s = sim.makespan - sim.busy[r];
  // more ranks than cores: the schedule again on the node's cores, shared by the processes
  // computing at each moment (a waiting rank sleeps and takes none); the difference is the core
  // wait
  pipeline::SimResult shared;
  if (e.busy_share > e.rank_share) {
    const double replicas = static_cast<double>(std::min<int64_t>(e.ranks_per_node, e.plan.world)) /
                            static_cast<double>(sched.ranks);
    shared = pipeline::simulate_shared(
        sched, [&](int, const pipeline::Op& op) { return cost(false, op); },
        [&](int, const pipeline::Op& op) { return cost(true, op) - cost(false, op); },
        e.pp_message_s, 1 / e.busy_share, replicas);
    e.core_wait_s = std::max(0.0, shared.makespan - sim.makespan);
    e.makespan_s += e.core_wait_s;
  }
  const pipeline::SimResult& when = shared.end.empty() ? sim : shared;  // the timeline's replay
  static const char* const names[] = {"F", "B", "BI", "W", "F&B"};
  for (int rank = 0; rank < sched.ranks; ++rank)
    for (size_t i = 0; i < sched.per_rank[rank].size(); ++i) {
      const pipeline::Op& op = sched.per_rank[rank][i];
      if (op.is_message()) continue;
      const int k = op.kind == OpKind::Forward          ? 0
                    : op.kind == OpKind::Backward       ? 1
                    : op.kind == OpKind::BackwardInput  ? 2
                    : op.kind == OpKind::BackwardWeight ? 3
                                                        : 4;
      e.timeline.push_back(
          {rank, names[k], when.start[rank][i], when.end[rank][i], op.mb, op.stage, true});
    }
}

}  // namespace

namespace {

// ZeRO-1's reduce-scatter of gradients and all-gather of weights per rank (ring: (n-1)/n of the
// bytes each way), dense over DP and experts over EDP (DualPipe's twins double both groups), and
// 1f1b/zb1p's tied-embedding all-reduce; the slowest pipeline rank. Counted exposed, after the
// pipeline: an upper bound since the trainer starts the reduce-scatter during the last backward
// (optimizer.overlap_grad_reduce), which on the CPU hides little (docs/performance.md).
double dp_seconds(const Config& cfg, const Estimate& e, const Links& l) {
  const Plan& p = e.plan;
  const int rpn = e.ranks_per_node;
  const bool twins = p.schedule == "dualpipe";
  const double g = cfg.optimizer.grad_reduce_dtype == FloatFormat::BF16 ? 2 : 4;
  const auto ring = [&](double elems, double n, bool inter) {
    if (n <= 1 || elems <= 0) return 0.0;
    return kMessageLatency + elems * (g + 4) * (n - 1) / n / (inter ? l.inter : l.intra);
  };
  const bool inter = p.dp > rpn || (twins && p.world > rpn);
  double worst = 0;
  for (const RankPlan& r : p.ranks) {
    const double dense = static_cast<double>(r.params - r.params_expert);
    const double t =
        ring(dense, (twins ? 2 : 1) * p.dp, inter) +
        ring(static_cast<double>(r.params_expert), (twins ? 2 : 1) * (p.dp / p.ep), inter);
    worst = std::max(worst, t);
  }
  if (p.pp > 1 && !twins && p.schedule != "dualpipev") {  // the tied embedding, fp32
    const double emb = static_cast<double>(cfg.model.vocab_size * cfg.model.hidden_size);
    worst += kMessageLatency + emb * 4 / (p.world > rpn ? l.inter : l.intra);
  }
  return worst;
}

// AdamW over the owned elements: read weight, gradient, moments; write weight and moments.
double optimizer_seconds(const Config& cfg, const Estimate& e) {
  const double m = cfg.optimizer.moment_dtype == FloatFormat::BF16 ? 2 : 4;
  int64_t owned = 0;
  for (const RankPlan& r : e.plan.ranks) owned = std::max(owned, r.owned);
  const HardwareConfig& hw = cfg.hardware;
  return static_cast<double>(owned) * (4 + 4 + 2 * m + 4 + 2 * m) /
         (hw.hbm_gbs * 1e9 * e.rank_share * hw.memory_efficiency);
}

// Tokens/s per GPU, MFU, GPU-hours.
void summarise(const Config& cfg, Estimate& e) {
  const HardwareConfig& hw = cfg.hardware;
  e.step_s = e.makespan_s + e.dp_s + e.optimizer_s;
  for (int rank = 0; rank < e.plan.pp; ++rank) {  // the step's tail, after the pipeline
    e.timeline.push_back(
        {rank, "DP reduce-scatter, all-gather", e.makespan_s, e.makespan_s + e.dp_s, 0, 0, false});
    e.timeline.push_back({rank, "optimizer", e.makespan_s + e.dp_s, e.step_s, 0, 0, false});
  }
  e.tokens_per_s_per_gpu = static_cast<double>(e.tokens_per_step) / e.step_s / e.plan.world;
  const double model_tflops = e.tokens_per_s_per_gpu * e.flops_per_token / 1e12;
  const double bf16 = hw.peak_bf16_tflops > 0 ? hw.peak_bf16_tflops : hw.peak_fp32_tflops;
  e.mfu = bf16 > 0 ? model_tflops / (bf16 * e.rank_share) : 0;
  e.mfu_fp8 = hw.peak_fp8_tflops > 0 ? model_tflops / (hw.peak_fp8_tflops * e.rank_share) : 0;
  e.gpu_hours_per_1e12_tokens = 1e12 / e.tokens_per_s_per_gpu / 3600;
  e.run_tokens = static_cast<double>(cfg.run.steps) * static_cast<double>(e.tokens_per_step);
  e.run_gpu_hours = e.run_tokens / e.tokens_per_s_per_gpu / 3600;
}

}  // namespace

Estimate make_estimate(const Config& cfg, int world, const EstimateOptions& o) {
  Estimate e;
  // (make_plan refuses an imbalance below 1; its memory counts the busiest rank's rows)
  e.plan = make_plan(cfg, world, o.ep_imbalance);
  e.ep_imbalance = e.plan.ep > 1 ? o.ep_imbalance : 1;
  check_profile(cfg, e.plan);
  const HardwareConfig& hw = cfg.hardware;
  const Plan& p = e.plan;
  e.hardware = hw.name;
  e.ranks_per_node = p.ranks_per_node > 0 ? p.ranks_per_node : p.world;
  if (hw.devices_per_node == 0) {
    const int64_t ranks = std::min(e.ranks_per_node, p.world);
    e.rank_share = 1.0 / static_cast<double>(ranks);
    const int64_t cores = hw.cores_per_node > 0 ? hw.cores_per_node : ranks;
    e.busy_share = 1.0 / static_cast<double>(std::min(ranks, cores));
  }
  e.tokens_per_microbatch = p.micro_batch * p.seq_len;
  e.tokens_per_step = cfg.data.global_batch_size * cfg.data.seq_len;
  e.flops_per_token = flops_per_token(cfg.model, cfg.data.seq_len).training();
  const bool limited = cfg.parallel.max_nodes_per_token > 0;
  e.routing = routing_stats(cfg.model, p.ep, std::min(p.ep, e.ranks_per_node), limited);
  const Links l = links_of(hw, e.rank_share), busy = links_of(hw, e.busy_share);
  const TokenWork t = token_work(cfg);
  const Pricer price{hw, e.busy_share};
  const Exchanges x = exchanges(cfg, e, busy, t, price);
  for (int s = 0; s < p.stages; ++s)
    e.stages.push_back(
        stage_cost(cfg, t, price, x, s, p.stages, static_cast<double>(e.tokens_per_microbatch)));
  const double msg = static_cast<double>(e.tokens_per_microbatch * cfg.model.hidden_size) * t.act;
  const bool pp_inter =
      e.ranks_per_node > 0 && p.dp >= e.ranks_per_node && p.world > e.ranks_per_node;
  e.pp_message_s = p.pp > 1 ? kMessageLatency + msg / (pp_inter ? busy.inter : busy.intra) : 0;
  replay_schedule(e);
  e.dp_s = dp_seconds(cfg, e, l);
  e.optimizer_s = optimizer_seconds(cfg, e);
  summarise(cfg, e);
  return e;
}

GemmEfficiency calibrate_gemm_efficiency(Config cfg, double tokens_per_s_per_gpu, int world,
                                         const EstimateOptions& o) {
  HardwareConfig& hw = cfg.hardware;
  const GemmEfficiency prior{hw.gemm_efficiency, hw.gemm_efficiency_fp8};
  if (!(prior.bf16 > 0)) make_estimate(cfg, world, o);  // its message names the missing factor
  const double fp8 = prior.fp8 > 0 ? prior.fp8 : prior.bf16;
  const auto rate = [&](double k) {
    hw.gemm_efficiency = prior.bf16 * k, hw.gemm_efficiency_fp8 = fp8 * k;
    return make_estimate(cfg, world, o).tokens_per_s_per_gpu;
  };
  double lo = 1e-4, hi = 1 / std::max(prior.bf16, fp8);  // neither factor above 1
  if (rate(hi) < tokens_per_s_per_gpu)
    throw ConfigError(cfg.source + ": calibration: " + std::to_string(tokens_per_s_per_gpu) +
                      " tokens/s/GPU is out of reach even with GEMMs at their peak: the other "
                      "factors or the layout's overheads are too pessimistic");
  for (int i = 0; i < 60; ++i) {
    const double mid = std::sqrt(lo * hi);
    (rate(mid) < tokens_per_s_per_gpu ? lo : hi) = mid;
  }
  return {prior.bf16 * hi, fp8 * hi};
}

}  // namespace moetron
