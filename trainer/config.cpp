// trainer/config.cpp: YAML text -> validated Config, Config -> YAML, and the LR / piecewise
// schedules.
//
// One list of settings, visit_config(), drives everything: it is walked by a schema builder (the
// known keys, for unknown-key and `--set` checks), by the reader (type and single-value range
// checks), by the writer (config_to_yaml) and by operator==. Adding a setting is one line there.
// Rules that relate two or more settings are one table in check_relations().
//
// Loading order: parse the text -> apply `--set` overrides to the YAML tree -> reject unknown and
// duplicate keys -> read every field (types, ranges) -> fill defaults that depend on other fields
// (model.max_seq_len) -> cross-field rules. Every failure is one ConfigError
// "<source>[: --set <override>]: <dotted.key>: <what was expected>, got <what was found>"; the
// `--set` part appears when the offending key came from an override.
#include "trainer/config.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <numbers>
#include <set>
#include <sstream>
#include <stdexcept>
#include <utility>

namespace moetron {

// ---------------------------------------------------------------------------------------------
// Schedules
// ---------------------------------------------------------------------------------------------

// values[i] holds for x < until[i]; from until[i] on (inclusive) the next value applies.
double PiecewiseConstant::at(double x) const {
  if (values.empty()) throw std::logic_error("PiecewiseConstant::at on an empty schedule");
  const size_t bounded = std::min(until.size(), values.size() - 1);
  for (size_t i = 0; i < bounded; ++i) {
    if (x < until[i]) return values[i];
  }
  return values[bounded];
}

// Warm-up is always counted in optimizer steps (0-based: step 0 already trains with
// peak / warmup_steps, the last warm-up step with peak). After warm-up, x is the step or the
// number of tokens consumed (`unit_tokens`), and the LR is: peak until constant_until, a half
// cosine from peak to min_lr between constant_until and decay_until, then the tails (or min_lr
// when there are none). decay_until == 0 means "no decay": constant peak after warm-up, for the
// whole run (validation then forbids tails, which would never apply).
double LrSchedule::at(int64_t step, double tokens, bool unit_tokens) const {
  if (step < warmup_steps) {
    return peak * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
  }
  if (decay_until <= 0) return peak;
  const double x = unit_tokens ? tokens : static_cast<double>(step);
  if (x < constant_until) return peak;
  if (x < decay_until) {
    const double progress = (x - constant_until) / (decay_until - constant_until);
    return min_lr + 0.5 * (peak - min_lr) * (1.0 + std::cos(std::numbers::pi * progress));
  }
  return tails.values.empty() ? min_lr : tails.at(x);
}

namespace {

// ---------------------------------------------------------------------------------------------
// Small text helpers
// ---------------------------------------------------------------------------------------------

// Shortest decimal that reads back as exactly `x` ("0.003", "1e-06", "2.5").
std::string shortest(double x) {
  char buf[64];
  auto res = std::to_chars(buf, buf + sizeof buf, x);
  return std::string(buf, res.ptr);
}

// A double as a YAML float that YAML 1.1 readers (PyYAML) also take as a float: the mantissa
// always has a '.', the exponent always a sign ("1.0e-06", "10000.0", "0.003").
std::string yaml_double(double x) {
  std::string s = shortest(x);
  const size_t e = s.find('e');
  std::string mantissa = s.substr(0, e), exponent = e == std::string::npos ? "" : s.substr(e);
  if (mantissa.find('.') == std::string::npos) mantissa += ".0";
  return mantissa + exponent;
}

std::string show(int64_t x) { return std::to_string(x); }
std::string show(uint64_t x) { return std::to_string(x); }
std::string show(double x) { return shortest(x); }

// A double-quoted YAML string (escapes: \" \\ \n \t \xNN).
std::string quoted(const std::string& s) {
  std::string out = "\"";
  for (unsigned char ch : s) {
    if (ch == '"' || ch == '\\') {
      out += '\\';
      out += static_cast<char>(ch);
    } else if (ch == '\n') {
      out += "\\n";
    } else if (ch == '\t') {
      out += "\\t";
    } else if (ch < 0x20 || ch == 0x7f) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\x%02x", ch);
      out += buf;
    } else {
      out += static_cast<char>(ch);
    }
  }
  return out + "\"";
}

std::string show(const std::string& s) {
  return quoted(s.size() > 80 ? s.substr(0, 77) + "..." : s);
}

std::string lower(std::string s) {
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

// Words that a YAML reader (yaml-cpp: YAML 1.1 booleans; or 1.2 null) would not read as text.
bool is_special_word(const std::string& s) {
  static const std::set<std::string> words = {"y",     "n",     "yes",   "no",   "true",
                                              "false", "on",    "off",   "null", "~",
                                              ".inf",  "-.inf", "+.inf", ".nan"};
  return words.count(lower(s)) > 0;
}

// A string field for config_to_yaml: plain when no YAML reader could take it for anything but
// text (a name or a path like runs/tiny, 1f1b), else double-quoted.
std::string yaml_string(const std::string& s) {
  if (s.empty() || s[0] == '-' || s[0] == '.' || is_special_word(s)) return quoted(s);
  for (char ch : s) {
    if (!std::isalnum(static_cast<unsigned char>(ch)) && !std::strchr("_./-", ch)) {
      return quoted(s);
    }
  }
  // Number-like: 123, 1e5, 1_000 (YAML 1.1), 0x1f, 0o17, 0b101.
  const std::string l = lower(s);
  const bool number_chars = l.find_first_not_of("0123456789_.e+-") == std::string::npos;
  const bool radix = l.size() > 1 && l[0] == '0' && std::strchr("xob", l[1]);
  if (std::isdigit(static_cast<unsigned char>(s[0])) && (number_chars || radix)) return quoted(s);
  return s;
}

// Optimal-string-alignment distance (Levenshtein plus adjacent swaps), case-insensitive.
size_t edit_distance(const std::string& a_in, const std::string& b_in) {
  const std::string a = lower(a_in), b = lower(b_in);
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.size()][b.size()];
}

std::string join(const std::string& path, const std::string& name) {
  return path.empty() ? name : path + "." + name;
}

// ---------------------------------------------------------------------------------------------
// Errors: where a key came from (the file or an override) and the one-line message
// ---------------------------------------------------------------------------------------------

struct Override {
  std::string path;  // dotted key path it set
  std::string text;  // as the user wrote it
};

class Context {
 public:
  explicit Context(const std::string& source) : source_(source.empty() ? "(config)" : source) {}

