// A small typed-YAML library for settings tables (trainer/config.cpp is its one user): a table
// of settings is a function template visit(v, c...) that calls, for every setting,
//   v.section(name, comment, fn)       a nested mapping whose settings fn() visits
//   v.field(name, rule, x...)          int64_t / uint64_t / double (rule: Range), std::string
//                                      (Text), a value named by a word (Choice<T>), or a list of
//                                      strictly increasing int64_t (std::vector; Range per entry)
//   v.tag(name, value)                 a string key whose only allowed value is `value`
//   v.piecewise(name, value_key, scalar_ok, range, p...)
//                                      a PiecewiseConstant: list of {until, <value_key>}, or a
//                                      plain number when scalar_ok
// with `x...` one struct (read, write, schema) or two (compare). The visitors here walk it:
// SchemaBuilder (the tree of known keys: unknown keys, "did you mean", `--set` paths), Reader
// (YAML -> struct with type and single-value range checks), Writer (struct -> YAML that YAML 1.1
// and 1.2 readers take back unchanged) and Comparer (==). C++ has no dataclasses; this is the
// part of a config system that a Python project gets from its language and a library.
//
// Every failure is one ConfigError "<source>[: --set <override>]: <dotted.key>: <what was
// expected>, got <what was found>" (Context); the `--set` part appears when the offending key,
// or a key a rule checked it against, came from an override.
#pragma once

#include <yaml-cpp/yaml.h>

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "kernels/enum_words.h"
#include "trainer/config.h"
#include "trainer/lr_schedule.h"

namespace moetron::config_schema {

// ---------------------------------------------------------------------------------------------
// Text
// ---------------------------------------------------------------------------------------------

// Shortest decimal that reads back as exactly `x` ("0.003", "1e-06", "2.5").
std::string shortest(double x);
// A double as a YAML float that YAML 1.1 readers (PyYAML) also take as a float: the mantissa
// always has a '.', the exponent always a sign ("1.0e-06", "10000.0", "0.003").
std::string yaml_double(double x);
// A string setting as YAML: plain when no YAML reader could take it for anything but text (a
// name or a path like runs/tiny, 1f1b), else double-quoted.
std::string yaml_string(const std::string& s);
// Values in messages: numbers as written, strings double-quoted (cut at 80 characters).
std::string show(int64_t x);
std::string show(uint64_t x);
std::string show(double x);
std::string show(const std::string& s);
// "path.name" ("name" at the top).
std::string join(const std::string& path, const std::string& name);

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
  std::string where(const std::string& key, const std::vector<std::string>& inputs = {}) const;
  [[noreturn]] void fail(const std::string& key, const std::string& msg,
                         const std::vector<std::string>& inputs = {}) const;
  // For problems with an override itself (malformed, unknown path): names it, not a key.
  [[noreturn]] void fail_override(const std::string& text, const std::string& msg) const;
  void add_override(Override o) { overrides_.push_back(std::move(o)); }

 private:
  std::string source_;
  std::vector<Override> overrides_;
};

// ---------------------------------------------------------------------------------------------
// Rules for single settings
// ---------------------------------------------------------------------------------------------

constexpr double kInf = std::numeric_limits<double>::infinity();

// Numbers: an interval.
struct Range {
  double lo = -kInf, hi = kInf;
  bool lo_open = false, hi_open = false;

  bool contains(double x) const {
    return (lo_open ? x > lo : x >= lo) && (hi_open ? x < hi : x <= hi);
  }
  std::string describe() const;  // completes "must ..."
};
constexpr Range kAny{};
constexpr Range kPositive{0, kInf, true, false};
constexpr Range kNonNegative{0, kInf, false, false};
constexpr Range kAtLeast1{1, kInf, false, false};
constexpr Range kAtLeast2{2, kInf, false, false};
constexpr Range kUnitOpen{0, 1, false, true};  // [0, 1): Adam betas

// Free text, optionally non-empty.
struct Text {
  bool required = false;
};
constexpr Text kAnyText{};
constexpr Text kNonEmptyText{true};

// A value chosen by its word: the words are what the reader accepts, what the writer writes and
// what an error lists, in this order.
template <class T>
struct Choice {
  std::vector<EnumWord<T>> words;

  const char* word_of(const T& x) const {
    for (const EnumWord<T>& w : words)
      if (w.value == x) return w.word;
    return "?";
  }
  std::string list() const {  // "fp32, bf16"
    std::string out;
    for (const EnumWord<T>& w : words) {
      if (!out.empty()) out += ", ";
      out += w.word;
    }
    return out;
  }
};

// Every value of an enum, by its own word list (kernels/enum_words.h).
template <Worded E>
const Choice<E>& choices() {
  static const Choice<E> c{{enum_words(E{}).begin(), enum_words(E{}).end()}};
  return c;
}
// Some values of an enum, by their words.
template <Worded E>
Choice<E> choices(std::initializer_list<E> values) {
  Choice<E> c;
  for (E e : values) c.words.push_back({e, to_word(e)});
  return c;
}

