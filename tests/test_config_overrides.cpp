// `--set key.path=value` overrides: the value is YAML (so types follow the text), overrides go
// through the same checks as the file, and every error caused by an override names it.
#include <gtest/gtest.h>

#include <string>

#include "tests/test_config_util.h"
#include "trainer/config.h"

namespace moetron {
namespace {

using test::base_config;
using test::error_of;
using test::kBaseYaml;

TEST(ConfigSet, TypesFollowTheText) {
  const Config c = base_config({"model.hidden_size=512", "run.dir=runs/x", "schedule.lr.peak=2e-3",
                                "precision.recipe=bf16"});
  EXPECT_EQ(c.model.hidden_size, 512);
  EXPECT_EQ(c.run.dir, "runs/x");
  EXPECT_EQ(c.schedule.lr.peak, 2e-3);
  EXPECT_EQ(c.precision.recipe, Recipe::BF16);
}

TEST(ConfigSet, CreatesMissingSections) {
  // The base has no rope_scaling, optimizer or run section.
  const Config c =
      base_config({"model.rope_scaling.factor=4", "optimizer.beta1=0.8", "run.steps=7"});
  EXPECT_EQ(c.model.yarn_factor, 4.0);
  EXPECT_EQ(c.optimizer.beta1, 0.8);
  EXPECT_EQ(c.optimizer.beta2, 0.95);
  EXPECT_EQ(c.run.steps, 7);
}

TEST(ConfigSet, ReplacesNullSection) {
  const Config c = parse_config(std::string(kBaseYaml) + "run: ~\n", "test.yaml", {"run.steps=9"});
  EXPECT_EQ(c.run.steps, 9);
}

TEST(ConfigSet, WholeSectionsAndLists) {
  const Config c = base_config(
      {"optimizer={beta1: 0.8, moment_dtype: bf16, grad_reduce_dtype: bf16}",
       "schedule.mtp_weight=[{until: 5, value: 1}, {value: 2}]", "schedule.bias_update_speed=0"});
  EXPECT_EQ(c.optimizer.beta1, 0.8);
  EXPECT_EQ(c.optimizer.moment_dtype, FloatFormat::BF16);
  EXPECT_EQ(c.optimizer.grad_reduce_dtype, FloatFormat::BF16);
  EXPECT_EQ(c.schedule.mtp_weight.until, std::vector<double>{5});
  EXPECT_EQ(c.schedule.mtp_weight.values, (std::vector<double>{1, 2}));
  EXPECT_EQ(c.schedule.bias_update_speed.values, std::vector<double>{0});
}

TEST(ConfigSet, LastOneWinsAndValueMayContainEquals) {
  const Config c = base_config({"run.steps=5", "run.steps=6", "run.dir=a=b"});
  EXPECT_EQ(c.run.steps, 6);
  EXPECT_EQ(c.run.dir, "a=b");
}

TEST(ConfigSet, EmptyValueClearsAString) {
  const Config c = parse_config(test::edit_yaml(kBaseYaml, {{"data.valid_path", "v.h5"}}),
                                "test.yaml", {"data.valid_path="});
  EXPECT_EQ(c.data.valid_path, "");
}

TEST(ConfigSet, OverridesTheFile) {
  const Config c =
      load_config(MOETRON_SOURCE_DIR "/configs/tiny.yaml",
                  {"model.hidden_size=128", "parallel.dp=2", "data.global_batch_size=32"});
  EXPECT_EQ(c.model.hidden_size, 128);
  EXPECT_EQ(c.parallel.dp, 2);
}

struct SetCase {
  std::string set;
  std::string message;  // expected what(), after "test.yaml: "
};

std::ostream& operator<<(std::ostream& os, const SetCase& c) { return os << c.set; }

class BadSet : public ::testing::TestWithParam<SetCase> {};

TEST_P(BadSet, NamesTheOverride) {
  EXPECT_EQ(error_of(kBaseYaml, {"run.steps=3", GetParam().set}),
            "test.yaml: " + GetParam().message);
}

INSTANTIATE_TEST_SUITE_P(
    Errors, BadSet,
    ::testing::Values(
        SetCase{"model.hidden_size",
                "--set model.hidden_size: malformed override, expected key.path=value"},
        SetCase{"=5", "--set =5: malformed key path \"\", expected names joined by '.'"},
        SetCase{"model..x=1",
                "--set model..x=1: malformed key path \"model..x\", expected names joined by '.'"},
        SetCase{"model.=1",
                "--set model.=1: malformed key path \"model.\", expected names joined by '.'"},
        SetCase{"model.hiden_size=512",
                "--set model.hiden_size=512: unknown key model.hiden_size (did you mean "
                "hidden_size?)"},
        SetCase{"modle.hidden_size=1",
                "--set modle.hidden_size=1: unknown key modle (did you mean model?)"},
        SetCase{"model.hidden_size.x=1",
                "--set model.hidden_size.x=1: model.hidden_size is a single setting, it has no "
                "key x"},
        SetCase{"model.hidden_size=abc",
                "--set model.hidden_size=abc: model.hidden_size: expected an integer, got the "
                "string \"abc\""},
        SetCase{"model.num_hidden_layers=2.5",
                "--set model.num_hidden_layers=2.5: model.num_hidden_layers: expected an "
                "integer, got 2.5"},
        SetCase{"model.hidden_size=",
                "--set model.hidden_size=: model.hidden_size: expected an integer, got nothing "
                "(null)"},
        SetCase{"model.n_group=5",
                "--set model.n_group=5: model.n_group: must divide model.n_routed_experts (16), "
                "got 5"},
        SetCase{"precision.recipe=fp16",
                "--set precision.recipe=fp16: precision.recipe: must be one of {fp32, bf16, fp8}, "
                "got \"fp16\""},
        SetCase{"optimizer={beta1: 0.8, bta2: 0.9}",
                "--set optimizer={beta1: 0.8, bta2: 0.9}: unknown key optimizer.bta2 (did you "
                "mean beta2?)"},
        SetCase{"model.rope_scaling=5",
                "--set model.rope_scaling=5: model.rope_scaling: expected a mapping, got 5"},
        SetCase{"schedule.mtp_weight=[{until: 5, value: 1}, {until: 5, value: 2}]",
                "--set schedule.mtp_weight=[{until: 5, value: 1}, {until: 5, value: 2}]: "
                "schedule.mtp_weight[1].until: must be > schedule.mtp_weight[0].until (5) "
                "(strictly increasing), got 5"}));

TEST(ConfigSet, YamlSyntaxErrorInValue) {
  const std::string msg = error_of(kBaseYaml, {"model.hidden_size=[1,"});
  EXPECT_EQ(msg.rfind("test.yaml: --set model.hidden_size=[1,: value: YAML syntax error at line 1,"
                      " column ",
                      0),
            0u)
      << msg;
}

TEST(ConfigSet, FileErrorsAreNotBlamedOnOverrides) {
  const std::string yaml = test::edit_yaml(kBaseYaml, {{"model.n_group", "5"}});
  EXPECT_EQ(error_of(yaml, {"model.hidden_size=128", "model.rope_scaling.factor=2"}),
            "test.yaml: model.n_group: must divide model.n_routed_experts (16), got 5");
}

TEST(ConfigSet, RuleErrorsNameTheOverrideOfAnyInput) {
  // beta_fast comes from the defaults; the override of beta_slow broke the rule.
  EXPECT_EQ(error_of(kBaseYaml, {"model.rope_scaling.factor=2", "model.rope_scaling.beta_slow=40"}),
            "test.yaml: --set model.rope_scaling.beta_slow=40: model.rope_scaling.beta_fast: must "
            "be > model.rope_scaling.beta_slow (40), got 32");
  EXPECT_EQ(error_of(kBaseYaml, {"model.n_routed_experts=15"}),
            "test.yaml: --set model.n_routed_experts=15: model.n_group: must divide "
            "model.n_routed_experts (15), got 4");
  EXPECT_EQ(error_of(kBaseYaml, {"parallel.dp=4"}),
            "test.yaml: --set parallel.dp=4: data.global_batch_size: must be a positive multiple "
            "of data.micro_batch_size x parallel.dp (8 x 4 = 32), got 16");
}

}  // namespace
}  // namespace moetron
