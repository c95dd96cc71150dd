// Unit tests of `moetron estimate` (trainer/estimate.h): compute is FLOPs over the calibrated
// efficiency on a dense config, the simulate()-based bubble of 1F1B is (P-1)(F+B), a DualPipe
// pair hides exchanges behind the other stream's compute, the routing respects the node limit,
// oversubscribed CPU ranks share the node's cores, the calibrated DeepSeek-V3 point reproduces
// its input, and bad input is one clear message.
#include <gtest/gtest.h>

#include <filesystem>
#include <string>
#include <vector>

#include "model/flops.h"
#include "trainer/config.h"
#include "trainer/estimate.h"

namespace moetron {
namespace {

// Loads a shipped config from the source root (configs name their profile from there).
Config load(const std::string& path, std::vector<std::string> sets) {
  const std::filesystem::path here = std::filesystem::current_path();
  std::filesystem::current_path(MOETRON_SOURCE_DIR);
  Config c;
  try {
    c = load_config(path, sets);
  } catch (...) {
    std::filesystem::current_path(here);
    throw;
  }
  std::filesystem::current_path(here);
  return c;
}

// A hand-written device: fp32 peak 1 TFLOP/s at efficiency 0.5, memory-bound work free.
std::vector<std::string> device(std::vector<std::string> sets) {
  for (const char* s :
       {"hardware.name=test", "hardware.peak_fp32_tflops=1", "hardware.gemm_efficiency=0.5",
        "hardware.hbm_gbs=1e12", "hardware.memory_efficiency=1", "hardware.nvlink_gbs=100",
        "hardware.comm_efficiency=1", "hardware.devices_per_node=8"})
    sets.push_back(s);
  return sets;
}

TEST(Estimate, DenseComputeIsFlopsOverEfficiency) {
  const Config c =
      load("configs/tiny.yaml",
           device({"model.first_k_dense_replace=4", "model.num_nextn_predict_layers=0"}));
  const Estimate e = make_estimate(c);
  ASSERT_EQ(e.stages.size(), 1u);
  const FlopsPerToken f = flops_per_token(c.model, c.data.seq_len);
  const double T = static_cast<double>(e.tokens_per_microbatch), rate = 0.5e12;
  const StageCost& s = e.stages[0];
  EXPECT_NEAR(s.f, T * f.forward() / rate, 1e-6 * s.f);
  EXPECT_NEAR(s.w, T * f.gemm_forward() / rate, 1e-6 * s.w);  // weight gradients: one more GEMM
  // backward: input and weight gradients, FlashAttention-style core, the head's logits again
  EXPECT_NEAR(s.b, T * (2 * f.gemm_forward() + 2.5 * f.attention_core + f.head) / rate, 1e-6 * s.b);
  EXPECT_EQ(s.f_ep, 0);
  EXPECT_EQ(s.op_f, s.f);
  // one rank: the step is every micro-batch's forward and backward, then the optimizer
  EXPECT_NEAR(e.makespan_s, e.plan.microbatches * (s.f + s.b), 1e-9);
  EXPECT_EQ(e.bubble_s, 0);
  EXPECT_NEAR(e.step_s, e.makespan_s + e.optimizer_s, 1e-12);
  EXPECT_NEAR(e.tokens_per_s_per_gpu, e.tokens_per_step / e.step_s, 1e-9);
  EXPECT_NEAR(e.gpu_hours_per_1e12_tokens, 1e12 / e.tokens_per_s_per_gpu / 3600, 1e-6);
}

TEST(Estimate, OneFOneBBubbleIsTheFormula) {
  // equal stages: dense blocks only, a vocabulary too small for the head to matter
  const int P = 4;
  const Config c = load("configs/tiny.yaml",
                        device({"model.first_k_dense_replace=8", "model.num_hidden_layers=8",
                                "model.num_nextn_predict_layers=0", "model.vocab_size=8",
                                "data.tokenizer=", "parallel.pp=4", "data.global_batch_size=64",
                                "data.micro_batch_size=4"}));
  const Estimate e = make_estimate(c);
  ASSERT_EQ(e.plan.pp, P);
  const StageCost& s = e.stages[1];
  const double formula = (P - 1) * (s.op_f + s.op_b + 2 * e.pp_message_s);
  EXPECT_NEAR(e.bubble_s, formula, 0.03 * formula);  // the ends' embedding and head
  EXPECT_NEAR(e.compute_s, e.plan.microbatches * (s.f + s.b), 0.01 * e.compute_s);
}

// A CPU node of 2 cores: up to 2 ranks each get 1/ranks of it; 8 ranks (PP4 x DP2) run a busy
// rank at one core and share the node's cores while computing (the core wait: the replay on
// shared cores beyond the critical path), never shorter than the one-core-per-rank pipeline.
TEST(Estimate, OversubscribedCpuRanksShareTheCores) {
  const auto cpu = [](const std::string& pp, const std::string& dp, const std::string& cores) {
    std::vector<std::string> s =
        device({"parallel.pp=" + pp, "parallel.dp=" + dp, "parallel.ep=" + dp,
                "data.global_batch_size=32", "data.micro_batch_size=4"});
    s.push_back("hardware.devices_per_node=0");  // after device()'s 8: a CPU node
    s.push_back("hardware.cores_per_node=" + cores);
    return make_estimate(load("configs/tiny.yaml", s));
  };
  const Estimate two = cpu("2", "1", "2"), unknown = cpu("2", "1", "0");
  EXPECT_DOUBLE_EQ(two.busy_share, 0.5);
  EXPECT_DOUBLE_EQ(two.step_s, unknown.step_s);  // ranks fit the cores: 1/ranks as before
  EXPECT_EQ(two.core_wait_s, 0);
  const Estimate eight = cpu("4", "2", "2");
  EXPECT_DOUBLE_EQ(eight.rank_share, 0.125);
  EXPECT_DOUBLE_EQ(eight.busy_share, 0.5);
  EXPECT_GT(eight.core_wait_s, 0);  // 8 ranks' work on 2 cores is longer than the critical path
  EXPECT_NEAR(eight.compute_s + eight.exposed_ep_s + eight.bubble_s + eight.core_wait_s,
              eight.makespan_s, 1e-9 * eight.makespan_s);
  EXPECT_LT(eight.step_s, cpu("4", "2", "0").step_s);  // a busy rank is faster than 1/8 of the node
}

// The busiest EP rank's skew (--ep-imbalance R): every EP rank waits (R - 1) x the routed
// experts' compute at each MoE layer's combine and again (x 2: input and weight gradients) at its
// dispatch's backward; a layout without EP has no one to wait for.
TEST(Estimate, EpImbalanceIsAWaitForTheBusiestRank) {
  const auto est = [](const std::string& ep, double r) {
    const Config c =
        load("configs/tiny.yaml", device({"parallel.dp=2", "parallel.ep=" + ep,
                                          "data.global_batch_size=32", "data.micro_batch_size=4"}));
    EstimateOptions o;
    o.ep_imbalance = r;
    return make_estimate(c, 0, o);
  };
  const Estimate base = est("2", 1), skew = est("2", 1.5);
  const Config c = load("configs/tiny.yaml", device({}));
  const FlopsPerToken ft = flops_per_token(c.model, c.data.seq_len);
  const double T = static_cast<double>(base.tokens_per_microbatch), rate = 0.5e12;
  const double nm = static_cast<double>(c.model.num_hidden_layers - c.model.first_k_dense_replace);
  const double routed = T * ft.moe_routed / nm / rate;  // one MoE layer's routed GEMMs, forward
  const StageCost &b = base.stages[0], &s = skew.stages[0];
  EXPECT_DOUBLE_EQ(s.f, b.f);  // compute unchanged: the wait is on the exchanges
  EXPECT_DOUBLE_EQ(s.b, b.b);
  EXPECT_NEAR(s.f_ep - b.f_ep, 0.5 * routed * s.moe_layers, 1e-9 * s.f_ep);
  EXPECT_NEAR(s.b_ep - b.b_ep, 0.5 * 2 * routed * s.moe_layers, 1e-9 * s.b_ep);
  EXPECT_NEAR(skew.exposed_ep_s - base.exposed_ep_s,
              skew.plan.microbatches * 1.5 * routed * s.moe_layers, 1e-6 * skew.exposed_ep_s);
  EXPECT_DOUBLE_EQ(skew.ep_imbalance, 1.5);
  const Estimate one = est("1", 1.5);  // no EP: nothing to wait for
  EXPECT_DOUBLE_EQ(one.ep_imbalance, 1);
  EXPECT_DOUBLE_EQ(one.step_s, est("1", 1).step_s);
  EXPECT_THROW(est("2", 0.9), ConfigError);
}

TEST(Estimate, PairsHideTheOtherStreamsExchanges) {
  std::vector<Piece> f(2), b(2);
  f[0].compute = b[0].compute = f[1].compute = b[1].compute = 1;
  f[0].exchange = b[0].exchange = 1;
  EXPECT_DOUBLE_EQ(run_alone(f), 3);
  EXPECT_DOUBLE_EQ(interleave(f, b), 4);  // every exchange behind the other stream's compute
  f[0].exchange = 5;
  EXPECT_DOUBLE_EQ(interleave(f, b), 8);  // B1 F1 B2, then F2 waits for its 5 s exchange
}

TEST(Estimate, RoutingRespectsTheNodeLimit) {
  const Config c = load("configs/deepseek-v3-671b.yaml", {});
  const Routing r = routing_stats(c.model, 64, 8, true);
  EXPECT_LE(r.remote_nodes, 4.0);  // topk_group 4 of 8 nodes
  EXPECT_GT(r.remote_nodes, 3.0);
  EXPECT_LE(r.ranks, 8.0);
  EXPECT_EQ(r.ib_rows, r.remote_nodes);  // node-limited: one row per node over IB
  EXPECT_EQ(routing_stats(c.model, 1, 8, true).ranks, 0);
}

TEST(Estimate, CalibratedDeepSeekV3ReproducesItsInput) {
  Config c = load("configs/deepseek-v3-671b.yaml", {"hardware.memory_gib=0"});
  const GemmEfficiency k = calibrate_gemm_efficiency(c, 1543);
  c.hardware.gemm_efficiency = k.bf16, c.hardware.gemm_efficiency_fp8 = k.fp8;
  const Estimate e = make_estimate(c);
  EXPECT_NEAR(e.tokens_per_s_per_gpu, 1543, 1.0);
  EXPECT_NEAR(e.gpu_hours_per_1e12_tokens, 180e3, 0.5e3);  // the published 180K
  // the shipped H800 profile carries the fitted factor
  const Estimate shipped =
      make_estimate(load("configs/deepseek-v3-671b.yaml", {"hardware.memory_gib=0"}));
  EXPECT_NEAR(shipped.tokens_per_s_per_gpu, 1543, 0.01 * 1543);
  EXPECT_NEAR(shipped.mfu, 0.407, 0.005);
}

TEST(Estimate, BadInputIsOneClearMessage) {
  try {  // the CPU profile leaves its figures unknown
    make_estimate(load("configs/tiny.yaml", {"hardware.profile=configs/hardware/cpu.yaml"}));
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("hardware.peak_fp32_tflops is 0"), std::string::npos);
  }
  try {
    make_estimate(load("configs/tiny.yaml", device({})), 3);
    FAIL() << "no error";
  } catch (const ConfigError& e) {
    EXPECT_NE(std::string(e.what()).find("--world 3"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moetron
