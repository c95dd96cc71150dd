// FLOPs per token (model/flops.h): DeepSeek-V3's published figure, and every GEMM term equal to
// twice the matrix parameters a token passes through, counted from the model built on the meta
// device (so the formula and the model cannot drift apart).
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "model/flops.h"
#include "model/model.h"
#include "tests/deepseek_v3_config.h"

using namespace moetron;

namespace {

bool has(const std::string& s, const char* part) { return s.find(part) != std::string::npos; }

// 2 x the matrix parameters per token of each component, from the model's own parameters.
FlopsPerToken from_parameters(const ModelConfig& c) {
  Model<float> m(c, PrecisionPolicy{}, nullptr, StageSpec{}, Exec::on(Device::Meta));
  const std::string mtp_prefix = "model.layers." + std::to_string(c.num_hidden_layers) + ".";
  FlopsPerToken f;
  double routed_main = 0, routed_mtp = 0;
  for (const auto& p : m.params().all()) {
    if (p->value.ndim() != 2) continue;  // norms and the expert bias do no matrix product
    const std::string& n = p->name;
    const double x = 2.0 * static_cast<double>(p->numel());
    if (n == "model.embed_tokens.weight") continue;  // a lookup
    if (n == "lm_head.weight") {
      f.head += x;
      f.mtp += x * static_cast<double>(c.num_nextn_predict_layers);  // each MTP module's head
    } else if (n.rfind(mtp_prefix, 0) == 0) {
      if (has(n, ".mlp.experts."))
        routed_mtp += x;
      else
        f.mtp += x;
    } else if (has(n, ".self_attn.")) {
      f.attention_proj += x;
    } else if (has(n, ".mlp.experts.")) {
      routed_main += x;
    } else if (has(n, ".mlp.shared_experts.")) {
      f.moe_shared += x;
    } else if (has(n, ".mlp.gate.weight")) {
      f.moe_gate += x;
    } else if (has(n, ".mlp.")) {
      f.dense_ffn += x;
    } else {
      ADD_FAILURE() << "parameter not attributed to a component: " << n;
    }
  }
  // a token passes through K of the E routed experts of each MoE layer
  const double share = static_cast<double>(c.num_experts_per_tok) / c.n_routed_experts;
  f.moe_routed = routed_main * share;
  f.mtp += routed_mtp * share;
  return f;
}

void expect_gemm_terms_match_parameters(const ModelConfig& c, int64_t S) {
  const FlopsPerToken f = flops_per_token(c, S), p = from_parameters(c);
  EXPECT_DOUBLE_EQ(f.attention_proj, p.attention_proj);
  EXPECT_DOUBLE_EQ(f.dense_ffn, p.dense_ffn);
  EXPECT_DOUBLE_EQ(f.moe_gate, p.moe_gate);
  EXPECT_DOUBLE_EQ(f.moe_shared, p.moe_shared);
  EXPECT_DOUBLE_EQ(f.moe_routed, p.moe_routed);
  EXPECT_DOUBLE_EQ(f.head, p.head);
  EXPECT_DOUBLE_EQ(f.mtp - f.mtp_attention_core, p.mtp);
  EXPECT_DOUBLE_EQ(f.gemm_forward(), p.forward());
}

}  // namespace

// DESIGN-NOTES Part B §3.2: 2.606e11 training FLOPs per token at seq 4096 (causal, with MTP),
// 2.505e11 without MTP, 2.92e11 counting full-S attention; the attention core about 12%.
TEST(ModelFlops, DeepSeekV3MatchesThePublishedFigure) {
  ModelConfig c = deepseek_v3_config();
  const FlopsPerToken f = flops_per_token(c, 4096);
  std::printf("DeepSeek-V3, seq 4096: %.4e training FLOPs/token (%.4e without MTP)\n", f.training(),
              3 * (f.forward() - f.mtp));
  EXPECT_NEAR(f.training(), 2.606e11, 0.005 * 2.606e11);
  EXPECT_NEAR(3 * (f.forward() - f.mtp), 2.505e11, 0.005 * 2.505e11);
  // full-S attention at 4096 counts what the causal count does at 8192 (S/2 keys)
  const double full_s = flops_per_token(c, 2 * 4096).training();
  EXPECT_NEAR(full_s, 2.92e11, 0.005 * 2.92e11);
  EXPECT_NEAR(f.attention_core / f.forward(), 0.12, 0.01);
  // activated matrix parameters per token: main model 36.62B (head included), MTP 1.61B
  EXPECT_NEAR((f.gemm_forward() - (f.mtp - f.mtp_attention_core)) / 2, 36.62e9, 0.01e9);
  EXPECT_NEAR((f.mtp - f.mtp_attention_core) / 2, 1.61e9, 0.01e9);
}