  // "<source>: " plus "--set <text>: " when `key`, or one of the `inputs` it was checked
  // against, lies at or under an override's path (the last override wins, as when applied).
  std::string where(const std::string& key, const std::vector<std::string>& inputs = {}) const {
    auto covers = [](const std::string& p, const std::string& k) {
      return k == p || (k.size() > p.size() && k.compare(0, p.size(), p) == 0 &&
                        (k[p.size()] == '.' || k[p.size()] == '['));
    };
    for (auto it = overrides_.rbegin(); it != overrides_.rend(); ++it) {
      bool hit = covers(it->path, key);
      for (const std::string& k : inputs) hit = hit || covers(it->path, k);
      if (hit) return source_ + ": --set " + it->text + ": ";
    }
    return source_ + ": ";
  }
  [[noreturn]] void fail(const std::string& key, const std::string& msg,
                         const std::vector<std::string>& inputs = {}) const {
    throw ConfigError(where(key, inputs) + (key.empty() ? "" : key + ": ") + msg);
  }
  // For problems with an override itself (malformed, unknown path): names it, not a key.
  [[noreturn]] void fail_override(const std::string& text, const std::string& msg) const {
    throw ConfigError(source_ + ": --set " + text + ": " + msg);
  }
  void add_override(Override o) { overrides_.push_back(std::move(o)); }

 private:
  std::string source_;
  std::vector<Override> overrides_;
};

// ---------------------------------------------------------------------------------------------
// Value rules for single settings
// ---------------------------------------------------------------------------------------------

constexpr double kInf = std::numeric_limits<double>::infinity();

struct Range {
  double lo = -kInf, hi = kInf;
  bool lo_open = false, hi_open = false;