// ---------------------------------------------------------------------------------------------
// Schema: the tree of known keys
// ---------------------------------------------------------------------------------------------

struct Schema {
  std::string name;
  bool section = false;
  std::vector<Schema> children;

  const Schema* find(const std::string& key) const;
  // "(did you mean hidden_size?)" for a near miss (a typo, or a part of a longer name such as
  // warmup for warmup_steps), else the list of known keys.
  std::string suggest(const std::string& key) const;
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

// ---------------------------------------------------------------------------------------------
// YAML nodes
// ---------------------------------------------------------------------------------------------

bool is_null(const YAML::Node& n);
// What a node is, for "got ..." in messages.
std::string describe(const YAML::Node& n);

// Reads one scalar setting; `key` only names it in messages. A string takes any scalar; null
// reads as "" (so `valid_path: ~` means none).
void read_value(const Context& ctx, const YAML::Node& n, const std::string& key, int64_t& out);
void read_value(const Context& ctx, const YAML::Node& n, const std::string& key, uint64_t& out);
void read_value(const Context& ctx, const YAML::Node& n, const std::string& key, double& out);
void read_value(const Context& ctx, const YAML::Node& n, const std::string& key, std::string& out);

// Rejects non-text, duplicate and unknown keys in `node` (a mapping, or null = empty) and in its
// sub-sections.
void check_keys(const Context& ctx, const YAML::Node& node, const Schema& s,
                const std::string& path);

// ---------------------------------------------------------------------------------------------
// Reader: YAML tree -> struct (after check_keys, so sections are mappings or null). An absent
// key keeps the struct's value (the default).
// ---------------------------------------------------------------------------------------------

class Reader {
 public:
  Reader(const Context& ctx, const YAML::Node& root) : ctx_(ctx) { enter(root); }

  // Whether the YAML gave `key` (a dotted path) a value.
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
  void field(const char* name, const Text& t, std::string& x);
  // A list of integers, each in `r`, strictly increasing; null or [] = empty.
  void field(const char* name, const Range& r, std::vector<int64_t>& x);
  template <class T>
  void field(const char* name, const Choice<T>& c, T& x) {
    const YAML::Node* n = find(name);
    if (!n) return;
    const std::string key = join(path_, name);
    std::string word;
    read_value(ctx_, *n, key, word);
    for (const EnumWord<T>& w : c.words) {
      if (word == w.word) {
        x = w.value;
        return;
      }
    }
    ctx_.fail(key, "must be one of {" + c.list() + "}, got " + show(word));
  }
  void tag(const char* name, const char* value);
  void piecewise(const char* name, const char* value_key, bool scalar_ok, const Range& r,
                 PiecewiseConstant& p);

 private:
  void enter(const YAML::Node& node);
  const YAML::Node* find(const char* name);
  void check_value(const std::string& key, const Range& r, double v) const;
  // Entry i of a piecewise list `key` (n entries), appended to `out`.
  void piecewise_entry(const std::string& key, const char* value_key, const Range& r,
                       const YAML::Node& e, size_t i, size_t n, PiecewiseConstant& out);

  const Context& ctx_;
  std::string path_;
  std::vector<std::pair<std::string, YAML::Node>> entries_;
  std::set<std::string> present_;
};

// ---------------------------------------------------------------------------------------------
// Writer: struct -> YAML text, one line per setting, a comment per section
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
  void field(const char* name, const Range&, const std::vector<int64_t>& x);
  template <class T>
  void field(const char* name, const Choice<T>& c, const T& x) {
    line(name, yaml_string(c.word_of(x)));
  }
  void tag(const char* name, const char* value) { line(name, value); }
  void piecewise(const char* name, const char* value_key, bool scalar_ok, const Range&,
                 const PiecewiseConstant& p);

 private:
  std::string pad() const { return std::string(indent_, ' '); }
  void line(const char* name, const std::string& value) {
    out += pad() + name + ": " + value + "\n";
  }
  int indent_ = 0;
};

// ---------------------------------------------------------------------------------------------
// Comparer: every setting equal
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
// Documents and `--set` overrides
// ---------------------------------------------------------------------------------------------

// Parses one YAML document; on a syntax error returns false with the message in `error`.
bool load_document(const std::string& text, YAML::Node& doc, std::string& error);

// The mapping at root[a][b]...[z] (`parts`), turning null or scalar nodes on the way into
// mappings; set_path then sets its key `last`.
YAML::Node mapping_at(YAML::Node root, const std::vector<std::string>& parts);
void set_path(YAML::Node root, const std::vector<std::string>& parts, const YAML::Node& value);

// Applies one "key.path=value" override to `root` (the key must be in `schema`) and records it
// in `ctx` for messages.
void apply_override(Context& ctx, YAML::Node& root, const Schema& schema, const std::string& text);

}  // namespace moetron::config_schema
