// Issue #14: the GEMM FLOPs one training step of configs/tiny.yaml's model executes, counted inside
// the GEMM ops (kernels/flop_counter.h), equal the GEMM terms of the model-FLOPs formula
// (model/flops.h) exactly, as integers: tokens x 3 x gemm_forward() — forward 2 FLOPs per matrix
// parameter a token passes through (K routed experts of E, the MTP module and its head included),
// backward twice that, attention cores excluded (not GEMM ops). One micro-batch of B sequences of
// S tokens runs forward, backward_input (weight gradients deferred) and backward_weight on the
// CPU, so each phase is checked on its own too. What is executed beyond the model FLOPs is
// recompute and is counted apart: the head's chunked backward computes its logits again (2 N D V
// per head), and activations.recompute_mla_up runs MLA's up-projections q_b and kv_b again in the
// backward. The fp32 and fp8 recipes give the same counts (the FP8 GEMMs count their shapes).
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "kernels/flop_counter.h"
#include "model/flops.h"
#include "model/model.h"
#include "trainer/config.h"

namespace moetron {
namespace {

namespace fc = kernels::flop_counter;
using kernels::GemmFlops;

// configs/tiny.yaml through the config loader, with a recipe and (optionally) the recompute of
// the norms and MLA up-projections.
Config tiny(const std::string& recipe, bool recompute) {
  const std::string on = recompute ? "on" : "off";
  return load_config(MOETRON_SOURCE_DIR "/configs/tiny.yaml",
                     {"precision.recipe=" + recipe, "activations.recompute_norms=" + on,
                      "activations.recompute_mla_up=" + on});
}

// A double of the formula that is an integer, as one (the test's equalities are exact).
int64_t exact(double x) {
  EXPECT_EQ(x, std::floor(x)) << x;
  EXPECT_LT(std::fabs(x), 9007199254740992.0);  // 2^53
  return static_cast<int64_t>(x);
}

struct StepCount {
  GemmFlops forward, backward_input, backward_weight;
  std::vector<int64_t> routed_rows;  // per MoE layer (main model, then MTP): the experts' rows
  int64_t model() const {
    return forward.model() + backward_input.model() + backward_weight.model();
  }
  int64_t recompute() const {
    return forward.recompute + backward_input.recompute + backward_weight.recompute;
  }
};

// One micro-batch through forward, backward_input (weight gradients deferred) and backward_weight,
// the counter read after each phase.
StepCount count_one_step(const Config& cfg, int64_t B, int64_t S) {
  Model<float> m(cfg.model, cfg.policy());
  m.init(cfg.run.seed);
  std::mt19937 g(7);
  std::vector<int32_t> tokens(B * (S + 1));
  for (auto& t : tokens) t = static_cast<int32_t>(g() % cfg.model.vocab_size);
  Model<float>::MicroBatch mb;
  StepCount c;
  fc::reset();
  fc::set_counting(true);
  m.forward(mb, tokens.data(), B, S, 0.3);
  c.forward = fc::read();
  fc::reset();
  m.backward_input(mb, 1.0, nullptr, /*defer_weight=*/true);
  c.backward_input = fc::read();
  fc::reset();
  m.backward_weight(mb);
  c.backward_weight = fc::read();
  fc::set_counting(false);
  fc::reset();
  for (const auto& b : mb.blocks)
    if (b.moe.N > 0) c.routed_rows.push_back(b.moe.A);
  for (const auto& k : mb.mtp) c.routed_rows.push_back(k.block.moe.A);
  return c;
}

// Forward GEMM FLOPs per token that are recomputed under activations.recompute_mla_up: q_b (or q
// without query compression) and kv_b of every block, the MTP module's included.
double mla_up_flops_per_token(const ModelConfig& c) {
  const double D = c.hidden_size, H = c.num_attention_heads,
               dq = c.qk_nope_head_dim + c.qk_rope_head_dim;
  const double q = c.q_lora_rank > 0 ? c.q_lora_rank * H * dq : D * H * dq;
  const double kv = c.kv_lora_rank * H * (c.qk_nope_head_dim + c.v_head_dim);
  return 2 * (q + kv) * static_cast<double>(c.num_hidden_layers + c.num_nextn_predict_layers);
}

void print_formula(const FlopsPerToken& f, int64_t N) {
  const double n = static_cast<double>(N);
  std::printf(
      "tiny.yaml, N = %lld tokens, training GEMM FLOPs by component (3 x N x forward): "
      "attention_proj %.0f, dense_ffn %.0f, moe_gate %.0f, moe_shared %.0f, moe_routed %.0f, "
      "head %.0f, mtp (GEMMs) %.0f; total %.0f\n",
      static_cast<long long>(N), 3 * n * f.attention_proj, 3 * n * f.dense_ffn, 3 * n * f.moe_gate,
      3 * n * f.moe_shared, 3 * n * f.moe_routed, 3 * n * f.head,
      3 * n * (f.mtp - f.mtp_attention_core), 3 * n * f.gemm_forward());
}

void expect_step_matches_formula(const std::string& recipe, bool recompute) {
  const Config cfg = tiny(recipe, recompute);
  const ModelConfig& c = cfg.model;
  const int64_t B = 2, S = cfg.data.seq_len, N = B * S;
  const FlopsPerToken f = flops_per_token(c, S);
  const StepCount got = count_one_step(cfg, B, S);
  const std::string what = recipe + (recompute ? " + recompute" : "");

  // every token went to K experts: the routed rows the formula assumes
  ASSERT_EQ(got.routed_rows.size(),
            static_cast<size_t>(c.num_hidden_layers - c.first_k_dense_replace +
                                c.num_nextn_predict_layers));
  for (int64_t rows : got.routed_rows) EXPECT_EQ(rows, N * c.num_experts_per_tok) << what;

  const double n = static_cast<double>(N);
  const int64_t fwd = exact(n * f.gemm_forward());
  // the heads' weight gradients come with their input gradients (one chunked pass)
  const int64_t heads = exact(n * 2.0 * c.hidden_size * c.vocab_size *
                              static_cast<double>(1 + c.num_nextn_predict_layers));
  const int64_t mla_up = recompute ? exact(n * mla_up_flops_per_token(c)) : 0;
  EXPECT_EQ(got.model(),
            exact(n * f.training() - 3 * n * (f.attention_core + f.mtp_attention_core)))
      << what;
  EXPECT_EQ(got.model(), 3 * fwd) << what;
  EXPECT_EQ(got.forward.executed, fwd) << what;
  EXPECT_EQ(got.forward.recompute, 0) << what;
  EXPECT_EQ(got.backward_input.model(), fwd + heads) << what;
  EXPECT_EQ(got.backward_input.recompute, heads + mla_up) << what;
  EXPECT_EQ(got.backward_weight.model(), fwd - heads) << what;
  EXPECT_EQ(got.backward_weight.recompute, 0) << what;
  EXPECT_EQ(got.recompute(), heads + mla_up) << what;
  std::printf(
      "%s: counted model GEMM FLOPs %lld (formula %lld; forward %lld, backward input %lld, "
      "backward weight %lld), recompute %lld (head logits %lld, MLA up-projections %lld), "
      "executed %lld\n",
      what.c_str(), static_cast<long long>(got.model()), static_cast<long long>(3 * fwd),
      static_cast<long long>(got.forward.model()),
      static_cast<long long>(got.backward_input.model()),
      static_cast<long long>(got.backward_weight.model()), static_cast<long long>(got.recompute()),
      static_cast<long long>(heads), static_cast<long long>(mla_up),
      static_cast<long long>(got.model() + got.recompute()));
  if (recipe == "fp32" && !recompute) print_formula(f, N);
}

TEST(FlopsCount, Fp32StepExecutesTheFormulasGemmFlopsExactly) {
  expect_step_matches_formula("fp32", false);
}

TEST(FlopsCount, Fp8StepCountsTheSameGemmFlops) { expect_step_matches_formula("fp8", false); }

// recompute_norms adds no GEMM; recompute_mla_up adds q_b and kv_b, counted as recompute only
TEST(FlopsCount, RecomputeIsExecutedButNotModelFlops) {
  expect_step_matches_formula("fp32", true);
  expect_step_matches_formula("fp8", true);
}

}  // namespace
}  // namespace moetron