  bool contains(double x) const {
    return (lo_open ? x > lo : x >= lo) && (hi_open ? x < hi : x <= hi);
  }
  std::string describe() const {
    if (hi == kInf) return std::string(lo_open ? "be > " : "be >= ") + show(lo);
    return "be in " + std::string(lo_open ? "(" : "[") + show(lo) + ", " + show(hi) +
           (hi_open ? ")" : "]");
  }
};
constexpr Range kAny{};
constexpr Range kPositive{0, kInf, true, false};
constexpr Range kNonNegative{0, kInf, false, false};
constexpr Range kAtLeast1{1, kInf, false, false};
constexpr Range kAtLeast2{2, kInf, false, false};
constexpr Range kUnitOpen{0, 1, false, true};  // [0, 1): Adam betas

// Rules for string settings: a fixed set of choices, or any text (optionally non-empty).
struct Text {
  std::vector<const char*> one_of;
  bool required = false;
};
const Text kAnyText{};
const Text kNonEmptyText{{}, true};

// ---------------------------------------------------------------------------------------------
// The list of settings. Each visitor V provides:
//   section(name, comment, fn)       a nested mapping whose fields fn() visits
//   field(name, rule, x...)          int64_t / uint64_t / double (rule: Range), string (Text)
//   tag(name, value)                 a string key whose only allowed value is `value`
//   piecewise(name, value_key, scalar_ok, range, p...)
//                                    a PiecewiseConstant: list of {until, <value_key>}, or a
//                                    plain number when scalar_ok
// `c...` is one Config (read, write, schema) or two (compare).
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
    v.field("sample_interval", kNonNegative, c.run.sample_interval...);
    v.field("sample_prompt", kAnyText, c.run.sample_prompt...);
    v.field("sample_tokens", kPositive, c.run.sample_tokens...);
  });
}

// ---------------------------------------------------------------------------------------------
// Schema: the tree of known keys
// ---------------------------------------------------------------------------------------------

struct Schema {
  std::string name;
  bool section = false;
  std::vector<Schema> children;

  const Schema* find(const std::string& key) const {
    for (const Schema& s : children) {
      if (s.name == key) return &s;
    }
    return nullptr;
  }
  // "(did you mean hidden_size?)" for a near miss (a typo, or a part of a longer name such as
  // warmup for warmup_steps), else the list of known keys.
  std::string suggest(const std::string& key) const {
    const Schema* best = nullptr;
    size_t best_d = std::numeric_limits<size_t>::max();
    for (const Schema& s : children) {
      const size_t d = edit_distance(key, s.name);
      if (d < best_d) best = &s, best_d = d;
    }
    if (best && best_d <= std::max<size_t>(2, key.size() / 3)) {
      return "(did you mean " + best->name + "?)";
    }
    std::vector<std::string> containing;
    std::string known;
    for (const Schema& s : children) {
      const std::string a = lower(key), b = lower(s.name);
      if (a.size() >= 3 && (b.find(a) != std::string::npos || a.find(b) != std::string::npos)) {
        containing.push_back(s.name);
      }
      known += (known.empty() ? "" : ", ") + s.name;
    }
    if (!containing.empty() && containing.size() <= 3) {
      std::string list = containing[0];  // "a", "a or b", "a, b or c"
      for (size_t i = 1; i < containing.size(); ++i) {
        list += (i + 1 == containing.size() ? " or " : ", ") + containing[i];
      }
      return "(did you mean " + list + "?)";
    }
    return "(known keys here: " + known + ")";
  }
};

class SchemaBuilder {
 public:
  Schema root{"", true, {}};

  template <class Fn>
  void section(const char* name, const char*, Fn fn) {
    Schema* parent = cur_;
    parent->children.push_back(Schema{name, true, {}});
    cur_ = &parent->children.back();
    fn();
    cur_ = parent;
  }
  template <class R, class T>
  void field(const char* name, const R&, T&) {
    leaf(name);
  }
  void tag(const char* name, const char*) { leaf(name); }
  template <class P>
  void piecewise(const char* name, const char*, bool, const Range&, P&) {
    leaf(name);
  }

 private:
  void leaf(const char* name) { cur_->children.push_back(Schema{name, false, {}}); }
  Schema* cur_ = &root;
};

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
// YAML node inspection
// ---------------------------------------------------------------------------------------------

