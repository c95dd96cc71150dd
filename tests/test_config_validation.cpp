// Every validation rule of trainer/config.cpp, one table row each: an edit to a valid config and
// the exact message it must produce. Exact messages keep the contract visible: the file, the
// dotted key, what was expected and what was found.
#include <gtest/gtest.h>

#include <cctype>
#include <string>
#include <utility>
#include <vector>

#include "tests/test_config_util.h"
#include "trainer/config.h"

namespace moetron {
namespace {

using test::edit_yaml;
using test::error_of;
using test::kBaseYaml;
using test::kDelete;

struct Case {
  std::vector<std::pair<std::string, std::string>> edits;
  std::string message;  // expected what(), after "test.yaml: "
};

std::ostream& operator<<(std::ostream& os, const Case& c) { return os << c.message; }

class Invalid : public ::testing::TestWithParam<Case> {};

TEST_P(Invalid, FailsWithOneClearMessage) {
  const Case& c = GetParam();
  EXPECT_EQ(error_of(edit_yaml(kBaseYaml, c.edits)), "test.yaml: " + c.message);
}

std::string case_name(const ::testing::TestParamInfo<Case>& info) {
  std::string name = std::to_string(info.index) + "_";
  for (char ch : info.param.edits.front().first) {
    name += std::isalnum(static_cast<unsigned char>(ch)) ? ch : '_';
  }
  return name;
}

// ---- ranges of single settings, and rules between settings ----
const std::vector<Case> kRangeCases = {
    {{{"model.vocab_size", "1"}}, "model.vocab_size: must be >= 2, got 1"},
    {{{"model.hidden_size", "0"}}, "model.hidden_size: must be > 0, got 0"},
    {{{"model.intermediate_size", "-5"}}, "model.intermediate_size: must be > 0, got -5"},
    {{{"model.moe_intermediate_size", "0"}}, "model.moe_intermediate_size: must be > 0, got 0"},
    {{{"model.num_hidden_layers", "0"}}, "model.num_hidden_layers: must be > 0, got 0"},
    {{{"model.first_k_dense_replace", "-1"}}, "model.first_k_dense_replace: must be >= 0, got -1"},
    {{{"model.first_k_dense_replace", "5"}},
     "model.first_k_dense_replace: must be <= model.num_hidden_layers (4), got 5"},
    {{{"model.num_attention_heads", "0"}}, "model.num_attention_heads: must be > 0, got 0"},
    {{{"model.n_routed_experts", "0"}}, "model.n_routed_experts: must be > 0, got 0"},
    {{{"model.n_shared_experts", "-1"}}, "model.n_shared_experts: must be >= 0, got -1"},
    {{{"model.num_experts_per_tok", "0"}}, "model.num_experts_per_tok: must be >= 1, got 0"},
    {{{"model.num_experts_per_tok", "18"}},
     "model.num_experts_per_tok: must be <= model.n_routed_experts (16), got 18"},
    {{{"model.n_group", "0"}}, "model.n_group: must be > 0, got 0"},
    {{{"model.n_group", "5"}}, "model.n_group: must divide model.n_routed_experts (16), got 5"},
    {{{"model.topk_group", "0"}}, "model.topk_group: must be >= 1, got 0"},
    {{{"model.topk_group", "5"}}, "model.topk_group: must be <= model.n_group (4), got 5"},
    {{{"model.num_experts_per_tok", "3"}},
     "model.num_experts_per_tok: must be divisible by model.topk_group (2), got 3"},
    {{{"model.num_experts_per_tok", "10"}},
     "model.num_experts_per_tok: must be <= model.topk_group x experts per group (2 x 4 = 8), "
     "the experts in the kept groups, got 10"},
    {{{"model.routed_scaling_factor", "0"}}, "model.routed_scaling_factor: must be > 0, got 0"},
    {{{"model.q_lora_rank", "-1"}}, "model.q_lora_rank: must be >= 0, got -1"},
    {{{"model.kv_lora_rank", "0"}}, "model.kv_lora_rank: must be > 0, got 0"},
    {{{"model.qk_nope_head_dim", "0"}}, "model.qk_nope_head_dim: must be > 0, got 0"},
    {{{"model.qk_rope_head_dim", "15"}},
     "model.qk_rope_head_dim: must be even (RoPE rotates pairs of dimensions), got 15"},
    {{{"model.v_head_dim", "0"}}, "model.v_head_dim: must be > 0, got 0"},
    {{{"model.rope_theta", "0"}}, "model.rope_theta: must be > 0, got 0"},
    {{{"model.rms_norm_eps", "0"}}, "model.rms_norm_eps: must be > 0, got 0"},
    {{{"model.init_std", "-0.02"}}, "model.init_std: must be > 0, got -0.02"},
    {{{"model.num_nextn_predict_layers", "-1"}},
     "model.num_nextn_predict_layers: must be >= 0, got -1"},
    {{{"model.lm_head_chunk", "0"}}, "model.lm_head_chunk: must be > 0, got 0"},
    {{{"model.seq_aux_alpha", "-1"}}, "model.seq_aux_alpha: must be >= 0, got -1"},
    {{{"model.max_seq_len", "64"}}, "model.max_seq_len: must be >= data.seq_len (128), got 64"},
    {{{"model.rope_scaling", "{type: linear, factor: 4}"}},
     "model.rope_scaling.type: must be yarn (the only kind moetron implements), got \"linear\""},
    {{{"model.rope_scaling.factor", "0.5"}}, "model.rope_scaling.factor: must be >= 1, got 0.5"},
    {{{"model.rope_scaling.original_max_position_embeddings", "0"}},
     "model.rope_scaling.original_max_position_embeddings: must be > 0, got 0"},
    {{{"model.rope_scaling.beta_fast", "0.5"}},
     "model.rope_scaling.beta_fast: must be > model.rope_scaling.beta_slow (1), got 0.5"},
    {{{"model.rope_scaling.mscale", "-1"}}, "model.rope_scaling.mscale: must be >= 0, got -1"},
    {{{"data.seq_len", "0"}}, "data.seq_len: must be > 0, got 0"},
    {{{"data.micro_batch_size", "0"}}, "data.micro_batch_size: must be > 0, got 0"},
    {{{"data.global_batch_size", "0"}}, "data.global_batch_size: must be > 0, got 0"},
    {{{"data.global_batch_size", "12"}},
     "data.global_batch_size: must be a positive multiple of data.micro_batch_size x parallel.dp "
     "(8 x 1 = 8), got 12"},
    {{{"parallel.dp", "4"}},
     "data.global_batch_size: must be a positive multiple of data.micro_batch_size x parallel.dp "
     "(8 x 4 = 32), got 16"},
    {{{"data.train_path", kDelete}},
     "data.train_path: must be set (non-empty), got nothing (the key is missing)"},
    {{{"data.train_path", "\"\""}},
     "data.train_path: must be set (non-empty), got the string \"\""},
    {{{"optimizer.beta1", "1"}}, "optimizer.beta1: must be in [0, 1), got 1"},
    {{{"optimizer.beta2", "-0.1"}}, "optimizer.beta2: must be in [0, 1), got -0.1"},
    {{{"optimizer.eps", "0"}}, "optimizer.eps: must be > 0, got 0"},
    {{{"optimizer.weight_decay", "-0.1"}}, "optimizer.weight_decay: must be >= 0, got -0.1"},
    {{{"optimizer.grad_clip", "-1"}}, "optimizer.grad_clip: must be >= 0, got -1"},
    {{{"optimizer.moment_dtype", "fp16"}},
     "optimizer.moment_dtype: must be one of {fp32, bf16}, got \"fp16\""},
    {{{"optimizer.grad_reduce_dtype", "fp8"}},
     "optimizer.grad_reduce_dtype: must be one of {fp32, bf16}, got \"fp8\""},
    {{{"parallel.stage_layers", "[0, 2]"}},
     "parallel.stage_layers: must name the first layer of each of the 1 pipeline stages "
     "(parallel.pp), or be [], got 2 entries"},
    {{{"parallel.pp", "2"},
      {"parallel.schedule", "dualpipev"},
      {"parallel.stage_layers", "[0, 2]"}},
     "parallel.stage_layers: must name the first layer of each of the 4 pipeline stages "
     "(parallel.pp x 2 for dualpipev), or be [], got 2 entries"},
    {{{"parallel.pp", "2"}, {"parallel.stage_layers", "[1, 2]"}},
     "parallel.stage_layers: must start with layer 0 (the first stage's first layer), got 1"},
    {{{"parallel.pp", "2"}, {"parallel.stage_layers", "[0, 4]"}},
     "parallel.stage_layers: must name layers < model.num_hidden_layers (4): every stage needs a "
     "layer, got 4"},
    {{{"parallel.pp", "2"}, {"parallel.stage_layers", "[0, 0]"}},
     "parallel.stage_layers[1]: must be > parallel.stage_layers[0] (0) (strictly increasing), got "
     "0"},
    {{{"optimizer.overlap_grad_reduce", "yes"}},
     "optimizer.overlap_grad_reduce: must be one of {off, on}, got \"yes\""},
    {{{"optimizer.grad_bucket_elements", "0"}},
     "optimizer.grad_bucket_elements: must be >= 1, got 0"},
    {{{"schedule.unit", "epochs"}},
     "schedule.unit: must be one of {steps, tokens}, got \"epochs\""},
    {{{"schedule.lr.peak", "-1"}}, "schedule.lr.peak: must be >= 0, got -1"},
    {{{"schedule.lr.warmup_steps", "-1"}}, "schedule.lr.warmup_steps: must be >= 0, got -1"},
    {{{"schedule.lr.constant_until", "-1"}}, "schedule.lr.constant_until: must be >= 0, got -1"},
    {{{"schedule.lr.min_lr", "-1"}}, "schedule.lr.min_lr: must be >= 0, got -1"},
    {{{"schedule.lr.decay_until", "100"}},
     "schedule.lr.decay_until: must be >= schedule.lr.constant_until (150) or 0 (no decay), got "
     "100"},
    {{{"schedule.lr.decay_until", "0"}, {"schedule.lr.tails", "[{lr: 1.0e-5}]"}},
     "schedule.lr.tails: must be empty when schedule.lr.decay_until is 0 (no decay, so no tails), "
     "got 1 entries"},
    {{{"schedule.lr.tails", "[{until: 400, lr: 1.0e-5}, {lr: -1}]"}},
     "schedule.lr.tails[1].lr: must be >= 0, got -1"},
    {{{"schedule.lr.tails", "[{until: 400, lr: 1}, {until: 400, lr: 2}, {lr: 3}]"}},
     "schedule.lr.tails[1].until: must be > schedule.lr.tails[0].until (400) (strictly "
     "increasing), got 400"},
    {{{"schedule.lr.tails", "0.1"}},
     "schedule.lr.tails: expected a list of {until, lr} entries, got 0.1"},
    {{{"schedule.bias_update_speed", "-0.001"}},
     "schedule.bias_update_speed: must be >= 0, got -0.001"},
    {{{"schedule.mtp_weight", "[]"}},
     "schedule.mtp_weight: expected a number or a list of {until, value} entries (at least one), "
     "got an empty list"},
    {{{"schedule.mtp_weight", "abc"}},
     "schedule.mtp_weight: expected a number or a list of {until, value} entries, got the string "
     "\"abc\""},
    {{{"schedule.mtp_weight", "{value: 1}"}},
     "schedule.mtp_weight: expected a number or a list of {until, value} entries, got a mapping"},
    {{{"schedule.mtp_weight", "[0.3]"}},
     "schedule.mtp_weight[0]: expected an entry {until: X, value: Y}, got 0.3"},
    {{{"schedule.mtp_weight", "[{value: 0.3}, {value: 0.1}]"}},
     "schedule.mtp_weight[0].until: required on every entry but the last, got nothing"},
    {{{"schedule.mtp_weight", "[{until: 10}]"}},
     "schedule.mtp_weight[0].value: required, got nothing"},
    {{{"schedule.mtp_weight", "[{until: 10, valu: 0.3}]"}},
     "unknown key schedule.mtp_weight[0].valu (did you mean value?)"},
    {{{"schedule.mtp_weight", "[{until: 100, value: 0.3}, {until: 50, value: 0.1}]"}},
     "schedule.mtp_weight[1].until: must be > schedule.mtp_weight[0].until (100) (strictly "
     "increasing), got 50"},
    {{{"schedule.mtp_weight", "[{until: -1, value: 0.3}, {value: 0.1}]"}},
     "schedule.mtp_weight[0].until: must be >= 0, got -1"},
    {{{"schedule.mtp_weight", "[{until: 10, value: x}, {value: 0.1}]"}},
     "schedule.mtp_weight[0].value: expected a number, got the string \"x\""},
    {{{"parallel.pp", "0"}}, "parallel.pp: must be >= 1, got 0"},
    {{{"parallel.dp", "0"}}, "parallel.dp: must be >= 1, got 0"},
    {{{"parallel.ep", "0"}}, "parallel.ep: must be >= 1, got 0"},
    {{{"parallel.pp", "5"}}, "parallel.pp: must be <= model.num_hidden_layers (4), got 5"},
    {{{"parallel.ep", "2"}}, "parallel.ep: must divide parallel.dp (1), got 2"},
    {{{"parallel.ep", "3"}, {"parallel.dp", "3"}, {"data.global_batch_size", "48"}},
     "parallel.ep: must divide model.n_routed_experts (16), got 3"},
    {{{"parallel.ranks_per_node", "-1"}}, "parallel.ranks_per_node: must be >= 0, got -1"},
    {{{"parallel.schedule", "gpipe"}},
     "parallel.schedule: must be one of {1f1b, zb1p, dualpipe, dualpipev}, got \"gpipe\""},
    {{{"parallel.device_comm", "gloo"}},
     "parallel.device_comm: must be one of {nccl, mpi}, got \"gloo\""},
    {{{"precision.recipe", "fp16"}},
     "precision.recipe: must be one of {fp32, bf16, fp8}, got \"fp16\""},
    {{{"run.dir", "\"\""}}, "run.dir: must be set (non-empty), got the string \"\""},
    {{{"run.steps", "0"}}, "run.steps: must be > 0, got 0"},
    {{{"run.log_interval", "0"}}, "run.log_interval: must be > 0, got 0"},
    {{{"run.threads", "-1"}}, "run.threads: must be >= 0, got -1"},
    {{{"run.comm_timeout_s", "-1"}}, "run.comm_timeout_s: must be >= 0, got -1"},
    {{{"run.comm_timeout_s", ".inf"}}, "run.comm_timeout_s: expected a finite number, got .inf"},
    {{{"run.trace_steps", "[0]"}}, "run.trace_steps[0]: must be > 0, got 0"},
    {{{"run.trace_steps", "[2, -1]"}}, "run.trace_steps[1]: must be > 0, got -1"},
    {{{"run.trace_steps", "[3, 3]"}},
     "run.trace_steps[1]: must be > run.trace_steps[0] (3) (strictly increasing), got 3"},
    {{{"run.trace_steps", "[2, 101]"}},
     "run.trace_steps: must name steps <= run.steps (100), got 101"},
    {{{"run.profile_steps", "[0]"}}, "run.profile_steps[0]: must be > 0, got 0"},
    {{{"run.profile_steps", "[4, 2]"}},
     "run.profile_steps[1]: must be > run.profile_steps[0] (4) (strictly increasing), got 2"},
    {{{"run.profile_steps", "[101]"}},
     "run.profile_steps: must name steps <= run.steps (100), got 101"},
};
INSTANTIATE_TEST_SUITE_P(Ranges, Invalid, ::testing::ValuesIn(kRangeCases), case_name);

// ---- types ----
const std::vector<Case> kTypeCases = {
    {{{"model.hidden_size", "abc"}},
     "model.hidden_size: expected an integer, got the string \"abc\""},
    {{{"model.num_hidden_layers", "2.5"}}, "model.num_hidden_layers: expected an integer, got 2.5"},
    {{{"model.hidden_size", "1e3"}}, "model.hidden_size: expected an integer, got 1e3"},
    {{{"model.hidden_size", "true"}},
     "model.hidden_size: expected an integer, got the boolean true"},
    {{{"model.hidden_size", "{a: 1}"}}, "model.hidden_size: expected an integer, got a mapping"},
    {{{"model.hidden_size", "[1, 2]"}}, "model.hidden_size: expected an integer, got a list"},
    {{{"model.hidden_size", "~"}}, "model.hidden_size: expected an integer, got nothing (null)"},
    {{{"model.hidden_size", "99999999999999999999"}},
     "model.hidden_size: expected an integer that fits in 64 bits, got 99999999999999999999"},
    {{{"model.rms_norm_eps", "abc"}},
     "model.rms_norm_eps: expected a number, got the string \"abc\""},
    {{{"model.rms_norm_eps", "yes"}}, "model.rms_norm_eps: expected a number, got the boolean yes"},
    {{{"model.rms_norm_eps", "{a: 1}"}}, "model.rms_norm_eps: expected a number, got a mapping"},
    {{{"model.rope_theta", "1e999"}}, "model.rope_theta: expected a finite number, got 1e999"},
    {{{"model.rope_theta", ".inf"}}, "model.rope_theta: expected a finite number, got .inf"},
    {{{"optimizer.moment_dtype", "[fp32]"}},
     "optimizer.moment_dtype: expected a string, got a list"},
    {{{"optimizer.grad_reduce_dtype", "{a: 1}"}},
     "optimizer.grad_reduce_dtype: expected a string, got a mapping"},
    {{{"run.seed", "-1"}}, "run.seed: expected a non-negative integer, got -1"},
    {{{"run.trace_steps", "3"}}, "run.trace_steps: expected a list of integers, got 3"},
    {{{"run.profile_steps", "abc"}},
     "run.profile_steps: expected a list of integers, got the string \"abc\""},
    {{{"run.trace_steps", "{a: 1}"}},
     "run.trace_steps: expected a list of integers, got a mapping"},
    {{{"run.trace_steps", "[1, x]"}},
     "run.trace_steps[1]: expected an integer, got the string \"x\""},
    {{{"run.trace_steps", "[1.5]"}}, "run.trace_steps[0]: expected an integer, got 1.5"},
    {{{"run.seed", "1.5"}}, "run.seed: expected a non-negative integer, got 1.5"},
    {{{"model", "5"}}, "model: expected a mapping, got 5"},
    {{{"schedule.lr", "0.001"}}, "schedule.lr: expected a mapping, got 0.001"},
    {{{"model.rope_scaling", "yarn"}},
     "model.rope_scaling: expected a mapping, got the string \"yarn\""},
};
INSTANTIATE_TEST_SUITE_P(Types, Invalid, ::testing::ValuesIn(kTypeCases), case_name);

// ---- unknown keys ----
const std::vector<Case> kUnknownKeyCases = {
    {{{"model.hiden_size", "512"}}, "unknown key model.hiden_size (did you mean hidden_size?)"},
    {{{"modle", "{}"}}, "unknown key modle (did you mean model?)"},
    {{{"schedule.lr.peek", "1"}}, "unknown key schedule.lr.peek (did you mean peak?)"},
    {{{"model.rope_scaling.facter", "4"}},
     "unknown key model.rope_scaling.facter (did you mean factor?)"},
    {{{"run.Steps", "4"}}, "unknown key run.Steps (did you mean steps?)"},
    {{{"schedule.lr.warmup", "4"}}, "unknown key schedule.lr.warmup (did you mean warmup_steps?)"},
    {{{"data.batch_size", "4"}},
     "unknown key data.batch_size (did you mean micro_batch_size or global_batch_size?)"},
    {{{"optimizer.lr", "4"}},
     "unknown key optimizer.lr (known keys here: beta1, beta2, eps, weight_decay, grad_clip, "
     "moment_dtype, grad_reduce_dtype, overlap_grad_reduce, grad_bucket_elements, "
     "shard_master_weights)"},
};
INSTANTIATE_TEST_SUITE_P(UnknownKeys, Invalid, ::testing::ValuesIn(kUnknownKeyCases), case_name);

// ---- cases that need literal YAML text (quoting, duplicates, document shape) ----

TEST(ConfigText, QuotedNumberIsAString) {
  EXPECT_EQ(error_of(std::string(kBaseYaml) + "run:\n  steps: \"300\"\n"),
            "test.yaml: run.steps: expected an integer, got the string \"300\"");
  EXPECT_EQ(error_of(std::string(kBaseYaml) + "optimizer:\n  eps: '1e-8'\n"),
            "test.yaml: optimizer.eps: expected a number, got the string \"1e-8\"");
}

TEST(ConfigText, DuplicateKey) {
  EXPECT_EQ(error_of(std::string(kBaseYaml) + "run:\n  steps: 1\n  steps: 2\n"),
            "test.yaml: run.steps: duplicate key");
}

TEST(ConfigText, NonTextKey) {
  EXPECT_EQ(error_of(std::string(kBaseYaml) + "run:\n  [a, b]: 1\n"),
            "test.yaml: run: expected names as keys, got a list as a key");
}

TEST(ConfigText, TopLevelMustBeAMapping) {
  const std::string expected =
      "test.yaml: expected a mapping of sections (model, data, optimizer, schedule, activations, "
      "parallel, precision, hardware, run) at the top level, got ";
  EXPECT_EQ(error_of("- a\n- b\n"), expected + "a list");
  EXPECT_EQ(error_of("hello\n"), expected + "the string \"hello\"");
  EXPECT_EQ(error_of(""), expected + "an empty document");
  EXPECT_EQ(error_of("# only a comment\n"), expected + "an empty document");
}

TEST(ConfigText, OneDocumentOnly) {
  EXPECT_EQ(error_of(std::string(kBaseYaml) + "---\nrun: {steps: 3}\n"),
            "test.yaml: expected one YAML document, found 2");
}

TEST(ConfigText, SyntaxErrorHasLineAndColumn) {
  const std::string msg = error_of("model:\n  hidden_size: [1,\ndata: {}\n");
  EXPECT_EQ(msg.rfind("test.yaml: YAML syntax error at line ", 0), 0u) << msg;
  EXPECT_NE(msg.find(", column "), std::string::npos) << msg;
  const std::string msg2 = error_of("model:\n  hidden_size: 1\n   bad: 2\n");
  EXPECT_EQ(msg2.rfind("test.yaml: YAML syntax error at line 3, column ", 0), 0u) << msg2;
}

// yaml-cpp says "illegal tab when looking for indentation" or "end of map not found": the message
// names the line indented with a tab instead (a tab inside a value or a comment is fine).
TEST(ConfigText, TabIndentationIsNamed) {
  EXPECT_EQ(error_of("# a\tcomment\nmodel:\n  hidden_size: 8\n\tvocab_size: 9\n"),
            "test.yaml: line 4 is indented with a tab; YAML indentation must be spaces");
  EXPECT_EQ(error_of("model:\n \thidden_size: 8\n"),
            "test.yaml: line 2 is indented with a tab; YAML indentation must be spaces");
  EXPECT_EQ(error_of(std::string(kBaseYaml) + "run: {dir: \"a\tb\"}\n"), "");
}

TEST(ConfigText, NullSectionMeansDefaults) {
  const Config c = parse_config(std::string(kBaseYaml) + "optimizer:\nrun: ~\n", "test.yaml");
  EXPECT_EQ(c.optimizer.beta2, 0.95);
  EXPECT_EQ(c.run.steps, 100);
}

TEST(ConfigText, NullStringIsEmpty) {
  const Config c =
      parse_config(test::edit_yaml(kBaseYaml, {{"data.valid_path", "~"}}), "test.yaml");
  EXPECT_EQ(c.data.valid_path, "");
}

TEST(ConfigFile, MissingFile) {
  try {
    load_config("/nonexistent/dir/x.yaml");
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              "/nonexistent/dir/x.yaml: cannot open: No such file or directory");
  }
}

TEST(ConfigFile, DirectoryIsNotAFile) {
  try {
    load_config(MOETRON_SOURCE_DIR "/configs");
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()),
              std::string(MOETRON_SOURCE_DIR) + "/configs: is a directory, expected a YAML file");
  }
}

TEST(ConfigFile, ErrorsNameTheFile) {
  try {
    load_config(MOETRON_SOURCE_DIR "/configs/tiny.yaml", {"model.n_group=5"});
    FAIL() << "expected ConfigError";
  } catch (const ConfigError& e) {
    EXPECT_EQ(std::string(e.what()), std::string(MOETRON_SOURCE_DIR) +
                                         "/configs/tiny.yaml: --set model.n_group=5: model.n_group:"
                                         " must divide model.n_routed_experts (16), got 5");
  }
}

}  // namespace
}  // namespace moetron
