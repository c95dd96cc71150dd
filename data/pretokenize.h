// Pre-tokenization for the byte-level BPE tokenizer (data/bpe.h): how text is cut into the pieces
// ("pre-tokens") that BPE merges never cross, plus the GPT-2 byte-to-unicode alphabet.
//
// A PreTokenizer is the Hugging Face `tokenizers` pre_tokenizer pipeline restricted to what
// byte-level BPE tokenizers use: a sequence of steps, each applied to every piece the previous
// steps produced,
//   Split(pattern, behavior, invert)     regex (or literal) split; behaviors Isolated and Removed
//   ByteLevel(add_prefix_space, use_regex)  optionally prefixes a space to each piece that does
//                                           not start with one, optionally splits with the GPT-2
//                                           regex; the byte-to-unicode mapping itself is done by
//                                           the BPE model (bytes in, bytes out)
// Regexes run with PCRE2 (JIT, UTF + Unicode properties), the closest widely packaged engine to
// the Oniguruma engine HF uses; the patterns used by GPT-2/GPT-4/DeepSeek-V3 mean the same in
// both. PCRE2_MATCH_INVALID_UTF makes arbitrary bytes safe: invalid UTF-8 never matches, so it
// lands in the gaps between matches and still becomes (its own) pieces.
//
// moetron's default (gpt4()) is the DeepSeek-V3 / GPT-4 style single split: contractions,
// letter runs with one leading non-letter, digit groups of at most 3, punctuation runs with one
// leading space, newline runs and whitespace, then ByteLevel(add_prefix_space=false,
// use_regex=false).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

namespace moetron::data {

// GPT-4 (cl100k) style split: letters, digits in groups of 1-3, punctuation, whitespace.
inline constexpr const char* kGpt4SplitRegex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| "
    "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
// The regex of HF's ByteLevel pre-tokenizer with use_regex = true (GPT-2).
inline constexpr const char* kGpt2SplitRegex =
    "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

// GPT-2's byte-to-unicode table: byte b is written as the code point byte_to_unicode()[b] in
// vocab strings (printable Latin-1 bytes as themselves, the rest shifted to U+0100...).
const std::array<uint32_t, 256>& byte_to_unicode();
// A byte string written in that alphabet (UTF-8 of the mapped code points).
std::string bytes_to_unicode_string(std::string_view bytes);
// The inverse: false if some character is not in the alphabet (then *out is unspecified).
bool unicode_string_to_bytes(std::string_view s, std::string* out);

// A compiled PCRE2 pattern (UTF, UCP, MATCH_INVALID_UTF, JIT when available). Thread-safe:
// match data and JIT stacks are per thread.
class Regex {
 public:
  // Throws std::invalid_argument with PCRE2's message and offset on a bad pattern.
  explicit Regex(const std::string& pattern, bool literal = false);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;
  // The first non-empty match at or after byte `start` into [*begin, *end); false if none.
  bool find(std::string_view s, size_t start, size_t* begin, size_t* end) const;

 private:
  void* code_ = nullptr;  // pcre2_code_8*
  bool jit_ = false;
};

class PreTokenizer {
 public:
  enum class Behavior { kIsolated, kRemoved };
  struct Step {
    bool byte_level = false;  // false: Split
    // Split
    std::string pattern;
    bool literal = false;  // {"String": ...} instead of {"Regex": ...}
    Behavior behavior = Behavior::kIsolated;
    bool invert = false;
    // ByteLevel
    bool add_prefix_space = false;
    bool use_regex = false;
    bool trim_offsets = true;            // kept for round-tripping the JSON; no effect on ids
    std::shared_ptr<const Regex> regex;  // Split pattern, or the GPT-2 regex if use_regex
  };

  // GPT-4 split + ByteLevel(add_prefix_space=false, use_regex=false): moetron's default.
  static PreTokenizer gpt4();
  // From a tokenizer.json "pre_tokenizer" value (Sequence, Split or ByteLevel). Throws
  // std::invalid_argument naming what is unsupported; requires a ByteLevel step somewhere.
  static PreTokenizer from_json(const nlohmann::json& j);
  // The "pre_tokenizer" value (a Sequence when there is more than one step).
  nlohmann::json to_json() const;
  // Canonical text of the configuration (part of the tokenizer hash).
  std::string canonical() const;

  // Calls on_piece for every non-empty piece of `text`, in order.
  void split(std::string_view text, const std::function<void(std::string_view)>& on_piece) const;

  const std::vector<Step>& steps() const { return steps_; }

 private:
  void run(size_t step, std::string_view text,
           const std::function<void(std::string_view)>& on_piece) const;
  std::vector<Step> steps_;
};

}  // namespace moetron::data