bool is_null(const YAML::Node& n) { return !n.IsDefined() || n.IsNull(); }

// Quoted ('x', "x") or explicitly tagged !!str: text, never a number or a boolean.
bool is_quoted(const YAML::Node& n) { return n.Tag() == "!" || n.Tag() == "tag:yaml.org,2002:str"; }

bool is_bool(const YAML::Node& n) {
  bool b = false;
  return n.IsScalar() && !is_quoted(n) && YAML::convert<bool>::decode(n, b);
}

// YAML 1.2 core-schema integer / float syntax (decimal only).
bool int_syntax(const std::string& s) {
  size_t i = (!s.empty() && (s[0] == '+' || s[0] == '-')) ? 1 : 0;
  if (i == s.size()) return false;
  for (; i < s.size(); ++i) {
    if (!std::isdigit(static_cast<unsigned char>(s[i]))) return false;
  }
  return true;
}
bool float_syntax(const std::string& s) {
  size_t i = (!s.empty() && (s[0] == '+' || s[0] == '-')) ? 1 : 0;
  size_t digits = 0;
  while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i, ++digits;
  if (i < s.size() && s[i] == '.') {
    ++i;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i, ++digits;
  }
  if (digits == 0) return false;
  if (i < s.size() && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < s.size() && (s[i] == '+' || s[i] == '-')) ++i;
    size_t exp_digits = 0;
    while (i < s.size() && std::isdigit(static_cast<unsigned char>(s[i]))) ++i, ++exp_digits;
    if (exp_digits == 0) return false;
  }
  return i == s.size();
}
bool inf_or_nan(const std::string& s) {
  const std::string l = lower(s);
  return l == ".inf" || l == "+.inf" || l == "-.inf" || l == ".nan";
}

// What a node is, for "got ..." in messages.
std::string describe(const YAML::Node& n) {
  if (is_null(n)) return "nothing (null)";
  if (n.IsMap()) return "a mapping";
  if (n.IsSequence()) return "a list";
  const std::string& s = n.Scalar();
  if (is_quoted(n)) return "the string " + show(s);
  if (is_bool(n)) return "the boolean " + s;
  if (float_syntax(s) || inf_or_nan(s)) return s;
  return "the string " + show(s);
}

// Reads one scalar setting; `key` only names it in messages.
void read_value(const Context& ctx, const YAML::Node& n, const std::string& key, int64_t& out) {
  const bool scalar = n.IsScalar() && !is_quoted(n) && !is_bool(n);
  std::string s = scalar ? n.Scalar() : "";
  if (!scalar || !int_syntax(s)) ctx.fail(key, "expected an integer, got " + describe(n));
  if (s[0] == '+') s.erase(0, 1);
  auto res = std::from_chars(s.data(), s.data() + s.size(), out);
  if (res.ec != std::errc() || res.ptr != s.data() + s.size()) {
    ctx.fail(key, "expected an integer that fits in 64 bits, got " + n.Scalar());
  }
}

void read_value(const Context& ctx, const YAML::Node& n, const std::string& key, uint64_t& out) {
  const bool scalar = n.IsScalar() && !is_quoted(n) && !is_bool(n);
  std::string s = scalar ? n.Scalar() : "";
  if (!scalar || !int_syntax(s) || s[0] == '-') {
    ctx.fail(key, "expected a non-negative integer, got " + describe(n));
  }
  if (s[0] == '+') s.erase(0, 1);
  auto res = std::from_chars(s.data(), s.data() + s.size(), out);
  if (res.ec != std::errc() || res.ptr != s.data() + s.size()) {
    ctx.fail(key, "expected a non-negative integer that fits in 64 bits, got " + n.Scalar());
  }
}

