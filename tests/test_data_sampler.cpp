// Tests for WindowSampler (data/sampler.h): windows are exactly the file's tokens at the chosen
// offset, offsets stay in bounds and cover the file, the same (seed, index) gives the same
// window (pinned to fixed values so that a change of the mix, which would break resuming old
// runs, is caught), and files too short for one window are refused.
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <numeric>
#include <set>
#include <string>
#include <vector>

#include "data/sampler.h"
#include "data/token_file.h"

namespace moetron::data {
namespace {

namespace fs = std::filesystem;

class TempDir {
 public:
  TempDir() {
    static std::atomic<int> counter{0};
    path_ = fs::path(::testing::TempDir()) /
            ("moetron_sampler_" + std::to_string(::getpid()) + "_" + std::to_string(counter++));
    fs::remove_all(path_);
    fs::create_directories(path_);
  }
  ~TempDir() {
    std::error_code ec;
    fs::remove_all(path_, ec);
  }
  std::string file(const std::string& name) const { return (path_ / name).string(); }

 private:
  fs::path path_;
};

// A file whose token at position i is i, so a window reveals its own offset.
std::string iota_file(const TempDir& dir, int64_t n) {
  const std::string path = dir.file("iota_" + std::to_string(n) + ".h5");
  std::vector<uint32_t> t(static_cast<size_t>(n));
  std::iota(t.begin(), t.end(), 0u);
  write_token_file(path, t, {0, t.size()}, n + 1, "iota", "test");
  return path;
}

TEST(WindowSampler, WindowsAreContiguousAndInBounds) {
  TempDir dir;
  const int64_t n = 100000, seq = 128;
  TokenFile tf(iota_file(dir, n));
  WindowSampler s(tf, seq, 42);
  EXPECT_EQ(s.seq_len(), seq);
  std::vector<int32_t> out(seq + 2, -7);
  int64_t lo = n, hi = -1;
  for (int64_t i = 0; i < 5000; ++i) {
    s.sample(i, out.data());
    const int64_t off = s.offset(i);
    ASSERT_GE(off, 0);
    ASSERT_LE(off + seq + 1, n);
    for (int64_t k = 0; k <= seq; ++k) ASSERT_EQ(out[k], off + k) << "index " << i;
    ASSERT_EQ(out[seq + 1], -7) << "wrote past seq_len + 1";
    lo = std::min(lo, off);
    hi = std::max(hi, off);
  }
  // 5000 uniform draws over ~100K starts reach near both ends.
  EXPECT_LT(lo, n / 100);
  EXPECT_GT(hi, n - seq - n / 100);
}

TEST(WindowSampler, DeterministicAndSeedDependent) {
  TempDir dir;
  TokenFile tf(iota_file(dir, 1000000));
  WindowSampler a(tf, 64, 7), b(tf, 64, 7), c(tf, 64, 8);
  int same_as_other_seed = 0;
  std::set<int64_t> distinct;
  for (int64_t i = 0; i < 1000; ++i) {
    EXPECT_EQ(a.offset(i), b.offset(i));
    same_as_other_seed += a.offset(i) == c.offset(i);
    distinct.insert(a.offset(i));
  }
  EXPECT_LT(same_as_other_seed, 5);
  EXPECT_GT(distinct.size(), 990u);
  // Resuming is just continuing the counter: index i does not depend on earlier calls.
  WindowSampler d(tf, 64, 7);
  EXPECT_EQ(d.offset(999), a.offset(999));
  EXPECT_EQ(d.offset(int64_t{1} << 40), a.offset(int64_t{1} << 40));
}

TEST(WindowSampler, PinnedValues) {
  // splitmix64(seed ^ index * 0x9E3779B97F4A7C15) % (n_tokens - seq_len), n_tokens - seq_len =
  // 1000000 - 64. Changing these breaks bit-exact resumption of existing runs.
  TempDir dir;
  TokenFile tf(iota_file(dir, 1000000));
  WindowSampler s(tf, 64, 1234);
  const std::vector<int64_t> expect{257755, 218893, 679523, 910311, 638857, 314277};
  for (int64_t i = 0; i < static_cast<int64_t>(expect.size()); ++i) {
    EXPECT_EQ(s.offset(i), expect[i]) << "index " << i;
  }
}

TEST(WindowSampler, ExactFitAndTooShort) {
  TempDir dir;
  const std::string path = iota_file(dir, 65);
  TokenFile tf(path);
  WindowSampler fit(tf, 64, 99);  // n_tokens == seq_len + 1: the one window is the whole file
  std::vector<int32_t> out(65);
  for (int64_t i = 0; i < 10; ++i) {
    EXPECT_EQ(fit.offset(i), 0);
    fit.sample(i, out.data());
    EXPECT_EQ(out[64], 64);
  }
  for (int64_t seq : {65, 1000}) {
    try {
      WindowSampler s(tf, seq, 1);
      ADD_FAILURE() << "expected DataError";
    } catch (const DataError& e) {
      const std::string msg = e.what();
      EXPECT_NE(msg.find(path), std::string::npos) << msg;
      EXPECT_NE(msg.find("has 65 tokens, fewer than seq_len+1"), std::string::npos) << msg;
    }
  }
  EXPECT_THROW(WindowSampler(tf, 0, 1), DataError);
  EXPECT_THROW(WindowSampler(tf, -3, 1), DataError);
  EXPECT_THROW(fit.offset(-1), DataError);
}

}  // namespace
}  // namespace moetron::data
