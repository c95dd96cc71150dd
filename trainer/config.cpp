// trainer/config.cpp: the settings table, the rules between sections, and the entry points
// (YAML text -> validated Config, Config -> YAML, ==).
//
// One list of settings, visit_config(), drives everything: it is walked by a schema builder (the
// known keys, for unknown-key and `--set` checks), by the reader (type and single-value range
// checks), by the writer (config_to_yaml) and by operator== (the visitors: config_schema.h).
// Adding a setting is one line there; the model's settings are one walk of their own
// (model_fields.h). Rules that relate two or more settings are tables: the model's own in
// ModelConfig::rules (model/config.h), the rest here in named groups under check_relations().
//
// Loading order: parse the text -> apply `--set` overrides to the YAML tree -> reject unknown and
// duplicate keys -> read every field (types, ranges) -> fill defaults that depend on other fields
// (model.max_seq_len), and the hardware keys a profile gives (trainer/hardware.h) -> cross-field
// rules. Every failure is one ConfigError
// "<source>[: --set <override>]: <dotted.key>: <what was expected>, got <what was found>"; the
// `--set` part appears when the offending key came from an override.
#include "trainer/config.h"

#include <yaml-cpp/yaml.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <optional>
#include <sstream>

#include "model/flops.h"
#include "trainer/config_schema.h"
#include "trainer/hardware.h"
#include "trainer/model_fields.h"

