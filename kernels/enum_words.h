// Words for enums: an enum that users choose by name (in a config, on a command line, in a log)
// lists its values and their words once, next to the enum, as an `enum_words(E)` function found
// by argument-dependent lookup:
//
//   enum class Recipe { FP32, BF16, FP8 };
//   inline constexpr EnumWord<Recipe> kRecipeWords[] = {{Recipe::FP32, "fp32"}, ...};
//   constexpr auto enum_words(Recipe) { return std::span(kRecipeWords); }
//
// Everything else comes from that list: to_word (for output, also `os << e`), from_word (for
// input), word_list (for the "one of ..." part of error messages). The config's choice rule
// (trainer/config_schema.h) reads and writes such settings through the same list.
#pragma once

#include <concepts>
#include <optional>
#include <ostream>
#include <span>
#include <string>
#include <string_view>

namespace moetron {

template <class E>
struct EnumWord {
  E value;
  const char* word;
};

// An enum with a word list (an `enum_words(E)` overload next to it).
template <class E>
concept Worded = requires(E e) {
  { enum_words(e) } -> std::convertible_to<std::span<const EnumWord<E>>>;
};

// The word of `e` ("?" for a value the list does not name).
template <Worded E>
constexpr const char* to_word(E e) {
  for (const EnumWord<E>& w : enum_words(E{}))
    if (w.value == e) return w.word;
  return "?";
}

// The value named `s`, or nothing when the list has no such word.
template <Worded E>
constexpr std::optional<E> from_word(std::string_view s) {
  for (const EnumWord<E>& w : enum_words(E{}))
    if (s == w.word) return w.value;
  return std::nullopt;
}

// The words in list order, joined by `sep` ("fp32, bf16, fp8").
template <Worded E>
std::string word_list(const char* sep = ", ") {
  std::string out;
  for (const EnumWord<E>& w : enum_words(E{})) {
    if (!out.empty()) out += sep;
    out += w.word;
  }
  return out;
}

template <Worded E>
std::ostream& operator<<(std::ostream& os, E e) {
  return os << to_word(e);
}

}  // namespace moetron
