// The precision section (trainer/config.h PrecisionConfig -> model/precision.h PrecisionPolicy):
// defaults, the fp8 recipe and its per-component overrides, the FP8 scale and Dgrad-tile
// settings, the messages for bad values, the round trip through config_to_yaml, and what the
// resulting policy asks each component to run.
#include <gtest/gtest.h>

#include <optional>
#include <string>

#include "tests/test_config_util.h"
#include "trainer/config.h"

namespace moetron {
namespace {

using test::base_config;
using test::edit_yaml;
using test::error_of;
using test::kBaseYaml;

TEST(ConfigPrecision, DefaultsAreFp32WithSpecScalesAnd1x128Gradients) {
  const Config c = base_config();
  EXPECT_EQ(c.precision.recipe, Recipe::FP32);
  EXPECT_EQ(c.precision.fp8_pow2_scales, Pow2Scales::Spec);
  EXPECT_EQ(c.precision.fp8_dgrad_tile, DgradTile::Tile1x128);
  EXPECT_EQ(c.precision.fp8_weight_transpose, WeightTranspose::Cached);
  EXPECT_EQ(c.precision.overrides[Component::RoutedExpert], std::nullopt);
  const PrecisionPolicy p = c.precision.policy();
  EXPECT_FALSE(p.any_fp8());
  EXPECT_EQ(p.gemm(Component::AttentionProj), kernels::GemmPrecision::FP32);
  EXPECT_EQ(c.optimizer.moment_dtype, FloatFormat::FP32);  // AdamW moments: optimizer.moment_dtype
}

TEST(ConfigPrecision, Fp8RecipeSelectsTheLinearLayersOnly) {
  const PrecisionPolicy p = base_config({"precision.recipe=fp8"}).precision.policy();
  for (Component c : {Component::AttentionProj, Component::DenseMlp, Component::SharedExpert,
                      Component::RoutedExpert})
    EXPECT_TRUE(p.linear(c).fp8()) << PrecisionPolicy::key(c);
  // gate and head stay in higher precision (bf16 GEMMs)
  EXPECT_EQ(p.recipe_of(Component::Gate), Recipe::BF16);
  EXPECT_EQ(p.recipe_of(Component::Head), Recipe::BF16);
  EXPECT_EQ(p.gemm(Component::Head), kernels::GemmPrecision::BF16);
  // SPEC scales: pow2 only for o_proj's input and the experts' down-projection gradient
  const LinearPrecision plain = p.linear(Component::AttentionProj);
  EXPECT_FALSE(plain.pow2_x || plain.pow2_dy || plain.pow2_w || plain.dgrad_128x128);
  EXPECT_TRUE(p.linear(Component::AttentionProj, /*o_proj=*/true).pow2_x);
  EXPECT_TRUE(p.linear(Component::RoutedExpert, false, /*expert_down=*/true).pow2_dy);
}

TEST(ConfigPrecision, OverridesScalesAndTilesReachThePolicy) {
  const Config c =
      parse_config(edit_yaml(kBaseYaml, {{"precision.recipe", "fp8"},
                                         {"precision.fp8_pow2_scales", "all"},
                                         {"precision.fp8_dgrad_tile", "128x128"},
                                         {"precision.fp8_weight_transpose", "per_call"},
                                         {"precision.overrides.attention_proj", "bf16"},
                                         {"precision.overrides.head", "fp32"}}),
                   "test.yaml");
  const PrecisionPolicy p = c.precision.policy();
  EXPECT_EQ(p.weight_transpose, WeightTranspose::PerCall);
  EXPECT_EQ(p.recipe_of(Component::AttentionProj), Recipe::BF16);
  EXPECT_EQ(p.recipe_of(Component::DenseMlp), Recipe::FP8);
  EXPECT_EQ(p.gemm(Component::Head), kernels::GemmPrecision::FP32);
  const LinearPrecision e = p.linear(Component::RoutedExpert);
  EXPECT_TRUE(e.pow2_x && e.pow2_dy && e.pow2_w && e.dgrad_128x128);
  // and a bf16 run with only the routed experts in fp8 (--set works on the nested keys)
  const PrecisionPolicy q =
      base_config({"precision.recipe=bf16", "precision.overrides.routed_expert=fp8"})
          .precision.policy();
  EXPECT_EQ(q.recipe_of(Component::RoutedExpert), Recipe::FP8);
  EXPECT_EQ(q.recipe_of(Component::SharedExpert), Recipe::BF16);
  EXPECT_TRUE(q.any_fp8());
}

TEST(ConfigPrecision, BadValuesFailWithTheKeyAndTheChoices) {
  const std::string gate = error_of(edit_yaml(kBaseYaml, {{"precision.overrides.gate", "fp8"}}));
  EXPECT_NE(gate.find("precision.overrides.gate: must be one of {recipe, fp32, bf16}"),
            std::string::npos)
      << gate;
  const std::string head = error_of(edit_yaml(kBaseYaml, {{"precision.overrides.head", "fp8"}}));
  EXPECT_NE(head.find("precision.overrides.head: must be one of {recipe, fp32, bf16}"),
            std::string::npos)
      << head;
  const std::string comp =
      error_of(edit_yaml(kBaseYaml, {{"precision.overrides.routed_expert", "fp16"}}));
  EXPECT_NE(
      comp.find("precision.overrides.routed_expert: must be one of {recipe, fp32, bf16, fp8}"),
      std::string::npos)
      << comp;
  const std::string unknown =
      error_of(edit_yaml(kBaseYaml, {{"precision.overrides.lm_head", "bf16"}}));
  EXPECT_NE(unknown.find("precision.overrides.lm_head"), std::string::npos) << unknown;
  const std::string scales = error_of(kBaseYaml, {"precision.fp8_pow2_scales=true"});
  EXPECT_NE(scales.find("precision.fp8_pow2_scales: must be one of {spec, all, none}"),
            std::string::npos)
      << scales;
  const std::string tile = error_of(kBaseYaml, {"precision.fp8_dgrad_tile=128x1"});
  EXPECT_NE(tile.find("precision.fp8_dgrad_tile: must be one of {1x128, 128x128}"),
            std::string::npos)
      << tile;
  const std::string wt = error_of(kBaseYaml, {"precision.fp8_weight_transpose=on"});
  EXPECT_NE(wt.find("precision.fp8_weight_transpose: must be one of {cached, per_call}"),
            std::string::npos)
      << wt;
}

TEST(ConfigPrecision, ExpertRowAlignIs16ForFp8ExpertsOnAGpuUnlessSet) {
  // auto (0): cuBLASLt's FP8 alignment where the routed experts run FP8 on CUDA, else none
  EXPECT_EQ(base_config().precision.expert_row_align, 0);
  EXPECT_EQ(base_config({"precision.recipe=fp8"}).policy().expert_row_align, 1);  // on the CPU
  EXPECT_EQ(base_config({"precision.recipe=fp8", "run.device=cuda"}).policy().expert_row_align, 16);
  EXPECT_EQ(base_config({"precision.recipe=bf16", "run.device=cuda"}).policy().expert_row_align, 1);
  EXPECT_EQ(base_config({"precision.recipe=bf16", "precision.overrides.routed_expert=fp8",
                         "run.device=cuda"})
                .policy()
                .expert_row_align,
            16);
  EXPECT_EQ(base_config({"precision.recipe=fp8", "run.device=cuda",
                         "precision.overrides.routed_expert=bf16"})
                .policy()
                .expert_row_align,
            1);
  // set: as written, on any device and recipe
  EXPECT_EQ(base_config({"precision.expert_row_align=8"}).policy().expert_row_align, 8);
  for (const char* bad : {"precision.expert_row_align=-1", "precision.expert_row_align=257",
                          "precision.expert_row_align=16.5", "precision.expert_row_align=x"}) {
    const std::string e = error_of(kBaseYaml, {bad});
    EXPECT_NE(e.find("precision.expert_row_align"), std::string::npos) << bad << ": " << e;
  }
}

TEST(ConfigPrecision, WordsAndComponentsComeFromOneList) {
  // the choices in a message are the enum's word list; the overrides section is kComponents
  const std::string recipe = error_of(kBaseYaml, {"precision.recipe=int8"});
  std::string choices = "must be one of {";
  choices.append(word_list<Recipe>()).append("}");
  EXPECT_NE(recipe.find(choices), std::string::npos) << recipe;
  EXPECT_EQ(from_word<Recipe>("int8"), std::nullopt);
  EXPECT_EQ(from_word<Recipe>("fp8"), Recipe::FP8);
  const std::string yaml = config_to_yaml(base_config());
  for (const ComponentInfo& k : kComponents) {
    const std::string line = std::string(k.key).append(": recipe\n");
    EXPECT_NE(yaml.find(line), std::string::npos) << k.key;
  }
  // a policy made without a config: FP8 never reaches the gate, the head or the attention core
  PrecisionPolicy p = PrecisionPolicy::from(Recipe::BF16);
  p.overrides[Component::Gate] = Recipe::FP8;
  p.overrides[Component::Head] = Recipe::FP8;
  p.overrides[Component::AttentionCore] = Recipe::FP8;
  EXPECT_EQ(p.recipe_of(Component::Gate), Recipe::BF16);
  EXPECT_EQ(p.recipe_of(Component::Head), Recipe::BF16);
  EXPECT_EQ(p.gemm(Component::AttentionCore), kernels::GemmPrecision::BF16);
  EXPECT_FALSE(p.any_fp8());
  // and a config cannot ask for it: one message naming the key and the choices
  const std::string core = error_of(kBaseYaml, {"precision.overrides.attention_core=fp8"});
  EXPECT_NE(core.find("precision.overrides.attention_core: must be one of {recipe, fp32, bf16}"),
            std::string::npos)
      << core;
  // the fp8 recipe's attention core takes bf16 products unless told fp32
  EXPECT_EQ(PrecisionPolicy::from(Recipe::FP8).gemm(Component::AttentionCore),
            kernels::GemmPrecision::BF16);
  EXPECT_EQ(PrecisionPolicy::from(Recipe::FP32).gemm(Component::AttentionCore),
            kernels::GemmPrecision::FP32);
}

TEST(ConfigPrecision, RoundTripsThroughTheWrittenYaml) {
  const Config c =
      base_config({"precision.recipe=fp8", "precision.overrides.dense_mlp=bf16",
                   "precision.fp8_pow2_scales=none", "precision.fp8_weight_transpose=per_call"});
  const std::string yaml = config_to_yaml(c);
  EXPECT_NE(yaml.find("fp8_dgrad_tile"), std::string::npos);
  EXPECT_NE(yaml.find("fp8_weight_transpose: per_call"), std::string::npos);
  const Config back = parse_config(yaml, "written.yaml");
  EXPECT_TRUE(back == c);
  EXPECT_EQ(back.precision.overrides[Component::DenseMlp], Recipe::BF16);
  EXPECT_FALSE(back == base_config());
}

}  // namespace
}  // namespace moetron

