// The source rules of model/ (ARCHITECTURE contract 8: layers are op calls and pointer
// arithmetic): no OpenMP pragma, no host copy of memory (std::copy, memcpy, memset), and no
// std::vector of numbers as a member — activations, gradients and scratch are Buffers on the
// model's device, touched only by ops (the guard-device tests prove it at run time; these
// checks keep it visible in review). The few values a layer reads back from the device to steer
// its ops (the MoE layer's row offsets per expert) are a PinnedVector: host memory by name. Plain string matching (GCC 12's <regex> trips
// -Wmaybe-uninitialized under the sanitizers).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <string_view>

namespace {

std::string trim(std::string s) {
  const auto b = s.find_first_not_of(" \t");
  return b == std::string::npos ? "" : s.substr(b);
}

bool omp_pragma(const std::string& line) {
  const std::string t = trim(line);
  return t.rfind("#", 0) == 0 && t.find("pragma") != std::string::npos &&
         t.find("omp") != std::string::npos;
}

bool host_copy(const std::string& line) {
  for (std::string_view f : {"std::copy(", "std::fill(", "memcpy(", "memset(", "memmove("})
    if (line.find(f) != std::string::npos) return true;
  return false;
}

// "  [mutable] std::vector<T|float|...> name...;" without a '(' (a member, not a function)
bool vector_member(const std::string& line) {
  std::string t = trim(line);
  if (t.rfind("mutable ", 0) == 0) t = t.substr(8);
  for (std::string_view e :
       {"T", "float", "double", "int32_t", "int64_t", "uint8_t", "uint16_t", "char"}) {
    const std::string head = "std::vector<" + std::string(e) + "> ";
    if (t.rfind(head, 0) == 0 && t.find(';') != std::string::npos &&
        t.find('(') == std::string::npos)
      return true;
  }
  return false;
}

TEST(ModelSourceRules, OnlyOpCallsAndPointerArithmetic) {
  const std::filesystem::path dir = std::filesystem::path(MOETRON_SOURCE_DIR) / "model";
  int files = 0;
  for (const auto& e : std::filesystem::directory_iterator(dir)) {
    const std::string ext = e.path().extension().string();
    if (ext != ".h" && ext != ".cpp") continue;
    ++files;
    std::ifstream in(e.path());
    std::string line;
    for (int n = 1; std::getline(in, line); ++n) {
      const std::string where =
          e.path().filename().string() + ":" + std::to_string(n) + ": " + line;
      if (line.find("//") != std::string::npos) line = line.substr(0, line.find("//"));
      EXPECT_FALSE(omp_pragma(line)) << where;
      EXPECT_FALSE(host_copy(line)) << where;
      // (config.h is the model's settings, not a layer: its list of stage starts is no buffer)
      if (ext == ".h" && e.path().filename() != "config.h") {
        EXPECT_FALSE(vector_member(line)) << where;
      }
    }
  }
  EXPECT_GT(files, 20);
  // the rules do catch what they forbid
  EXPECT_TRUE(omp_pragma("#pragma omp parallel for"));
  EXPECT_TRUE(host_copy("std::copy(a, b, c);"));
  EXPECT_TRUE(vector_member("  std::vector<T> xn;"));
  EXPECT_TRUE(vector_member("  mutable std::vector<float> tmp_;"));
  EXPECT_FALSE(vector_member("  std::vector<T> f(int n);"));
}

}  // namespace