void read_value(const Context& ctx, const YAML::Node& n, const std::string& key, double& out) {
  const bool scalar = n.IsScalar() && !is_quoted(n) && !is_bool(n);
  std::string s = scalar ? n.Scalar() : "";
  if (scalar && inf_or_nan(s)) ctx.fail(key, "expected a finite number, got " + s);
  if (!scalar || !float_syntax(s)) ctx.fail(key, "expected a number, got " + describe(n));
  if (s[0] == '+') s.erase(0, 1);
  auto res = std::from_chars(s.data(), s.data() + s.size(), out);
  if (res.ptr != s.data() + s.size() ||
      (res.ec != std::errc() && res.ec != std::errc::result_out_of_range)) {
    ctx.fail(key, "expected a number, got " + describe(n));
  }
  // Out of range: overflow is an error; underflow (1e-400) reads as the nearest double.
  if (res.ec == std::errc::result_out_of_range) {
    const double approx = std::strtod(s.c_str(), nullptr);
    if (!std::isfinite(approx)) ctx.fail(key, "expected a finite number, got " + n.Scalar());
    out = approx;
  }
}

// Any scalar is text; null reads as "" (so `valid_path: ~` means none).
void read_value(const Context& ctx, const YAML::Node& n, const std::string& key, std::string& out) {
  if (is_null(n)) {
    out.clear();
  } else if (n.IsScalar()) {
    out = n.Scalar();
  } else {
    ctx.fail(key, "expected a string, got " + describe(n));
  }
}

// Rejects non-text, duplicate and unknown keys in `node` (a mapping, or null = empty) and in its
// sub-sections.
void check_keys(const Context& ctx, const YAML::Node& node, const Schema& s,
                const std::string& path) {
  if (is_null(node)) return;
  if (!node.IsMap()) ctx.fail(path, "expected a mapping, got " + describe(node));
  std::set<std::string> seen;
  for (const auto& kv : node) {
    if (!kv.first.IsScalar()) {
      ctx.fail(path, "expected names as keys, got " + describe(kv.first) + " as a key");
    }
    const std::string& name = kv.first.Scalar();
    const std::string key = join(path, name);
    if (!seen.insert(name).second) ctx.fail(key, "duplicate key");
    const Schema* child = s.find(name);
    if (!child) {
      throw ConfigError(ctx.where(key) + "unknown key " + key + " " + s.suggest(name));
    }
    if (child->section) check_keys(ctx, kv.second, *child, key);
  }
}

// ---------------------------------------------------------------------------------------------
// Reader: YAML tree -> Config (after check_keys, so sections are mappings or null)
// ---------------------------------------------------------------------------------------------

class Reader {
 public:
  Reader(const Context& ctx, const YAML::Node& root) : ctx_(ctx) { enter(root); }

  bool present(const std::string& key) const { return present_.count(key) > 0; }

  template <class Fn>
  void section(const char* name, const char*, Fn fn) {
    const YAML::Node* node = find(name);
    auto saved_entries = std::move(entries_);
    const std::string saved_path = path_;
    path_ = join(path_, name);
    enter(node ? *node : YAML::Node());
    fn();
    entries_ = std::move(saved_entries);
    path_ = saved_path;
  }

  template <class T>
  void field(const char* name, const Range& r, T& x) {
    const std::string key = join(path_, name);
    if (const YAML::Node* n = find(name)) read_value(ctx_, *n, key, x);
    if (!r.contains(static_cast<double>(x)))
      ctx_.fail(key, "must " + r.describe() + ", got " + show(x));
  }

  void field(const char* name, const Text& t, std::string& x) {
    const std::string key = join(path_, name);
    const YAML::Node* n = find(name);
    if (n) read_value(ctx_, *n, key, x);
    if (t.required && x.empty()) {
      ctx_.fail(key, std::string("must be set (non-empty), got ") +
                         (n ? describe(*n) : "nothing (the key is missing)"));
    }
    if (!t.one_of.empty() &&
        std::none_of(t.one_of.begin(), t.one_of.end(), [&](const char* o) { return x == o; })) {
      std::string options;
      for (const char* o : t.one_of) options += (options.empty() ? "" : ", ") + std::string(o);
      ctx_.fail(key, "must be one of {" + options + "}, got " + show(x));
    }
  }

  void tag(const char* name, const char* value) {
    const std::string key = join(path_, name);
    std::string x = value;
    if (const YAML::Node* n = find(name)) read_value(ctx_, *n, key, x);
    if (x != value)
      ctx_.fail(key, "must be " + std::string(value) + " (the only kind moetron implements), got " +
                         show(x));
  }

