// The source rules of model/ (ARCHITECTURE contract 8: layers are op calls and pointer
// arithmetic): no OpenMP pragma, no host copy of memory (std::copy, memcpy, memset), and no
// std::vector of numbers as a member — activations, gradients and scratch are Buffers on the
// model's device, touched only by ops (the guard-device tests prove it at run time; these
// checks keep it visible in review).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>
#include <string>

namespace {

TEST(ModelSourceRules, OnlyOpCallsAndPointerArithmetic) {
  const std::filesystem::path dir = std::filesystem::path(MOETRON_SOURCE_DIR) / "model";
  const std::regex pragma(R"(#\s*pragma\s+omp)");
  const std::regex host_copy(R"(\b(std::copy|std::fill|memcpy|memset|memmove)\s*\()");
  const std::regex vector_member(
      R"(^\s+(mutable\s+)?std::vector<(T|float|double|int32_t|int64_t|uint8_t|uint16_t|char)>\s+\w+[^(]*;)");
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
      EXPECT_FALSE(std::regex_search(line, pragma)) << where;
      EXPECT_FALSE(std::regex_search(line, host_copy)) << where;
      if (ext == ".h") {
        EXPECT_FALSE(std::regex_search(line, vector_member)) << where;
      }
    }
  }
  EXPECT_GT(files, 20);
  // the rules do catch what they forbid
  EXPECT_TRUE(std::regex_search("#pragma omp parallel for", pragma));
  EXPECT_TRUE(std::regex_search("std::copy(a, b, c);", host_copy));
  EXPECT_TRUE(std::regex_search("  std::vector<T> xn;", vector_member));
  EXPECT_TRUE(std::regex_search("  mutable std::vector<float> tmp_;", vector_member));
}

}  // namespace
