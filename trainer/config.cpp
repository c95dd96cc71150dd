// trainer/config.cpp: the settings table, the rules between settings, and the entry points
// (YAML text -> validated Config, Config -> YAML, ==).
//
// One list of settings, visit_config(), drives everything: it is walked by a schema builder (the
// known keys, for unknown-key and `--set` checks), by the reader (type and single-value range
// checks), by the writer (config_to_yaml) and by operator== (the visitors: config_schema.h).
// Adding a setting is one line there. Rules that relate two or more settings are one table in
// check_relations().
//
// Loading order: parse the text -> apply `--set` overrides to the YAML tree -> reject unknown and
// duplicate keys -> read every field (types, ranges) -> fill defaults that depend on other fields
// (model.max_seq_len) -> cross-field rules. Every failure is one ConfigError
// "<source>[: --set <override>]: <dotted.key>: <what was expected>, got <what was found>"; the
// `--set` part appears when the offending key came from an override.
#include "trainer/config.h"

#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "trainer/config_schema.h"

namespace moetron {

namespace {

using namespace config_schema;

// ---------------------------------------------------------------------------------------------
// The list of settings (visitor interface: config_schema.h). `c...` is one Config (read, write,
// schema) or two (compare).
// ---------------------------------------------------------------------------------------------

template <class V, class... C>
void visit_config(V& v, C&... c) {
  v.section("model", "the network; names as in the Hugging Face DeepSeek-V3 config.json", [&] {
    v.field("vocab_size", kAtLeast2, c.model.vocab_size...);
    v.field("hidden_size", kPositive, c.model.hidden_size...);
    v.field("intermediate_size", kPositive, c.model.intermediate_size...);
    v.field("moe_intermediate_size", kPositive, c.model.moe_intermediate_size...);
    v.field("num_hidden_layers", kPositive, c.model.num_hidden_layers...);
    v.field("first_k_dense_replace", kNonNegative, c.model.first_k_dense_replace...);
    v.field("num_attention_heads", kPositive, c.model.num_attention_heads...);
    v.field("n_routed_experts", kPositive, c.model.n_routed_experts...);
    v.field("n_shared_experts", kNonNegative, c.model.n_shared_experts...);
    v.field("num_experts_per_tok", kAtLeast1, c.model.num_experts_per_tok...);
    v.field("n_group", kPositive, c.model.n_group...);
    v.field("topk_group", kAtLeast1, c.model.topk_group...);
    v.field("routed_scaling_factor", kPositive, c.model.routed_scaling_factor...);
    v.field("q_lora_rank", kNonNegative, c.model.q_lora_rank...);
    v.field("kv_lora_rank", kPositive, c.model.kv_lora_rank...);
    v.field("qk_nope_head_dim", kPositive, c.model.qk_nope_head_dim...);
    v.field("qk_rope_head_dim", kPositive, c.model.qk_rope_head_dim...);
    v.field("v_head_dim", kPositive, c.model.v_head_dim...);
    v.field("rope_theta", kPositive, c.model.rope_theta...);
    v.field("rms_norm_eps", kPositive, c.model.rms_norm_eps...);
    v.field("num_nextn_predict_layers", kNonNegative, c.model.num_nextn_predict_layers...);
    v.section("rope_scaling", "YaRN; null or absent = off (acts when factor > 1)", [&] {
      v.tag("type", "yarn");
      v.field("factor", kAtLeast1, c.model.yarn_factor...);
      v.field("original_max_position_embeddings", kPositive,
              c.model.yarn_original_max_position_embeddings...);
      v.field("beta_fast", kPositive, c.model.yarn_beta_fast...);
      v.field("beta_slow", kPositive, c.model.yarn_beta_slow...);
      v.field("mscale", kNonNegative, c.model.yarn_mscale...);
    });
    v.field("max_seq_len", kPositive, c.model.max_seq_len...);
    v.field("init_std", kPositive, c.model.init_std...);
    v.field("seq_aux_alpha", kNonNegative, c.model.seq_aux_alpha...);
    v.field("lm_head_chunk", kPositive, c.model.lm_head_chunk...);
  });
  v.section("data", "token files and batch shape (batch sizes in sequences)", [&] {
    v.field("train_path", kNonEmptyText, c.data.train_path...);
    v.field("valid_path", kAnyText, c.data.valid_path...);
    v.field("tokenizer", kAnyText, c.data.tokenizer...);
    v.field("seq_len", kPositive, c.data.seq_len...);
    v.field("micro_batch_size", kPositive, c.data.micro_batch_size...);
    v.field("global_batch_size", kPositive, c.data.global_batch_size...);
    v.field("batch_ramp_start", kNonNegative, c.data.batch_ramp_start...);
    v.field("batch_ramp_tokens", kNonNegative, c.data.batch_ramp_tokens...);
    v.field("prefetch", kNonNegative, c.data.prefetch...);
  });
  v.section("optimizer", "AdamW", [&] {
    v.field("beta1", kUnitOpen, c.optimizer.beta1...);
    v.field("beta2", kUnitOpen, c.optimizer.beta2...);
    v.field("eps", kPositive, c.optimizer.eps...);
    v.field("weight_decay", kNonNegative, c.optimizer.weight_decay...);
    v.field("grad_clip", kNonNegative, c.optimizer.grad_clip...);
    v.field("moment_dtype", Text{{"fp32", "bf16"}}, c.optimizer.moment_dtype...);
    v.field("grad_reduce_dtype", Text{{"fp32", "bf16"}}, c.optimizer.grad_reduce_dtype...);
  });
  v.section("schedule", "every `until` is in `unit` (steps or tokens consumed)", [&] {
    v.field("unit", Text{{"steps", "tokens"}}, c.schedule.unit...);
    v.section("lr", "warm-up (steps) -> constant -> cosine to min_lr -> tails", [&] {
      v.field("peak", kNonNegative, c.schedule.lr.peak...);
      v.field("warmup_steps", kNonNegative, c.schedule.lr.warmup_steps...);
      v.field("constant_until", kNonNegative, c.schedule.lr.constant_until...);
      v.field("decay_until", kNonNegative, c.schedule.lr.decay_until...);
      v.field("min_lr", kNonNegative, c.schedule.lr.min_lr...);
      v.piecewise("tails", "lr", false, kNonNegative, c.schedule.lr.tails...);
    });
    v.piecewise("bias_update_speed", "value", true, kNonNegative, c.schedule.bias_update_speed...);
    v.piecewise("mtp_weight", "value", true, kNonNegative, c.schedule.mtp_weight...);
  });
  v.section("parallel", "world = pp x dp ranks; ep shards routed experts inside dp", [&] {
    v.field("pp", kAtLeast1, c.parallel.pp...);
    v.field("dp", kAtLeast1, c.parallel.dp...);
    v.field("ep", kAtLeast1, c.parallel.ep...);
    v.field("ranks_per_node", kNonNegative, c.parallel.ranks_per_node...);
    v.field("max_nodes_per_token", kNonNegative, c.parallel.max_nodes_per_token...);
    v.field("schedule", Text{{"1f1b", "zb1p", "dualpipe", "dualpipev"}}, c.parallel.schedule...);
  });
  v.section("activations", "what a micro-batch keeps from forward to backward", [&] {
    v.field("recompute_norms", Text{{"off", "on"}}, c.activations.recompute_norms...);
    v.field("recompute_mla_up", Text{{"off", "on"}}, c.activations.recompute_mla_up...);
    v.field("storage", Text{{"fp32", "bf16"}}, c.activations.storage...);
  });
  v.section("precision", "GEMM recipe; master weights and gradients are always fp32", [&] {
    v.field("recipe", Text{{"fp32", "bf16", "fp8"}}, c.precision.recipe...);
    v.field("fp8_pow2_scales", Text{{"spec", "all", "none"}}, c.precision.fp8_pow2_scales...);
    v.field("fp8_dgrad_tile", Text{{"1x128", "128x128"}}, c.precision.fp8_dgrad_tile...);
    v.section("overrides", "per component; recipe = as precision.recipe", [&] {
      const Text linear{{"recipe", "fp32", "bf16", "fp8"}};
      const Text high{{"recipe", "fp32", "bf16"}};  // the gate and head are never FP8
      v.field("attention_proj", linear, c.precision.overrides.attention_proj...);
      v.field("dense_mlp", linear, c.precision.overrides.dense_mlp...);
      v.field("shared_expert", linear, c.precision.overrides.shared_expert...);
      v.field("routed_expert", linear, c.precision.overrides.routed_expert...);
      v.field("gate", high, c.precision.overrides.gate...);
      v.field("head", high, c.precision.overrides.head...);
    });
  });
  v.section("run", "where and how long", [&] {
    v.field("dir", kNonEmptyText, c.run.dir...);
    v.field("steps", kPositive, c.run.steps...);
    v.field("seed", kAny, c.run.seed...);
    v.field("log_interval", kPositive, c.run.log_interval...);
    v.field("threads", kNonNegative, c.run.threads...);
    v.field("device", Text{{"cpu", "guard"}}, c.run.device...);
    v.field("save_params", kAnyText, c.run.save_params...);
    v.field("save_interval", kNonNegative, c.run.save_interval...);
    v.field("keep_checkpoints", kPositive, c.run.keep_checkpoints...);
    v.field("eval_interval", kNonNegative, c.run.eval_interval...);
    v.field("eval_batches", kNonNegative, c.run.eval_batches...);
  });
}

const Schema& schema() {
  static const Schema s = [] {
    SchemaBuilder b;
    Config c;
    visit_config(b, c);
    return b.root;
  }();
  return s;
}

// ---------------------------------------------------------------------------------------------
// Rules between settings
// ---------------------------------------------------------------------------------------------

void check_relations(const Context& ctx, const Config& c) {
  const ModelConfig& m = c.model;
  const LrSchedule& lr = c.schedule.lr;
  const ParallelConfig& par = c.parallel;
  // Products in 128 bits: a huge value must fail a rule, not overflow.
  const int64_t per_group = m.n_routed_experts / m.n_group;  // n_group >= 1 (field rule)
  const __int128 kept = static_cast<__int128>(m.topk_group) * per_group;
  const __int128 batch_unit = static_cast<__int128>(c.data.micro_batch_size) * par.dp;
  auto s = [](auto x) { return show(x); };
  struct Rule {
    const char* key;
    bool ok;
    std::string must;  // completes "must ..."
    std::string got;
    std::vector<std::string> inputs;  // the other keys it depends on (to name their --set)
  };
  // Ordered so that a rule's inputs were checked by the rules above it.
  const Rule rules[] = {
      {"model.first_k_dense_replace",
       m.first_k_dense_replace <= m.num_hidden_layers,
       "be <= model.num_hidden_layers (" + s(m.num_hidden_layers) + ")",
       s(m.first_k_dense_replace),
       {"model.num_hidden_layers"}},
      {"model.num_experts_per_tok",
       m.num_experts_per_tok <= m.n_routed_experts,
       "be <= model.n_routed_experts (" + s(m.n_routed_experts) + ")",
       s(m.num_experts_per_tok),
       {"model.n_routed_experts"}},
      {"model.n_group",
       m.n_routed_experts % m.n_group == 0,
       "divide model.n_routed_experts (" + s(m.n_routed_experts) + ")",
       s(m.n_group),
       {"model.n_routed_experts"}},
      {"model.topk_group",
       m.topk_group <= m.n_group,
       "be <= model.n_group (" + s(m.n_group) + ")",
       s(m.topk_group),
       {"model.n_group"}},
      {"model.num_experts_per_tok",
       m.num_experts_per_tok % m.topk_group == 0,
       "be divisible by model.topk_group (" + s(m.topk_group) + ")",
       s(m.num_experts_per_tok),
       {"model.topk_group"}},
      {"model.num_experts_per_tok",
       m.num_experts_per_tok <= kept,
       "be <= model.topk_group x experts per group (" + s(m.topk_group) + " x " + s(per_group) +
           " = " + s(static_cast<int64_t>(kept)) + "), the experts in the kept groups",
       s(m.num_experts_per_tok),
       {"model.topk_group", "model.n_routed_experts", "model.n_group"}},
      {"model.qk_rope_head_dim",
       m.qk_rope_head_dim % 2 == 0,
       "be even (RoPE rotates pairs of dimensions)",
       s(m.qk_rope_head_dim),
       {}},
      {"model.rope_scaling.beta_fast",
       m.yarn_beta_fast > m.yarn_beta_slow,
       "be > model.rope_scaling.beta_slow (" + s(m.yarn_beta_slow) + ")",
       s(m.yarn_beta_fast),
       {"model.rope_scaling.beta_slow"}},
      {"model.max_seq_len",
       m.max_seq_len >= c.data.seq_len,
       "be >= data.seq_len (" + s(c.data.seq_len) + ")",
       s(m.max_seq_len),
       {"data.seq_len"}},
      {"parallel.pp",
       par.pp <= m.num_hidden_layers,
       "be <= model.num_hidden_layers (" + s(m.num_hidden_layers) + ")",
       s(par.pp),
       {"model.num_hidden_layers"}},
      {"parallel.ep",
       par.dp % par.ep == 0,
       "divide parallel.dp (" + s(par.dp) + ")",
       s(par.ep),
       {"parallel.dp"}},
      {"parallel.ep",
       m.n_routed_experts % par.ep == 0,
       "divide model.n_routed_experts (" + s(m.n_routed_experts) + ")",
       s(par.ep),
       {"model.n_routed_experts"}},
      {"data.global_batch_size",
       c.data.global_batch_size % batch_unit == 0,
       "be a positive multiple of data.micro_batch_size x parallel.dp (" +
           s(c.data.micro_batch_size) + " x " + s(par.dp) + " = " +
           (batch_unit > std::numeric_limits<int64_t>::max()
                ? std::string("more than 2^63")
                : s(static_cast<int64_t>(batch_unit))) +
           ")",
       s(c.data.global_batch_size),
       {"data.micro_batch_size", "parallel.dp"}},
      {"data.batch_ramp_start",
       c.data.batch_ramp_start <= c.data.global_batch_size,
       "be <= data.global_batch_size (" + s(c.data.global_batch_size) + "), or 0 (no ramp)",
       s(c.data.batch_ramp_start),
       {"data.global_batch_size"}},
      {"data.batch_ramp_tokens",
       (c.data.batch_ramp_start == 0) == (c.data.batch_ramp_tokens == 0),
       c.data.batch_ramp_start == 0
           ? std::string("be 0 when data.batch_ramp_start is 0 (no ramp)")
           : "be > 0 when data.batch_ramp_start is set (" + s(c.data.batch_ramp_start) + ")",
       s(c.data.batch_ramp_tokens),
       {"data.batch_ramp_start"}},
      {"run.eval_interval",
       c.run.eval_interval == 0 || !c.data.valid_path.empty(),
       "be 0 unless data.valid_path names a validation set",
       s(c.run.eval_interval),
       {"data.valid_path"}},
      {"schedule.lr.decay_until",
       lr.decay_until == 0 || lr.decay_until >= lr.constant_until,
       "be >= schedule.lr.constant_until (" + s(lr.constant_until) + ") or 0 (no decay)",
       s(lr.decay_until),
       {"schedule.lr.constant_until"}},
      {"schedule.lr.tails",
       lr.decay_until > 0 || lr.tails.values.empty(),
       "be empty when schedule.lr.decay_until is 0 (no decay, so no tails)",
       s(static_cast<int64_t>(lr.tails.values.size())) + " entries",
       {"schedule.lr.decay_until"}},
  };
  for (const Rule& r : rules) {
    if (!r.ok) ctx.fail(r.key, "must " + r.must + ", got " + r.got, r.inputs);
  }
}

}  // namespace

Config parse_config(const std::string& yaml_text, const std::string& source,
                    const std::vector<std::string>& overrides) {
  Context ctx(source);
  YAML::Node root;
  std::string error;
  if (!load_document(yaml_text, root, error)) ctx.fail("", error);
  if (!root.IsMap()) {
    ctx.fail("",
             "expected a mapping of sections (model, data, optimizer, schedule, parallel, "
             "precision, run) at the top level, got " +
                 (is_null(root) ? std::string("an empty document") : describe(root)));
  }
  for (const std::string& o : overrides) apply_override(ctx, root, schema(), o);
  check_keys(ctx, root, schema(), "");

  Config c;
  c.source = source;
  Reader reader(ctx, root);
  visit_config(reader, c);
  // Unset max_seq_len means "the run's sequence length" (no YaRN unless asked for).
  if (!reader.present("model.max_seq_len")) c.model.max_seq_len = c.data.seq_len;
  check_relations(ctx, c);
  return c;
}

Config load_config(const std::string& path, const std::vector<std::string>& overrides) {
  const std::string where = (path.empty() ? "(config)" : path) + ": ";
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec))
    throw ConfigError(where + "is a directory, expected a YAML file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ConfigError(where + "cannot open: " + std::strerror(errno));
  std::stringstream text;
  text << in.rdbuf();
  if (in.bad()) throw ConfigError(where + "cannot read: " + std::strerror(errno));
  return parse_config(text.str(), path, overrides);
}

std::string config_to_yaml(const Config& c) {
  Writer w;
  std::string source = c.source;
  for (char& ch : source) {
    if (static_cast<unsigned char>(ch) < 0x20) ch = '?';
  }
  w.out = "# moetron effective config: every setting, defaults included" +
          (source.empty() ? std::string() : " (loaded from " + source + ")") + ".\n";
  visit_config(w, c);
  return w.out;
}

bool operator==(const Config& a, const Config& b) {
  Comparer cmp;
  visit_config(cmp, a, b);
  return cmp.equal;
}

}  // namespace moetron
