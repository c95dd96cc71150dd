// Loading the shipped configs and writing configs back: configs/tiny.yaml gives the documented
// values, configs/small.yaml loads, and config_to_yaml writes every setting in a form that
// parse_config reads back to an equal Config.
#include <gtest/gtest.h>

#include <string>

#include "tests/test_config_util.h"
#include "trainer/config.h"

namespace moetron {
namespace {

const std::string kTiny = MOETRON_SOURCE_DIR "/configs/tiny.yaml";
const std::string kSmall = MOETRON_SOURCE_DIR "/configs/small.yaml";

TEST(ConfigTiny, ModelFields) {
  const Config c = load_config(kTiny);
  EXPECT_EQ(c.source, kTiny);
  const ModelConfig& m = c.model;
  EXPECT_EQ(m.vocab_size, 8192);
  EXPECT_EQ(m.hidden_size, 256);
  EXPECT_EQ(m.intermediate_size, 768);
  EXPECT_EQ(m.moe_intermediate_size, 128);
  EXPECT_EQ(m.num_hidden_layers, 4);
  EXPECT_EQ(m.first_k_dense_replace, 1);
  EXPECT_EQ(m.num_attention_heads, 4);
  EXPECT_EQ(m.n_routed_experts, 16);
  EXPECT_EQ(m.n_shared_experts, 1);
  EXPECT_EQ(m.num_experts_per_tok, 4);
  EXPECT_EQ(m.n_group, 4);
  EXPECT_EQ(m.topk_group, 2);
  EXPECT_EQ(m.routed_scaling_factor, 2.5);
  EXPECT_EQ(m.q_lora_rank, 96);
  EXPECT_EQ(m.kv_lora_rank, 64);
  EXPECT_EQ(m.qk_nope_head_dim, 32);
  EXPECT_EQ(m.qk_rope_head_dim, 16);
  EXPECT_EQ(m.v_head_dim, 32);
  EXPECT_EQ(m.num_nextn_predict_layers, 1);
  EXPECT_EQ(m.rope_theta, 10000.0);
  EXPECT_EQ(m.rms_norm_eps, 1e-6);
  EXPECT_EQ(m.init_std, 0.02);
  EXPECT_EQ(m.max_seq_len, 128);  // unset: data.seq_len
  EXPECT_EQ(m.yarn_factor, 1.0);  // no rope_scaling: YaRN off
  EXPECT_EQ(m.seq_aux_alpha, 1e-4);
}

TEST(ConfigTiny, OtherSections) {
  const Config c = load_config(kTiny);
  EXPECT_EQ(c.data.train_path, "data/cache/sotu/train");
  EXPECT_EQ(c.data.valid_path, "data/cache/sotu/valid");
  EXPECT_EQ(c.data.seq_len, 128);
  EXPECT_EQ(c.data.micro_batch_size, 8);
  EXPECT_EQ(c.data.global_batch_size, 16);
  EXPECT_EQ(c.optimizer.beta1, 0.9);
  EXPECT_EQ(c.optimizer.beta2, 0.95);
  EXPECT_EQ(c.optimizer.eps, 1e-8);
  EXPECT_EQ(c.optimizer.weight_decay, 0.1);
  EXPECT_EQ(c.optimizer.grad_clip, 1.0);
  EXPECT_EQ(c.optimizer.moment_dtype, FloatFormat::FP32);
  EXPECT_EQ(c.optimizer.grad_reduce_dtype, FloatFormat::FP32);
  EXPECT_EQ(c.schedule.unit, ScheduleUnit::Steps);
  EXPECT_FALSE(c.schedule.tokens());
  EXPECT_EQ(c.schedule.lr.peak, 3e-3);
  EXPECT_EQ(c.schedule.lr.warmup_steps, 20);
  EXPECT_EQ(c.schedule.lr.constant_until, 150);
  EXPECT_EQ(c.schedule.lr.decay_until, 300);
  EXPECT_EQ(c.schedule.lr.min_lr, 3e-4);
  EXPECT_TRUE(c.schedule.lr.tails.values.empty());
  EXPECT_EQ(c.schedule.bias_update_speed.values, std::vector<double>{0.001});
  EXPECT_TRUE(c.schedule.bias_update_speed.until.empty());
  EXPECT_EQ(c.schedule.mtp_weight.until, std::vector<double>{200});
  EXPECT_EQ(c.schedule.mtp_weight.values, (std::vector<double>{0.3, 0.1}));
  EXPECT_EQ(c.parallel.pp, 1);
  EXPECT_EQ(c.parallel.dp, 1);
  EXPECT_EQ(c.parallel.ep, 1);
  EXPECT_EQ(c.parallel.ranks_per_node, 0);
  EXPECT_EQ(c.parallel.schedule, PipelineSchedule::OneFOneB);
  EXPECT_EQ(c.parallel.device_comm, DeviceComm::Nccl);
  EXPECT_EQ(c.precision.recipe, Recipe::FP32);
  EXPECT_EQ(c.run.dir, "runs/tiny");
  EXPECT_EQ(c.run.steps, 300);
  EXPECT_EQ(c.run.seed, 1234u);
  EXPECT_EQ(c.run.log_interval, 1);
  EXPECT_EQ(c.run.threads, 0);
}

TEST(ConfigSmall, Loads) {
  const Config c = load_config(kSmall);
  EXPECT_EQ(c.model.hidden_size, 512);
  EXPECT_EQ(c.model.num_hidden_layers, 6);
  EXPECT_EQ(c.model.n_routed_experts, 32);
  EXPECT_EQ(c.model.num_experts_per_tok, 6);
  EXPECT_EQ(c.model.n_group, 8);
  EXPECT_EQ(c.model.max_seq_len, c.data.seq_len);
}

TEST(ConfigParse, MaxSeqLenKeptWhenSet) {
  EXPECT_EQ(test::base_config({"model.max_seq_len=4096"}).model.max_seq_len, 4096);
}

TEST(ConfigParse, RopeScaling) {
  const Config c = parse_config(
      test::edit_yaml(test::kBaseYaml, {{"model.rope_scaling",
                                         "{type: yarn, factor: 40, "
                                         "original_max_position_embeddings: 64, "
                                         "beta_fast: 32, beta_slow: 1, mscale: 0.707}"},
                                        {"model.max_seq_len", "2560"}}),
      "test.yaml");
  EXPECT_EQ(c.model.yarn_factor, 40.0);
  EXPECT_EQ(c.model.yarn_original_max_position_embeddings, 64);
  EXPECT_EQ(c.model.yarn_beta_fast, 32.0);
  EXPECT_EQ(c.model.yarn_beta_slow, 1.0);
  EXPECT_EQ(c.model.yarn_mscale, 0.707);
  EXPECT_EQ(c.model.max_seq_len, 2560);
  // null = off (defaults)
  EXPECT_EQ(
      parse_config(test::edit_yaml(test::kBaseYaml, {{"model.rope_scaling", "~"}}), "test.yaml")
          .model.yarn_factor,
      1.0);
}

TEST(ConfigParse, NumberForms) {
  const Config c = test::base_config({"model.rms_norm_eps=1e-5", "optimizer.eps=+1.5E-8",
                                      "model.rope_theta=5e4", "model.routed_scaling_factor=2",
                                      "model.hidden_size=+64", "run.seed=18446744073709551615",
                                      "schedule.lr.tails=[{until: 1e3, lr: 1.}, {lr: .5}]"});
  EXPECT_EQ(c.model.rms_norm_eps, 1e-5);
  EXPECT_EQ(c.optimizer.eps, 1.5e-8);
  EXPECT_EQ(c.model.rope_theta, 5e4);
  EXPECT_EQ(c.model.routed_scaling_factor, 2.0);
  EXPECT_EQ(c.model.hidden_size, 64);
  EXPECT_EQ(c.run.seed, 18446744073709551615u);
  EXPECT_EQ(c.schedule.lr.tails.until, std::vector<double>{1000});
  EXPECT_EQ(c.schedule.lr.tails.values, (std::vector<double>{1.0, 0.5}));
}

TEST(ConfigParse, LastEntryMayHaveUntil) {
  const Config c =
      test::base_config({"schedule.lr.tails=[{until: 400, lr: 2.0e-5}, {until: 500, lr: 7.0e-6}]"});
  EXPECT_EQ(c.schedule.lr.tails.until, std::vector<double>{400});
  EXPECT_EQ(c.schedule.lr.tails.values, (std::vector<double>{2e-5, 7e-6}));
}

// ---- round trip ----

TEST(ConfigRoundTrip, Tiny) {
  const Config a = load_config(kTiny);
  const std::string yaml = config_to_yaml(a);
  const Config b = parse_config(yaml, "written.yaml");
  EXPECT_TRUE(a == b) << yaml;
  const std::string again = config_to_yaml(b);  // same text after its first (source) line
  EXPECT_EQ(again.substr(again.find('\n')), yaml.substr(yaml.find('\n')));
  EXPECT_NE(yaml.find("schedule: 1f1b\n"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("max_seq_len: 128\n"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("mtp_weight: [{until: 200.0, value: 0.3}, {value: 0.1}]"), std::string::npos)
      << yaml;
}

// Every setting away from its default, so a setting missing from config_to_yaml (or from
// operator==) shows up as a difference.
Config everything_changed() {
  Config c = test::base_config();
  ModelConfig& m = c.model;
  m.vocab_size = 1000;
  m.hidden_size = 96;
  m.intermediate_size = 200;
  m.moe_intermediate_size = 48;
  m.num_hidden_layers = 6;
  m.first_k_dense_replace = 2;
  m.num_attention_heads = 3;
  m.n_routed_experts = 24;
  m.n_shared_experts = 2;
  m.num_experts_per_tok = 6;
  m.n_group = 6;
  m.topk_group = 3;
  m.routed_scaling_factor = 1.5;
  m.q_lora_rank = 0;
  m.kv_lora_rank = 40;
  m.qk_nope_head_dim = 24;
  m.qk_rope_head_dim = 8;
  m.v_head_dim = 20;
  m.rope_theta = 50000.0;
  m.rms_norm_eps = 1e-5;
  m.num_nextn_predict_layers = 2;
  m.yarn_factor = 40.0;
  m.yarn_original_max_position_embeddings = 512;
  m.yarn_beta_fast = 16.0;
  m.yarn_beta_slow = 0.5;
  m.yarn_mscale = 0.707;
  m.max_seq_len = 20480;
  m.init_std = 0.006;
  m.seq_aux_alpha = 3e-4;
  m.lm_head_chunk = 333;
  c.data.train_path = "with space/and: colon.h5";
  c.data.valid_path = "yes";
  c.data.seq_len = 256;
  c.data.micro_batch_size = 3;
  c.data.global_batch_size = 24;
  c.optimizer.beta1 = 0.8;
  c.optimizer.beta2 = 0.999;
  c.optimizer.eps = 1e-6;
  c.optimizer.weight_decay = 0.0;
  c.optimizer.grad_clip = 0.0;
  c.optimizer.moment_dtype = FloatFormat::BF16;
  c.optimizer.grad_reduce_dtype = FloatFormat::BF16;
  c.schedule.unit = ScheduleUnit::Tokens;
  c.schedule.lr.peak = 2.2e-4;
  c.schedule.lr.warmup_steps = 2000;
  c.schedule.lr.constant_until = 10e12;
  c.schedule.lr.decay_until = 14.3e12;
  c.schedule.lr.min_lr = 2.2e-5;
  c.schedule.lr.tails = {{14.633e12}, {2.2e-5, 7.3e-6}};
  c.schedule.bias_update_speed = {{14.3e12}, {0.001, 0.0}};
  c.schedule.mtp_weight = {{10e12}, {0.3, 0.1}};
  c.parallel.pp = 2;
  c.parallel.dp = 4;
  c.parallel.ep = 2;
  c.parallel.ranks_per_node = 8;
  c.parallel.schedule = PipelineSchedule::DualPipeV;
  c.parallel.device_comm = DeviceComm::Mpi;
  c.precision.recipe = Recipe::FP8;
  c.run.dir = "runs/\"quoted\"\\back\tslash";
  c.run.steps = 12345678901;
  c.run.seed = 18446744073709551615u;
  c.run.log_interval = 7;
  c.run.threads = 3;
  c.run.count_flops = true;
  c.run.comm_timeout_s = 2.5;
  c.run.trace_steps = {3, 4, 9};
  c.run.profile_steps = {2, 5};
  return c;
}

TEST(ConfigRoundTrip, EverySettingChanged) {
  const Config a = everything_changed();
  ASSERT_FALSE(a == test::base_config());
  const std::string yaml = config_to_yaml(a);
  Config b;
  ASSERT_NO_THROW(b = parse_config(yaml, "written.yaml")) << yaml;
  EXPECT_TRUE(a == b) << yaml;
  EXPECT_EQ(b.source, "written.yaml");
  EXPECT_EQ(b.run.dir, a.run.dir);
  EXPECT_EQ(b.data.train_path, a.data.train_path);
  EXPECT_EQ(b.data.valid_path, "yes");
}

TEST(ConfigRoundTrip, AwkwardDoubles) {
  Config a = test::base_config();
  a.optimizer.beta2 = 0.1 + 0.2;  // 0.30000000000000004
  a.model.init_std = 1.0 / 3.0;
  a.model.rms_norm_eps = 5e-324;  // smallest subnormal
  a.schedule.lr.peak = 1.7976931348623157e308;
  a.schedule.lr.min_lr = -0.0 + 0.0;
  const Config b = parse_config(config_to_yaml(a), "written.yaml");
  EXPECT_TRUE(a == b) << config_to_yaml(a);
}

TEST(ConfigRoundTrip, AwkwardStrings) {
  for (const char* text :
       {"123", "1e5", "0x1f", "1_000", "-x", ".hidden", "~", "null", "No", "a b",
        "\xc3\xbcn\xc3\xaf/c\xc3\xb6"
        "de",
        "#comment", "a: b", "'single'", "tab\there", "new\nline", "runs/1f1b", " lead"}) {
    Config a = test::base_config();
    a.run.dir = text;
    a.data.valid_path = text;
    const std::string yaml = config_to_yaml(a);
    Config b;
    ASSERT_NO_THROW(b = parse_config(yaml, "written.yaml")) << yaml;
    EXPECT_EQ(b.run.dir, text) << yaml;
    EXPECT_TRUE(a == b) << yaml;
  }
}

TEST(ConfigEquality, SeesEachKindOfDifference) {
  const Config a = test::base_config();
  Config b = a;
  EXPECT_TRUE(a == b);
  b.source = "elsewhere.yaml";
  EXPECT_TRUE(a == b);  // source is not a setting
  b = a;
  b.model.yarn_mscale = 0.5;
  EXPECT_FALSE(a == b);
  b = a;
  b.run.seed = 1;
  EXPECT_FALSE(a == b);
  b = a;
  b.precision.recipe = Recipe::BF16;
  EXPECT_FALSE(a == b);
  b = a;
  b.schedule.mtp_weight.until = {1.0};
  b.schedule.mtp_weight.values = {0.3, 0.3};
  EXPECT_FALSE(a == b);
}

TEST(ConfigToYaml, WritesTheSourceAndEverySection) {
  const std::string yaml = config_to_yaml(load_config(kTiny));
  EXPECT_NE(yaml.find("(loaded from " + kTiny + ")"), std::string::npos);
  for (const char* section :
       {"\nmodel:\n", "\n  rope_scaling:\n", "\ndata:\n", "\noptimizer:\n", "\nschedule:\n",
        "\n  lr:\n", "\nparallel:\n", "\nprecision:\n", "\nrun:\n", "\n    tails: []\n"}) {
    EXPECT_NE(yaml.find(section), std::string::npos) << section << "\n" << yaml;
  }
}

}  // namespace
}  // namespace moetron
