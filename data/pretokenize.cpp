// Pre-tokenizer (see pretokenize.h): PCRE2 wrapper, the GPT-2 byte alphabet and the HF-style
// Split / ByteLevel pipeline.
//
// Split semantics follow HF `tokenizers` (Pattern::find_matches + SplitDelimiterBehavior):
// matches and the gaps between them alternate; empty matches are ignored; Isolated keeps both
// as separate pieces, Removed drops the matches (with invert: keeps only the matches, dropping
// the gaps). ByteLevel's add_prefix_space prepends " " to each piece not starting with a space.
#define PCRE2_CODE_UNIT_WIDTH 8
#include "data/pretokenize.h"

#include <pcre2.h>

#include <nlohmann/json.hpp>
#include <stdexcept>

namespace moetron::data {

namespace {

void append_utf8(uint32_t cp, std::string* out) {
  if (cp < 0x80) {
    out->push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out->push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out->push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out->push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out->push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

struct ByteTables {
  std::array<uint32_t, 256> to_cp{};
  std::array<int16_t, 512> from_cp{};  // code point (< 512) -> byte, -1 if none
  std::array<std::string, 256> utf8;   // to_cp as UTF-8
  ByteTables() {
    from_cp.fill(-1);
    std::array<bool, 256> direct{};
    for (int b = '!'; b <= '~'; ++b) direct[b] = true;
    for (int b = 0xA1; b <= 0xAC; ++b) direct[b] = true;
    for (int b = 0xAE; b <= 0xFF; ++b) direct[b] = true;
    uint32_t n = 0;
    for (int b = 0; b < 256; ++b) to_cp[b] = direct[b] ? b : 256 + n++;
    for (int b = 0; b < 256; ++b) {
      from_cp[to_cp[b]] = static_cast<int16_t>(b);
      append_utf8(to_cp[b], &utf8[b]);
    }
  }
};

const ByteTables& tables() {
  static const ByteTables t;
  return t;
}

// Per-thread PCRE2 match state: match data for one pair and a JIT stack that grows to 16 MB
// (long runs of whitespace backtrack inside `\s+(?!\S)`).
struct MatchState {
  pcre2_match_data* md = nullptr;
  pcre2_match_context* ctx = nullptr;
  pcre2_jit_stack* stack = nullptr;
  MatchState() {
    md = pcre2_match_data_create(1, nullptr);
    ctx = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(64 << 10, 16 << 20, nullptr);
    if (!md || !ctx || !stack) throw std::bad_alloc();
    pcre2_jit_stack_assign(ctx, nullptr, stack);
  }
  ~MatchState() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(ctx);
    pcre2_match_data_free(md);
  }
};

MatchState& match_state() {
  thread_local MatchState s;
  return s;
}

}  // namespace

const std::array<uint32_t, 256>& byte_to_unicode() { return tables().to_cp; }

std::string bytes_to_unicode_string(std::string_view bytes) {
  const ByteTables& t = tables();
  std::string s;
  s.reserve(bytes.size() * 2);
  for (unsigned char b : bytes) s += t.utf8[b];
  return s;
}

bool unicode_string_to_bytes(std::string_view s, std::string* out) {
  const ByteTables& t = tables();
  out->clear();
  for (size_t i = 0; i < s.size();) {
    const auto c = static_cast<unsigned char>(s[i]);
    uint32_t cp;
    if (c < 0x80) {
      cp = c;
      i += 1;
    } else if ((c & 0xE0) == 0xC0 && i + 1 < s.size()) {
      cp = ((c & 0x1Fu) << 6) | (static_cast<unsigned char>(s[i + 1]) & 0x3Fu);
      i += 2;
    } else {
      return false;  // every alphabet code point is below U+0800
    }
    if (cp >= 512 || t.from_cp[cp] < 0) return false;
    out->push_back(static_cast<char>(t.from_cp[cp]));
  }
  return true;
}

Regex::Regex(const std::string& pattern, bool literal) {
  int err = 0;
  PCRE2_SIZE off = 0;
  uint32_t opts = PCRE2_UTF | PCRE2_UCP | PCRE2_MATCH_INVALID_UTF;
  if (literal) opts |= PCRE2_LITERAL;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                                   opts, &err, &off, nullptr);
  if (!code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    throw std::invalid_argument("bad regex '" + pattern + "' at offset " + std::to_string(off) +
                                ": " + reinterpret_cast<const char*>(msg));
  }
  jit_ = pcre2_jit_compile(code, PCRE2_JIT_COMPLETE) == 0;
  code_ = code;
}

Regex::~Regex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

bool Regex::find(std::string_view s, size_t start, size_t* begin, size_t* end) const {
  MatchState& st = match_state();
  auto* code = static_cast<pcre2_code*>(code_);
  const auto* subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  while (start < s.size()) {
    const int rc = jit_ ? pcre2_jit_match(code, subject, s.size(), start, 0, st.md, st.ctx)
                        : pcre2_match(code, subject, s.size(), start, 0, st.md, st.ctx);
    if (rc == PCRE2_ERROR_NOMATCH) return false;
    if (rc < 0) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(rc, msg, sizeof msg);
      throw std::runtime_error(std::string("regex match failed: ") +
                               reinterpret_cast<const char*>(msg));
    }
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(st.md);
    if (ov[1] > ov[0]) {
      *begin = ov[0];
      *end = ov[1];
      return true;
    }
    // empty match: ignored (as HF's split does); retry from the next character
    start = ov[0] + 1;
    while (start < s.size() && (static_cast<unsigned char>(s[start]) & 0xC0) == 0x80) ++start;
  }
  return false;
}