  void piecewise(const char* name, const char* value_key, bool scalar_ok, const Range& r,
                 PiecewiseConstant& p) {
    const std::string key = join(path_, name);
    const YAML::Node* n = find(name);
    if (!n) return;
    const std::string expected = std::string(scalar_ok ? "a number or " : "") +
                                 "a list of {until, " + value_key + "} entries";
    if (scalar_ok && n->IsScalar()) {
      if (is_quoted(*n) || is_bool(*n) || !float_syntax(n->Scalar())) {
        ctx_.fail(key, "expected " + expected + ", got " + describe(*n));
      }
      double v = 0;
      read_value(ctx_, *n, key, v);
      check_value(key, r, v);
      p = PiecewiseConstant{{}, {v}};
      return;
    }
    if (is_null(*n) && !scalar_ok) {
      p = PiecewiseConstant{};
      return;
    }
    if (!n->IsSequence()) ctx_.fail(key, "expected " + expected + ", got " + describe(*n));
    if (n->size() == 0 && scalar_ok) {
      ctx_.fail(key, "expected " + expected + " (at least one), got an empty list");
    }
    const Schema entry_schema{"", true, {{"until", false, {}}, {value_key, false, {}}}};
    PiecewiseConstant out;
    for (size_t i = 0; i < n->size(); ++i) {
      const YAML::Node e = (*n)[i];
      const std::string ekey = key + "[" + std::to_string(i) + "]";
      if (!e.IsMap())
        ctx_.fail(ekey, "expected an entry {until: X, " + std::string(value_key) + ": Y}, got " +
                            describe(e));
      check_keys(ctx_, e, entry_schema, ekey);
      const bool last = i + 1 == n->size();
      const YAML::Node v = e[value_key], u = e["until"];
      if (!v.IsDefined()) ctx_.fail(join(ekey, value_key), "required, got nothing");
      double value = 0;
      read_value(ctx_, v, join(ekey, value_key), value);
      check_value(join(ekey, value_key), r, value);
      out.values.push_back(value);
      if (!u.IsDefined()) {
        if (!last)
          ctx_.fail(join(ekey, "until"), "required on every entry but the last, got nothing");
        continue;
      }
      double until = 0;
      read_value(ctx_, u, join(ekey, "until"), until);
      check_value(join(ekey, "until"), kNonNegative, until);
      if (i > 0 && until <= out.until.back()) {
        ctx_.fail(join(ekey, "until"), "must be > " + key + "[" + std::to_string(i - 1) +
                                           "].until (" + show(out.until.back()) +
                                           ") (strictly increasing), got " + show(until));
      }
      // The last value holds to the end of the run; an `until` on it is checked, then dropped.
      if (!last) out.until.push_back(until);
    }
    p = std::move(out);
  }

 private:
  void enter(const YAML::Node& node) {
    entries_.clear();
    if (!node.IsDefined() || !node.IsMap()) return;
    for (const auto& kv : node) entries_.emplace_back(kv.first.Scalar(), kv.second);
  }
  const YAML::Node* find(const char* name) {
    for (auto& [k, v] : entries_) {
      if (k == name) {
        present_.insert(join(path_, name));
        return &v;
      }
    }
    return nullptr;
  }
  void check_value(const std::string& key, const Range& r, double v) const {
    if (!r.contains(v)) ctx_.fail(key, "must " + r.describe() + ", got " + show(v));
  }

  const Context& ctx_;
  std::string path_;
  std::vector<std::pair<std::string, YAML::Node>> entries_;
  std::set<std::string> present_;
};

// ---------------------------------------------------------------------------------------------
// Writer: Config -> YAML text
// ---------------------------------------------------------------------------------------------

class Writer {
 public:
  std::string out;

  template <class Fn>
  void section(const char* name, const char* comment, Fn fn) {
    out += pad() + "# " + comment + "\n" + pad() + name + ":\n";
    indent_ += 2;
    fn();
    indent_ -= 2;
  }
  void field(const char* name, const Range&, const int64_t& x) { line(name, show(x)); }
  void field(const char* name, const Range&, const uint64_t& x) { line(name, show(x)); }
  void field(const char* name, const Range&, const double& x) { line(name, yaml_double(x)); }
  void field(const char* name, const Text&, const std::string& x) { line(name, yaml_string(x)); }
  void tag(const char* name, const char* value) { line(name, value); }
  void piecewise(const char* name, const char* value_key, bool scalar_ok, const Range&,
                 const PiecewiseConstant& p) {
    if (scalar_ok && p.values.size() == 1) return line(name, yaml_double(p.values[0]));
    std::string list;
    for (size_t i = 0; i < p.values.size(); ++i) {
      list += list.empty() ? "{" : ", {";
      if (i < p.until.size()) list += "until: " + yaml_double(p.until[i]) + ", ";
      list += std::string(value_key) + ": " + yaml_double(p.values[i]) + "}";
    }
    line(name, "[" + list + "]");
  }

