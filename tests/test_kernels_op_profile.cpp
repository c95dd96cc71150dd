// The op profile (kernels/op_profile.h) on the host devices: off records nothing; on, each op the
// dispatcher runs is one call of its name with its time and, for GEMMs, its FLOPs; an op inside
// another counts under the outer one only; Meta and a failed op are not recorded; Paused and
// reset do what they say. (The CUDA side, event pairs, is in tests/test_cuda_op_profile.cpp.)
#include <gtest/gtest.h>

#include <stdexcept>
#include <vector>

#include "kernels/flop_counter.h"
#include "kernels/op_profile.h"
#include "kernels/ops.h"

namespace moetron::kernels::testing {
namespace {

namespace prof = op_profile;

// Profile and FLOP counting on for one test, both off and cleared after.
struct Profiling {
  Profiling() {
    prof::reset();
    prof::set_enabled(true);
    flop_counter::set_counting(true);
  }
  ~Profiling() {
    prof::set_enabled(false);
    flop_counter::set_counting(false);
    prof::reset();
  }
};

const prof::Row* find(const std::vector<prof::Row>& rows, const std::string& op) {
  for (const prof::Row& r : rows)
    if (r.op == op) return &r;
  return nullptr;
}

void run_gemm(Device dev, int64_t M, int64_t N, int64_t K) {
  const Exec ex = Exec::on(dev);
  Buffer<float> a(dev), b(dev), c(dev);
  a.resize(M * K), b.resize(K * N), c.resize(M * N);
  fill_zero(ex, a.data(), M * K * sizeof(float));
  fill_zero(ex, b.data(), K * N * sizeof(float));
  gemm<float>(ex, false, false, M, N, K, 1.f, a.data(), b.data(), 0.f, c.data());
}

TEST(OpProfile, OffRecordsNothing) {
  prof::reset();
  run_gemm(Device::CPU, 8, 8, 8);
  EXPECT_TRUE(prof::collect().empty());
}

TEST(OpProfile, EachOpIsACallWithItsTimeAndGemmFlops) {
  for (Device dev : {Device::CPU, Device::Guard}) {
    const Profiling on;
    for (int i = 0; i < 3; ++i) run_gemm(dev, 64, 48, 96);
    const std::vector<prof::Row> rows = prof::collect();
    const prof::Row* g = find(rows, "gemm");
    ASSERT_NE(g, nullptr) << device_name(dev);
    EXPECT_EQ(g->calls, 3);
    EXPECT_EQ(g->flops, 3 * 2 * 64 * 48 * 96);
    EXPECT_GT(g->seconds, 0);
    const prof::Row* z = find(rows, "fill_zero");
    ASSERT_NE(z, nullptr);
    EXPECT_EQ(z->calls, 6);
    EXPECT_EQ(z->flops, 0);
    for (size_t i = 1; i < rows.size(); ++i) EXPECT_GE(rows[i - 1].seconds, rows[i].seconds);
  }
}

TEST(OpProfile, AnOpInsideAnotherCountsUnderTheOuterOnly) {
  const Profiling on;
  {
    const prof::Scope outer(Exec::on(Device::CPU), "outer");
    run_gemm(Device::CPU, 32, 32, 32);
  }
  const std::vector<prof::Row> rows = prof::collect();
  ASSERT_EQ(rows.size(), 1u);
  EXPECT_EQ(rows[0].op, "outer");
  EXPECT_EQ(rows[0].calls, 1);
  EXPECT_EQ(rows[0].flops, 2 * 32 * 32 * 32);  // the inner GEMM's FLOPs, attributed to it
}

TEST(OpProfile, MetaFailedOpsPausedAndResetRecordNothing) {
  const Profiling on;
  { const prof::Scope meta(Exec::on(Device::Meta), "meta"); }
  const std::vector<int64_t> bad_off = {0, 8, 4};  // decreasing: the op throws
  std::vector<float> x(64), w(64), y(64);
  EXPECT_THROW(grouped_gemm<float>(Exec::on(Device::CPU), bad_off.data(), 2, false, 4, 4, x.data(),
                                   w.data(), y.data(), GemmPrecision::FP32),
               std::invalid_argument);
  {
    const prof::Paused off;
    run_gemm(Device::CPU, 8, 8, 8);
  }
  EXPECT_TRUE(prof::collect().empty());
  EXPECT_TRUE(prof::enabled());  // Paused restored it
  run_gemm(Device::CPU, 8, 8, 8);
  EXPECT_FALSE(prof::collect().empty());
  prof::reset();
  EXPECT_TRUE(prof::collect().empty());
}

}  // namespace
}  // namespace moetron::kernels::testing
