// Parsing of the test-only fault-injection variables (see fault_inject.h).
#include "trainer/fault_inject.h"

#include <charconv>
#include <cstdlib>
#include <vector>

#include "trainer/config.h"

namespace moetron {

namespace {
const char* const kVar = "MOETRON_FAULT_NAN";

int64_t number(const std::string& field, const std::string& text, const char* what, int64_t min,
               const char* var = kVar) {
  int64_t v = 0;
  const auto [end, ec] = std::from_chars(field.data(), field.data() + field.size(), v);
  if (field.empty() || ec != std::errc() || end != field.data() + field.size() || v < min)
    throw ConfigError(std::string(var) + "='" + text + "': " + what +
                      " must be an integer >= " + std::to_string(min) + ", got '" + field + "'");
  return v;
}
}  // namespace

NanFault parse_nan_fault(const std::string& text) {
  std::vector<std::string> f(1);
  for (char ch : text)
    if (ch == ':')
      f.emplace_back();
    else
      f.back().push_back(ch);
  if (f.size() < 3 || f.size() > 4)
    throw ConfigError(std::string(kVar) + "='" + text +
                      "': expected WHAT:RANK:STEP[:COUNT] (WHAT: grad or loss)");
  NanFault nf;
  if (f[0] == "grad")
    nf.what = NanFault::What::Grad;
  else if (f[0] == "loss")
    nf.what = NanFault::What::Loss;
  else
    throw ConfigError(std::string(kVar) + "='" + text + "': WHAT must be grad or loss, got '" +
                      f[0] + "'");
  nf.rank = static_cast<int>(number(f[1], text, "RANK", 0));
  nf.first = number(f[2], text, "STEP", 1);
  if (f.size() == 4) nf.count = number(f[3], text, "COUNT", 1);
  return nf;
}

std::optional<SlowSave> slow_save_from_env() {
  const char* v = std::getenv("MOETRON_FAULT_SLOW_SAVE");
  if (!v || !*v) return std::nullopt;
  const std::string text = v;
  const size_t colon = text.find(':');
  SlowSave ss;
  char* end = nullptr;
  if (colon != std::string::npos) {
    ss.step = number(text.substr(0, colon), text, "STEP", 1, "MOETRON_FAULT_SLOW_SAVE");
    ss.seconds = std::strtod(text.c_str() + colon + 1, &end);
  }
  if (colon == std::string::npos || end != text.c_str() + text.size() || !(ss.seconds >= 0))
    throw ConfigError("MOETRON_FAULT_SLOW_SAVE='" + text + "': expected STEP:SECONDS");
  return ss;
}

std::optional<NanFault> nan_fault_from_env() {
  const char* v = std::getenv(kVar);
  if (!v || !*v) return std::nullopt;
  return parse_nan_fault(v);
}

}  // namespace moetron