 private:
  std::string pad() const { return std::string(indent_, ' '); }
  void line(const char* name, const std::string& value) {
    out += pad() + name + ": " + value + "\n";
  }
  int indent_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Comparer: operator==
// ---------------------------------------------------------------------------------------------

class Comparer {
 public:
  bool equal = true;

  template <class Fn>
  void section(const char*, const char*, Fn fn) {
    fn();
  }
  template <class R, class T>
  void field(const char*, const R&, const T& a, const T& b) {
    equal = equal && a == b;
  }
  void tag(const char*, const char*) {}
  void piecewise(const char*, const char*, bool, const Range&, const PiecewiseConstant& a,
                 const PiecewiseConstant& b) {
    equal = equal && a.until == b.until && a.values == b.values;
  }
};

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

// ---------------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------------

// Parses one YAML document; on a syntax error returns false with the message in `error`.
bool load_document(const std::string& text, YAML::Node& doc, std::string& error) {
  std::vector<YAML::Node> docs;
  try {
    docs = YAML::LoadAll(text);
  } catch (const YAML::Exception& e) {
    error = "YAML syntax error";
    if (!e.mark.is_null()) {
      error += " at line " + std::to_string(e.mark.line + 1) + ", column " +
               std::to_string(e.mark.column + 1);
    }
    error += ": " + e.msg;
    return false;
  }
  if (docs.size() > 1) {
    error = "expected one YAML document, found " + std::to_string(docs.size());
    return false;
  }
  doc = docs.empty() ? YAML::Node() : docs[0];
  return true;
}

// Sets root[a][b]...[z] = value, turning null or scalar intermediate nodes into mappings.
void set_path(YAML::Node root, const std::vector<std::string>& parts, const YAML::Node& value) {
  YAML::Node cur = root;
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    YAML::Node next = cur[parts[i]];
    if (!next.IsMap()) {
      cur[parts[i]] = YAML::Node(YAML::NodeType::Map);
      next.reset(cur[parts[i]]);
    }
    cur.reset(next);  // rebinds `cur`; plain assignment would overwrite the node it refers to
  }
  cur[parts.back()] = value;
}

void apply_override(Context& ctx, YAML::Node& root, const std::string& text) {
  const size_t eq = text.find('=');
  if (eq == std::string::npos) {
    ctx.fail_override(text, "malformed override, expected key.path=value");
  }
  const std::string key = text.substr(0, eq);
  std::vector<std::string> parts;
  std::stringstream ss(key);
  for (std::string part; std::getline(ss, part, '.');) parts.push_back(part);
  if (key.empty() || key.back() == '.' ||
      std::any_of(parts.begin(), parts.end(), [](const std::string& p) { return p.empty(); })) {
    ctx.fail_override(text, "malformed key path " + show(key) + ", expected names joined by '.'");
  }
  const Schema* s = &schema();
  std::string path;
  for (size_t i = 0; i < parts.size(); ++i) {
    const Schema* child = s->find(parts[i]);
    path = join(path, parts[i]);
    if (!child) ctx.fail_override(text, "unknown key " + path + " " + s->suggest(parts[i]));
    if (i + 1 < parts.size() && !child->section) {
      ctx.fail_override(text, path + " is a single setting, it has no key " + parts[i + 1]);
    }
    s = child;
  }
  YAML::Node value;
  std::string error;
  if (!load_document(text.substr(eq + 1), value, error)) ctx.fail_override(text, "value: " + error);
  ctx.add_override(Override{key, text});
  set_path(root, parts, value);
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
  for (const std::string& o : overrides) apply_override(ctx, root, o);
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