namespace moetron {

namespace {

using namespace config_schema;

// Choices that are not an enum's whole word list.
const Choice<bool> kOffOn{{{false, "off"}, {true, "on"}}};
// activations.attention_output: as activations.storage says, or E5M6 (model/precision.h)
const Choice<bool> kAttentionOutput{{{false, "storage"}, {true, "e5m6"}}};
// activations.block_input: fp32 (the residual stream as it runs) or as activations.storage says
const Choice<bool> kBlockInput{{{false, "fp32"}, {true, "storage"}}};
constexpr Range kRowAlign{0, 256, false, false};  // precision.expert_row_align (0 = auto)
const Choice<Device> kRunDevices = choices({Device::CPU, Device::CUDA, Device::Guard});
// A component's override: "recipe" (follow precision.recipe) or a recipe; FP8 only for the
// components made of Linear layers (kComponents).
const Choice<std::optional<Recipe>>& override_choice(bool linear) {
  static const auto make = [](bool fp8_ok) {
    Choice<std::optional<Recipe>> c{{{std::nullopt, "recipe"}}};
    for (const EnumWord<Recipe>& w : kRecipeWords)
      if (fp8_ok || w.value != Recipe::FP8) c.words.push_back({w.value, w.word});
    return c;
  };
  static const Choice<std::optional<Recipe>> linear_choice = make(true), other = make(false);
  return linear ? linear_choice : other;
}

// ---------------------------------------------------------------------------------------------
// The list of settings (visitor interface: config_schema.h). `c...` is one Config (read, write,
// schema) or two (compare).
// ---------------------------------------------------------------------------------------------

template <class V, class... C>
void visit_config(V& v, C&... c) {
  v.section("model", "the network; names as in the Hugging Face DeepSeek-V3 config.json",
            [&] { visit_model_config(v, c.model...); });
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
    v.field("moment_dtype", choices<FloatFormat>(), c.optimizer.moment_dtype...);
    v.field("grad_reduce_dtype", choices<FloatFormat>(), c.optimizer.grad_reduce_dtype...);
    v.field("overlap_grad_reduce", kOffOn, c.optimizer.overlap_grad_reduce...);
    v.field("grad_bucket_elements", kAtLeast1, c.optimizer.grad_bucket_elements...);
    v.field("shard_master_weights", kOffOn, c.optimizer.shard_master_weights...);
  });
  v.section("schedule", "every `until` is in `unit` (steps or tokens consumed)", [&] {
    v.field("unit", choices<ScheduleUnit>(), c.schedule.unit...);
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
    v.field("schedule", choices<PipelineSchedule>(), c.parallel.schedule...);
    v.field("overlap", choices<PairOverlap>(), c.parallel.overlap...);
    v.field("progress_poll_us", kNonNegative, c.parallel.progress_poll_us...);
    v.field("wait", choices<WaitMode>(), c.parallel.wait...);
    v.field("nccl_max_ctas", kNonNegative, c.parallel.nccl_max_ctas...);
    v.field("device_comm", choices<DeviceComm>(), c.parallel.device_comm...);
    v.field("stage_layers", kNonNegative, c.parallel.stage_layers...);
  });
  v.section("activations", "what a micro-batch keeps from forward to backward", [&] {
    v.field("recompute_norms", kOffOn, c.activations.recompute_norms...);
    v.field("recompute_mla_up", kOffOn, c.activations.recompute_mla_up...);
    v.field("storage", choices<FloatFormat>(), c.activations.storage...);
    v.field("attention_output", kAttentionOutput, c.activations.attention_output_e5m6...);
    v.field("block_input", kBlockInput, c.activations.block_input_storage...);
  });
  v.section("precision", "GEMM recipe; master weights and gradients are always fp32", [&] {
    v.field("recipe", choices<Recipe>(), c.precision.recipe...);
    v.field("fp8_pow2_scales", choices<Pow2Scales>(), c.precision.fp8_pow2_scales...);
    v.field("fp8_dgrad_tile", choices<DgradTile>(), c.precision.fp8_dgrad_tile...);
    v.field("fp8_weight_transpose", choices<WeightTranspose>(),
            c.precision.fp8_weight_transpose...);
    v.field("expert_row_align", kRowAlign, c.precision.expert_row_align...);
    v.section("overrides", "per component; recipe = as precision.recipe", [&] {
      for (const ComponentInfo& k : kComponents)
        v.field(k.key, override_choice(k.linear), c.precision.overrides[k.id]...);
    });
  });
  v.section("hardware", "one device: memory (plan), dense peaks (MFU), links; 0 = unknown", [&] {
    v.field("profile", kAnyText, c.hardware.profile...);
    visit_hardware_fields(v, c.hardware...);
  });
  v.section("run", "where and how long", [&] {
    v.field("dir", kNonEmptyText, c.run.dir...);
    v.field("steps", kPositive, c.run.steps...);
    v.field("seed", kAny, c.run.seed...);
    v.field("log_interval", kPositive, c.run.log_interval...);
    v.field("threads", kNonNegative, c.run.threads...);
    v.field("device", kRunDevices, c.run.device...);
    v.field("save_params", kAnyText, c.run.save_params...);
    v.field("save_interval", kNonNegative, c.run.save_interval...);
    v.field("keep_checkpoints", kPositive, c.run.keep_checkpoints...);
    v.field("max_bad_steps", kNonNegative, c.run.max_bad_steps...);
    v.field("comm_timeout_s", kNonNegative, c.run.comm_timeout_s...);
    v.field("eval_interval", kNonNegative, c.run.eval_interval...);
    v.field("eval_batches", kNonNegative, c.run.eval_batches...);
    v.field("sample_interval", kNonNegative, c.run.sample_interval...);
    v.field("sample_prompt", kAnyText, c.run.sample_prompt...);
    v.field("sample_tokens", kPositive, c.run.sample_tokens...);
    v.field("count_flops", kOffOn, c.run.count_flops...);
    v.field("trace_steps", kPositive, c.run.trace_steps...);
    v.field("profile_steps", kPositive, c.run.profile_steps...);
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
// Rules between sections (each group ordered so that a rule's inputs were checked before it)
// ---------------------------------------------------------------------------------------------

// The model against the run: its context and its layout over ranks.
std::vector<SettingRule> fit_rules(const Config& c) {
  const ModelConfig& m = c.model;
  const ParallelConfig& par = c.parallel;
  const int64_t stages = pipeline_stages(par);
  return {
      {"model.max_seq_len",
       m.max_seq_len >= c.data.seq_len,
       "be >= data.seq_len (" + show(c.data.seq_len) + ")",
       show(m.max_seq_len),
       {"data.seq_len"}},
      {"parallel.pp",
       par.pp <= m.num_hidden_layers,
       "be <= model.num_hidden_layers (" + show(m.num_hidden_layers) + ")",
       show(par.pp),
       {"model.num_hidden_layers"}},
      {"parallel.ep",
       par.dp % par.ep == 0,
       "divide parallel.dp (" + show(par.dp) + ")",
       show(par.ep),
       {"parallel.dp"}},
      {"parallel.stage_layers",
       par.stage_layers.empty() || static_cast<int64_t>(par.stage_layers.size()) == stages,
       "name the first layer of each of the " + show(stages) + " pipeline stages (parallel.pp" +
           (stages != par.pp ? std::string(" x 2 for dualpipev") : std::string()) + "), or be []",
       show(static_cast<int64_t>(par.stage_layers.size())) + " entries",
       {"parallel.pp", "parallel.schedule"}},
      {"parallel.stage_layers",
       par.stage_layers.empty() || par.stage_layers.front() == 0,
       "start with layer 0 (the first stage's first layer)",
       par.stage_layers.empty() ? std::string("[]") : show(par.stage_layers.front()),
       {}},
      {"parallel.stage_layers",
       par.stage_layers.empty() || par.stage_layers.back() < m.num_hidden_layers,
       "name layers < model.num_hidden_layers (" + show(m.num_hidden_layers) +
           "): every stage needs a layer",
       par.stage_layers.empty() ? std::string("[]") : show(par.stage_layers.back()),
       {"model.num_hidden_layers"}},
      {"parallel.ep",
       m.n_routed_experts % par.ep == 0,
       "divide model.n_routed_experts (" + show(m.n_routed_experts) + ")",
       show(par.ep),
       {"model.n_routed_experts"}},
  };
}

// Batch sizes, the batch ramp and evaluation.
std::vector<SettingRule> batch_rules(const Config& c) {
  const DataConfig& d = c.data;
  // In 128 bits: a huge value must fail the rule, not overflow.
  const __int128 batch_unit = static_cast<__int128>(d.micro_batch_size) * c.parallel.dp;
  return {
      {"data.global_batch_size",
       d.global_batch_size % batch_unit == 0,
       "be a positive multiple of data.micro_batch_size x parallel.dp (" +
           show(d.micro_batch_size) + " x " + show(c.parallel.dp) + " = " +
           (batch_unit > std::numeric_limits<int64_t>::max()
                ? std::string("more than 2^63")
                : show(static_cast<int64_t>(batch_unit))) +
           ")",
       show(d.global_batch_size),
       {"data.micro_batch_size", "parallel.dp"}},
      {"data.batch_ramp_start",
       d.batch_ramp_start <= d.global_batch_size,
       "be <= data.global_batch_size (" + show(d.global_batch_size) + "), or 0 (no ramp)",
       show(d.batch_ramp_start),
       {"data.global_batch_size"}},
      {"data.batch_ramp_tokens",
       (d.batch_ramp_start == 0) == (d.batch_ramp_tokens == 0),
       d.batch_ramp_start == 0
           ? std::string("be 0 when data.batch_ramp_start is 0 (no ramp)")
           : "be > 0 when data.batch_ramp_start is set (" + show(d.batch_ramp_start) + ")",
       show(d.batch_ramp_tokens),
       {"data.batch_ramp_start"}},
      {"run.eval_interval",
       c.run.eval_interval == 0 || !d.valid_path.empty(),
       "be 0 unless data.valid_path names a validation set",
       show(c.run.eval_interval),
       {"data.valid_path"}},
      {"run.trace_steps",
       c.run.trace_steps.empty() || c.run.trace_steps.back() <= c.run.steps,
       "name steps <= run.steps (" + show(c.run.steps) + ")",
       c.run.trace_steps.empty() ? std::string("[]") : show(c.run.trace_steps.back()),
       {"run.steps"}},
      {"run.profile_steps",
       c.run.profile_steps.empty() || c.run.profile_steps.back() <= c.run.steps,
       "name steps <= run.steps (" + show(c.run.steps) + ")",
       c.run.profile_steps.empty() ? std::string("[]") : show(c.run.profile_steps.back()),
       {"run.steps"}},
  };
}

// The LR shape.
std::vector<SettingRule> schedule_rules(const Config& c) {
  const LrSchedule& lr = c.schedule.lr;
  return {
      {"schedule.lr.decay_until",
       lr.decay_until == 0 || lr.decay_until >= lr.constant_until,
       "be >= schedule.lr.constant_until (" + show(lr.constant_until) + ") or 0 (no decay)",
       show(lr.decay_until),
       {"schedule.lr.constant_until"}},
      {"schedule.lr.tails",
       lr.decay_until > 0 || lr.tails.values.empty(),
       "be empty when schedule.lr.decay_until is 0 (no decay, so no tails)",
       show(static_cast<int64_t>(lr.tails.values.size())) + " entries",
       {"schedule.lr.decay_until"}},
  };
}

void check(const Context& ctx, const std::vector<SettingRule>& rules) {
  for (const SettingRule& r : rules) {
    if (!r.ok) ctx.fail(r.key, "must " + r.must + ", got " + r.got, r.inputs);
  }
}

// The model's own rules first: the others rely on them (n_routed_experts, layers).
void check_relations(const Context& ctx, const Config& c) {
  check(ctx, c.model.rules("model."));
  check(ctx, fit_rules(c));
  check(ctx, batch_rules(c));
  check(ctx, schedule_rules(c));
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
             "expected a mapping of sections (model, data, optimizer, schedule, activations, "
             "parallel, precision, hardware, run) at the top level, got " +
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
  apply_hardware_profile(ctx, reader, c.hardware);  // the keys the config leaves to a profile
  check_relations(ctx, c);
  // the cut in use: the explicit one, or the cost-balanced default
  const int64_t stages = pipeline_stages(c.parallel);
  c.model.stage_starts = !c.parallel.stage_layers.empty()
                             ? c.parallel.stage_layers
                             : balanced_stage_starts(c.model, stages, c.data.seq_len);
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