TEST(ModelFlops, GemmTermsAreTwiceTheMatrixParametersATokenPassesThrough) {
  ModelConfig tiny;  // ModelConfig's defaults: a small model with every kind of layer
  expect_gemm_terms_match_parameters(tiny, 128);
  ModelConfig no_q_lora = tiny;  // a single q_proj
  no_q_lora.q_lora_rank = 0, no_q_lora.first_k_dense_replace = 2, no_q_lora.n_shared_experts = 2;
  expect_gemm_terms_match_parameters(no_q_lora, 64);
  ModelConfig no_mtp = tiny;
  no_mtp.num_nextn_predict_layers = 0;
  expect_gemm_terms_match_parameters(no_mtp, 128);
  expect_gemm_terms_match_parameters(deepseek_v3_config(), 4096);
}

// The attention core grows linearly with the sequence; nothing else depends on it.
TEST(ModelFlops, OnlyTheAttentionCoreDependsOnTheSequenceLength) {
  const ModelConfig c;
  const FlopsPerToken a = flops_per_token(c, 128), b = flops_per_token(c, 256);
  EXPECT_DOUBLE_EQ(b.attention_core, 2 * a.attention_core);
  EXPECT_DOUBLE_EQ(b.mtp_attention_core, 2 * a.mtp_attention_core);
  EXPECT_DOUBLE_EQ(b.gemm_forward(), a.gemm_forward());
}

// The default pipeline cut (balanced_stage_starts): the largest stage, the last one carrying the
// head and the MTP modules, is as small as any contiguous cut with a layer per stage can make it
// (checked against every cut of small models); the stages' FLOPs add up to the model's; and
// DeepSeek-V3 on 16 stages gets 4 layers per stage and one beside the head and MTP (which weigh
// about 3 MoE layers).
TEST(ModelFlops, BalancedStageCutMinimisesTheLargestStage) {
  const auto largest = [](const ModelConfig& c, const std::vector<int64_t>& starts, int64_t S) {
    double worst = 0;
    for (size_t s = 0; s < starts.size(); ++s) {
      const bool last = s + 1 == starts.size();
      const int64_t end = last ? c.num_hidden_layers : starts[s + 1];
      worst = std::max(worst, stage_forward_flops(c, starts[s], end, last, S));
    }
    return worst;
  };
  for (const int64_t L : {4, 6, 9}) {
    ModelConfig c;
    c.num_hidden_layers = L, c.vocab_size = 4096;  // a heavy head: the last stage gets fewer
    for (int64_t P = 1; P <= 3; ++P) {
      const std::vector<int64_t> cut = balanced_stage_starts(c, P, 64);
      ASSERT_EQ(static_cast<int64_t>(cut.size()), P);
      EXPECT_EQ(cut.front(), 0);
      double best = 1e300, total = 0;
      // every cut: P-1 increasing boundaries in 1..L-1
      for (int64_t mask = 0; mask < (int64_t{1} << (L - 1)); ++mask) {
        if (__builtin_popcountll(static_cast<unsigned long long>(mask)) != P - 1) continue;
        std::vector<int64_t> starts{0};
        for (int64_t b = 1; b < L; ++b)
          if (mask >> (b - 1) & 1) starts.push_back(b);
        best = std::min(best, largest(c, starts, 64));
      }
      EXPECT_DOUBLE_EQ(largest(c, cut, 64), best) << "L " << L << " P " << P;
      for (size_t s = 0; s < cut.size(); ++s) {
        const bool last = s + 1 == cut.size();
        total += stage_forward_flops(c, cut[s], last ? L : cut[s + 1], last, 64);
      }
      EXPECT_NEAR(total, flops_per_token(c, 64).forward(), 1e-9 * total);
    }
  }
  const ModelConfig v3 = deepseek_v3_config();
  std::vector<int64_t> want;
  for (int64_t s = 0; s < 16; ++s) want.push_back(s < 15 ? 4 * s : 60);
  EXPECT_EQ(balanced_stage_starts(v3, 16, 4096), want);
  EXPECT_TRUE(balanced_stage_starts(v3, 62, 4096).empty());  // more stages than layers
}