PreTokenizer PreTokenizer::gpt4() {
  PreTokenizer p;
  Step split;
  split.pattern = kGpt4SplitRegex;
  split.regex = std::make_shared<Regex>(split.pattern);
  p.steps_.push_back(split);
  Step bl;
  bl.byte_level = true;
  p.steps_.push_back(bl);
  return p;
}

namespace {

void parse_step(const nlohmann::json& j, std::vector<PreTokenizer::Step>* out) {
  if (!j.is_object() || !j.contains("type") || !j["type"].is_string())
    throw std::invalid_argument("pre_tokenizer: expected an object with a \"type\"");
  const std::string type = j["type"];
  auto flag = [&](const char* key, bool dflt) {
    if (!j.contains(key) || j[key].is_null()) return dflt;
    if (!j[key].is_boolean())
      throw std::invalid_argument("pre_tokenizer " + type + ": \"" + key + "\" is not a boolean");
    return j[key].get<bool>();
  };
  if (type == "Sequence") {
    if (!j.contains("pretokenizers") || !j["pretokenizers"].is_array())
      throw std::invalid_argument("pre_tokenizer Sequence: missing \"pretokenizers\" array");
    for (const auto& s : j["pretokenizers"]) parse_step(s, out);
    return;
  }
  PreTokenizer::Step st;
  if (type == "ByteLevel") {
    st.byte_level = true;
    st.add_prefix_space = flag("add_prefix_space", false);
    st.use_regex = flag("use_regex", true);
    st.trim_offsets = flag("trim_offsets", true);
    if (st.use_regex) st.regex = std::make_shared<Regex>(kGpt2SplitRegex);
  } else if (type == "Split") {
    if (!j.contains("pattern") || !j["pattern"].is_object())
      throw std::invalid_argument("pre_tokenizer Split: missing \"pattern\" object");
    const auto& p = j["pattern"];
    if (p.contains("Regex") && p["Regex"].is_string()) {
      st.pattern = p["Regex"];
    } else if (p.contains("String") && p["String"].is_string()) {
      st.pattern = p["String"];
      st.literal = true;
    } else {
      throw std::invalid_argument("pre_tokenizer Split: pattern needs \"Regex\" or \"String\"");
    }
    const std::string behavior = j.value("behavior", std::string("Isolated"));
    if (behavior == "Isolated")
      st.behavior = PreTokenizer::Behavior::kIsolated;
    else if (behavior == "Removed")
      st.behavior = PreTokenizer::Behavior::kRemoved;
    else
      throw std::invalid_argument("pre_tokenizer Split: behavior \"" + behavior +
                                  "\" is not supported (Isolated, Removed)");
    st.invert = flag("invert", false);
    st.regex = std::make_shared<Regex>(st.pattern, st.literal);
  } else {
    throw std::invalid_argument("pre_tokenizer type \"" + type +
                                "\" is not supported (Sequence, Split, ByteLevel)");
  }
  out->push_back(std::move(st));
}

nlohmann::ordered_json step_json(const PreTokenizer::Step& s) {
  nlohmann::ordered_json j;
  if (s.byte_level) {
    j["type"] = "ByteLevel";
    j["add_prefix_space"] = s.add_prefix_space;
    j["trim_offsets"] = s.trim_offsets;
    j["use_regex"] = s.use_regex;
  } else {
    j["type"] = "Split";
    j["pattern"][s.literal ? "String" : "Regex"] = s.pattern;
    j["behavior"] = s.behavior == PreTokenizer::Behavior::kIsolated ? "Isolated" : "Removed";
    j["invert"] = s.invert;
  }
  return j;
}

}  // namespace

