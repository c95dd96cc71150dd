// trainer/config_schema.cpp: the non-template parts of the typed-YAML library (see
// config_schema.h): text for YAML and messages, where a key came from, the schema's "did you
// mean", YAML scalar typing, the reader's checks, the writer's lists, documents and overrides.
#include "trainer/config_schema.h"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <type_traits>

namespace moetron::config_schema {

namespace {

std::string lower(std::string s) {
  for (char& ch : s) ch = static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
  return s;
}

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

// Words that a YAML reader (yaml-cpp: YAML 1.1 booleans; or 1.2 null) would not read as text.
bool is_special_word(const std::string& s) {
  static const std::set<std::string> words = {"y",     "n",     "yes",   "no",   "true",
                                              "false", "on",    "off",   "null", "~",
                                              ".inf",  "-.inf", "+.inf", ".nan"};
  return words.count(lower(s)) > 0;
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

}  // namespace

// ---------------------------------------------------------------------------------------------
// Text
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

std::string show(int64_t x) { return std::to_string(x); }
std::string show(uint64_t x) { return std::to_string(x); }
std::string show(double x) { return shortest(x); }
std::string show(const std::string& s) {
  return quoted(s.size() > 80 ? s.substr(0, 77) + "..." : s);
}

std::string join(const std::string& path, const std::string& name) {
  return path.empty() ? name : path + "." + name;
}

// ---------------------------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------------------------

std::string Context::where(const std::string& key, const std::vector<std::string>& inputs) const {
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

void Context::fail(const std::string& key, const std::string& msg,
                   const std::vector<std::string>& inputs) const {
  throw ConfigError(where(key, inputs) + (key.empty() ? "" : key + ": ") + msg);
}

void Context::fail_override(const std::string& text, const std::string& msg) const {
  throw ConfigError(source_ + ": --set " + text + ": " + msg);
}

// ---------------------------------------------------------------------------------------------
// Rules and schema
// ---------------------------------------------------------------------------------------------

std::string Range::describe() const {
  if (hi == kInf) return std::string(lo_open ? "be > " : "be >= ") + show(lo);
  return "be in " + std::string(lo_open ? "(" : "[") + show(lo) + ", " + show(hi) +
         (hi_open ? ")" : "]");
}

const Schema* Schema::find(const std::string& key) const {
  for (const Schema& s : children) {
    if (s.name == key) return &s;
  }
  return nullptr;
}

std::string Schema::suggest(const std::string& key) const {
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

// ---------------------------------------------------------------------------------------------
// YAML nodes
// ---------------------------------------------------------------------------------------------

bool is_null(const YAML::Node& n) { return !n.IsDefined() || n.IsNull(); }

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

// An integer setting: int64_t, or uint64_t (no sign allowed).
template <class T>
void read_integer(const Context& ctx, const YAML::Node& n, const std::string& key, T& out) {
  const std::string what = std::is_unsigned_v<T> ? "a non-negative integer" : "an integer";
  const bool scalar = n.IsScalar() && !is_quoted(n) && !is_bool(n);
  std::string s = scalar ? n.Scalar() : "";
  if (!scalar || !int_syntax(s) || (std::is_unsigned_v<T> && s[0] == '-')) {
    ctx.fail(key, "expected " + what + ", got " + describe(n));
  }
  if (s[0] == '+') s.erase(0, 1);
  auto res = std::from_chars(s.data(), s.data() + s.size(), out);
  if (res.ec != std::errc() || res.ptr != s.data() + s.size()) {
    ctx.fail(key, "expected " + what + " that fits in 64 bits, got " + n.Scalar());
  }
}

void read_value(const Context& ctx, const YAML::Node& n, const std::string& key, int64_t& out) {
  read_integer(ctx, n, key, out);
}

void read_value(const Context& ctx, const YAML::Node& n, const std::string& key, uint64_t& out) {
  read_integer(ctx, n, key, out);
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
// Reader
// ---------------------------------------------------------------------------------------------

void Reader::field(const char* name, const Text& t, std::string& x) {
  const std::string key = join(path_, name);
  const YAML::Node* n = find(name);
  if (n) read_value(ctx_, *n, key, x);
  if (t.required && x.empty()) {
    ctx_.fail(key, std::string("must be set (non-empty), got ") +
                       (n ? describe(*n) : "nothing (the key is missing)"));
  }
}

void Reader::field(const char* name, const Range& r, std::vector<int64_t>& x) {
  const std::string key = join(path_, name);
  const YAML::Node* n = find(name);
  if (!n) return;
  if (is_null(*n)) return x.clear();
  if (!n->IsSequence()) ctx_.fail(key, "expected a list of integers, got " + describe(*n));
  std::vector<int64_t> out;
  for (size_t i = 0; i < n->size(); ++i) {
    const std::string ekey = key + "[" + std::to_string(i) + "]";
    int64_t v = 0;
    read_value(ctx_, (*n)[i], ekey, v);
    check_value(ekey, r, static_cast<double>(v));
    if (i > 0 && v <= out.back())
      ctx_.fail(ekey, "must be > " + key + "[" + std::to_string(i - 1) + "] (" + show(out.back()) +
                          ") (strictly increasing), got " + show(v));
    out.push_back(v);
  }
  x = std::move(out);
}

void Reader::tag(const char* name, const char* value) {
  const std::string key = join(path_, name);
  std::string x = value;
  if (const YAML::Node* n = find(name)) read_value(ctx_, *n, key, x);
  if (x != value)
    ctx_.fail(key, "must be " + std::string(value) + " (the only kind moetron implements), got " +
                       show(x));
}

void Reader::piecewise(const char* name, const char* value_key, bool scalar_ok, const Range& r,
                       PiecewiseConstant& p) {
  const std::string key = join(path_, name);
  const YAML::Node* n = find(name);
  if (!n) return;
  const std::string expected =
      std::string(scalar_ok ? "a number or " : "") + "a list of {until, " + value_key + "} entries";
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
  PiecewiseConstant out;
  for (size_t i = 0; i < n->size(); ++i)
    piecewise_entry(key, value_key, r, (*n)[i], i, n->size(), out);
  p = std::move(out);
}

void Reader::piecewise_entry(const std::string& key, const char* value_key, const Range& r,
                             const YAML::Node& e, size_t i, size_t n, PiecewiseConstant& out) {
  const std::string ekey = key + "[" + std::to_string(i) + "]";
  if (!e.IsMap())
    ctx_.fail(ekey, "expected an entry {until: X, " + std::string(value_key) + ": Y}, got " +
                        describe(e));
  const Schema entry_schema{"", true, {{"until", false, {}}, {value_key, false, {}}}};
  check_keys(ctx_, e, entry_schema, ekey);
  const bool last = i + 1 == n;
  const YAML::Node v = e[value_key], u = e["until"];
  if (!v.IsDefined()) ctx_.fail(join(ekey, value_key), "required, got nothing");
  double value = 0;
  read_value(ctx_, v, join(ekey, value_key), value);
  check_value(join(ekey, value_key), r, value);
  out.values.push_back(value);
  if (!u.IsDefined()) {
    if (!last) ctx_.fail(join(ekey, "until"), "required on every entry but the last, got nothing");
    return;
  }
  double until = 0;
  read_value(ctx_, u, join(ekey, "until"), until);
  check_value(join(ekey, "until"), kNonNegative, until);
  if (i > 0 && until <= out.until.back()) {
    ctx_.fail(join(ekey, "until"), "must be > " + key + "[" + std::to_string(i - 1) + "].until (" +
                                       show(out.until.back()) + ") (strictly increasing), got " +
                                       show(until));
  }
  // The last value holds to the end of the run; an `until` on it is checked, then dropped.
  if (!last) out.until.push_back(until);
}

void Reader::enter(const YAML::Node& node) {
  entries_.clear();
  if (!node.IsDefined() || !node.IsMap()) return;
  for (const auto& kv : node) entries_.emplace_back(kv.first.Scalar(), kv.second);
}

const YAML::Node* Reader::find(const char* name) {
  for (auto& [k, v] : entries_) {
    if (k == name) {
      present_.insert(join(path_, name));
      return &v;
    }
  }
  return nullptr;
}

void Reader::check_value(const std::string& key, const Range& r, double v) const {
  if (!r.contains(v)) ctx_.fail(key, "must " + r.describe() + ", got " + show(v));
}

// ---------------------------------------------------------------------------------------------
// Writer
// ---------------------------------------------------------------------------------------------

void Writer::field(const char* name, const Range&, const std::vector<int64_t>& x) {
  std::string list;
  for (int64_t v : x) list += (list.empty() ? "" : ", ") + show(v);
  line(name, "[" + list + "]");
}

void Writer::piecewise(const char* name, const char* value_key, bool scalar_ok, const Range&,
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

// ---------------------------------------------------------------------------------------------
// Documents and overrides
// ---------------------------------------------------------------------------------------------

namespace {

// The first line (1-based) whose indentation holds a tab, ignoring blank and comment lines; 0 if
// none. YAML indents with spaces only, and yaml-cpp's messages for a tab do not say so.
size_t tab_indented_line(const std::string& text) {
  size_t line = 1;
  for (size_t at = 0; at < text.size(); ++line) {
    const size_t end = std::min(text.find('\n', at), text.size());
    const size_t content = text.find_first_not_of(" \t", at);
    if (content < end && text[content] != '#' && text[content] != '\r' &&
        text.find('\t', at) < content)
      return line;
    at = end + 1;
  }
  return 0;
}

// yaml-cpp's message with control characters shown as '?' (it quotes the offending character).
std::string printable(std::string s) {
  for (char& c : s)
    if (static_cast<unsigned char>(c) < 0x20) c = '?';
  return s;
}

}  // namespace

bool load_document(const std::string& text, YAML::Node& doc, std::string& error) {
  std::vector<YAML::Node> docs;
  try {
    docs = YAML::LoadAll(text);
  } catch (const YAML::Exception& e) {
    if (const size_t tab = tab_indented_line(text)) {
      error = "line " + std::to_string(tab) +
              " is indented with a tab; YAML indentation must be spaces";
      return false;
    }
    error = "YAML syntax error";
    if (!e.mark.is_null()) {
      error += " at line " + std::to_string(e.mark.line + 1) + ", column " +
               std::to_string(e.mark.column + 1);
    }
    error += ": " + printable(e.msg);
    return false;
  }
  if (docs.size() > 1) {
    error = "expected one YAML document, found " + std::to_string(docs.size());
    return false;
  }
  doc = docs.empty() ? YAML::Node() : docs[0];
  return true;
}

YAML::Node mapping_at(YAML::Node root, const std::vector<std::string>& parts) {
  YAML::Node cur = root;
  for (const std::string& part : parts) {
    YAML::Node next = cur[part];
    if (!next.IsMap()) {
      cur[part] = YAML::Node(YAML::NodeType::Map);
      next.reset(cur[part]);
    }
    cur.reset(next);  // rebinds `cur`; plain assignment would overwrite the node it refers to
  }
  return cur;
}

void set_path(YAML::Node root, const std::vector<std::string>& parts, const YAML::Node& value) {
  YAML::Node parent = mapping_at(root, std::vector<std::string>(parts.begin(), parts.end() - 1));
  parent[parts.back()] = value;
}

void apply_override(Context& ctx, YAML::Node& root, const Schema& schema, const std::string& text) {
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
  const Schema* s = &schema;
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

}  // namespace moetron::config_schema
