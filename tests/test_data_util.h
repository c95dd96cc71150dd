// Helpers shared by the data tests (tests/test_data_*.cpp): a fresh temporary directory per test,
// removed afterwards, and an expectation on DataError messages (every bad input must fail with
// one message naming the file or key).
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "data/token_file.h"

namespace moetron::data::test_util {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    const auto* t = ::testing::UnitTest::GetInstance()->current_test_info();
    path_ = fs::path(::testing::TempDir()) /
            ("moetron_data_" + std::to_string(::getpid()) + "_" + std::to_string(counter++) + "_" +
             (t != nullptr ? t->name() : "x"));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  std::string file(const std::string& name) const { return (path_ / name).string(); }
  const fs::path& path() const { return path_; }

 private:
  fs::path path_;
};

// Expects fn() to throw DataError whose message contains every one of `parts`.
inline void expect_data_error(const std::function<void()>& fn,
                              const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected DataError";
  } catch (const DataError& e) {
    const std::string msg = e.what();
    for (const std::string& p : parts) {
      EXPECT_NE(msg.find(p), std::string::npos) << "message '" << msg << "' lacks '" << p << "'";
    }
  } catch (const std::exception& e) {
    ADD_FAILURE() << "expected DataError, got std::exception: " << e.what();
  }
}

}  // namespace moetron::data::test_util