PreTokenizer PreTokenizer::from_json(const nlohmann::json& j) {
  PreTokenizer p;
  parse_step(j, &p.steps_);
  bool byte_level = false;
  for (const auto& s : p.steps_) byte_level |= s.byte_level;
  if (!byte_level)
    throw std::invalid_argument(
        "pre_tokenizer has no ByteLevel step: only byte-level BPE is supported");
  return p;
}

nlohmann::json PreTokenizer::to_json() const {
  nlohmann::ordered_json j;
  if (steps_.size() == 1) {
    j = step_json(steps_[0]);
  } else {
    j["type"] = "Sequence";
    j["pretokenizers"] = nlohmann::ordered_json::array();
    for (const auto& s : steps_) j["pretokenizers"].push_back(step_json(s));
  }
  return nlohmann::json::parse(j.dump());  // (ordered_json and json are distinct types)
}

std::string PreTokenizer::canonical() const {
  std::string c;
  for (const auto& s : steps_) c += step_json(s).dump() + "\n";
  return c;
}

void PreTokenizer::split(std::string_view text,
                         const std::function<void(std::string_view)>& on_piece) const {
  if (!text.empty()) run(0, text, on_piece);
}

void PreTokenizer::run(size_t step, std::string_view text,
                       const std::function<void(std::string_view)>& on_piece) const {
  while (step < steps_.size() && steps_[step].byte_level && !steps_[step].add_prefix_space &&
         !steps_[step].use_regex)
    ++step;  // a no-op here: the byte mapping is the model's
  if (step == steps_.size()) {
    on_piece(text);
    return;
  }
  const Step& st = steps_[step];
  if (st.byte_level && st.add_prefix_space && text[0] != ' ') {
    const std::string prefixed = " " + std::string(text);
    run(step, prefixed, on_piece);  // starts with a space now: the prefix is not added again
    return;
  }
  if (!st.regex) {  // ByteLevel with only add_prefix_space (already satisfied)
    run(step + 1, text, on_piece);
    return;
  }
  // Isolated (and ByteLevel's regex): gaps and matches; Removed: gaps; Removed + invert: matches.
  const bool removed = !st.byte_level && st.behavior == Behavior::kRemoved;
  const bool keep_gaps = !removed || !st.invert;
  const bool keep_matches = !removed || st.invert;
  size_t pos = 0, b = 0, e = 0;
  while (st.regex->find(text, pos, &b, &e)) {
    if (b > pos && keep_gaps) run(step + 1, text.substr(pos, b - pos), on_piece);
    if (keep_matches) run(step + 1, text.substr(b, e - b), on_piece);
    pos = e;
  }
  if (pos < text.size() && keep_gaps) run(step + 1, text.substr(pos), on_piece);
}

}  // namespace moetron::data