namespace moetron {
namespace {

TEST(ConfigActivations, RecomputeAndStorageReachThePolicy) {
  const Config off = test::base_config();
  EXPECT_FALSE(off.policy().recompute_norms);
  EXPECT_FALSE(off.policy().recompute_mla_up);
  const Config on = test::base_config({"activations.recompute_norms=on",
                                       "activations.recompute_mla_up=on", "precision.recipe=fp8"});
  EXPECT_TRUE(on.policy().recompute_norms);
  EXPECT_TRUE(on.policy().recompute_mla_up);
  EXPECT_TRUE(on.policy().any_fp8());  // the precision part is carried along
  const std::string e = test::error_of(test::kBaseYaml, {"activations.recompute_norms=yes"});
  EXPECT_NE(e.find("activations.recompute_norms"), std::string::npos) << e;
  EXPECT_NE(e.find("off, on"), std::string::npos) << e;
  EXPECT_FALSE(off.policy().store_bf16);
  EXPECT_TRUE(test::base_config({"activations.storage=bf16"}).policy().store_bf16);
  EXPECT_FALSE(off.policy().attn_out_e5m6);  // as the storage says
  EXPECT_TRUE(test::base_config({"activations.attention_output=e5m6"}).policy().attn_out_e5m6);
  const std::string a = test::error_of(test::kBaseYaml, {"activations.attention_output=bf16"});
  EXPECT_NE(a.find("activations.attention_output"), std::string::npos) << a;
  EXPECT_NE(a.find("storage, e5m6"), std::string::npos) << a;
  // block inputs: fp32 by default; "storage" keeps them as the storage says (bf16 only then)
  EXPECT_FALSE(test::base_config({"activations.storage=bf16"}).policy().block_input_bf16);
  EXPECT_FALSE(test::base_config({"activations.block_input=storage"}).policy().block_input_bf16);
  EXPECT_TRUE(test::base_config({"activations.storage=bf16", "activations.block_input=storage"})
                  .policy()
                  .block_input_bf16);
  const std::string b = test::error_of(test::kBaseYaml, {"activations.block_input=bf16"});
  EXPECT_NE(b.find("activations.block_input"), std::string::npos) << b;
  EXPECT_NE(b.find("fp32, storage"), std::string::npos) << b;
  const std::string s = test::error_of(test::kBaseYaml, {"activations.storage=fp16"});
  EXPECT_NE(s.find("activations.storage"), std::string::npos) << s;
  EXPECT_NE(s.find("fp32, bf16"), std::string::npos) << s;
}

}  // namespace
}  // namespace moetron
