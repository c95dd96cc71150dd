// The optimizer's vector ops (kernels/cpu/optim_vec.cpp) through the dispatcher on the CPU and
// on the guard device: the segments' sums of squares against naive double sums in index order
// (bitwise: ZeRO-1's gradient norm depends on them) and against a long-double sum; the count of NaN
// and infinities; the clip scale; the bf16 rounding against scalar.h's round_bf16, ties included.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "kernels/buffer.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "kernels/scalar.h"

namespace moetron {
namespace {

std::vector<float> rand_floats(size_t n, uint32_t seed) {
  std::mt19937 g(seed);
  std::normal_distribution<float> d(0.f, 3.f);
  std::vector<float> x(n);
  for (float& v : x) v = d(g);
  return x;
}

// x copied to a buffer on `dev`
Buffer<float> on(Device dev, const std::vector<float>& x) {
  Buffer<float> b(dev);
  b.resize(x.size());
  kernels::copy_from_host(Exec::on(dev), b.data(), x.data(), sizeof(float) * x.size());
  return b;
}

std::vector<float> back(Device dev, const Buffer<float>& b) {
  std::vector<float> x(b.size());
  kernels::copy_to_host(Exec::on(dev), x.data(), b.data(), sizeof(float) * x.size());
  return x;
}

// Segments of lengths 0, 1, 7, 100003 and 70000 with gaps between them (one call): each sum is
// the naive index-order double sum, bitwise, and the same bits alone as beside the others.
TEST(OptimVec, SegmentSumOfSquaresIsEachSegmentsIndexOrderDoubleSum) {
  const std::vector<int64_t> len = {0, 1, 7, 100003, 70000};
  std::vector<int64_t> begin;
  int64_t at = 3;
  for (int64_t l : len) begin.push_back(at), at += l + 5;
  const std::vector<float> x = rand_floats(static_cast<size_t>(at), 11);
  const auto n = static_cast<int64_t>(len.size());
  for (Device dev : {Device::CPU, Device::Guard}) {
    const Exec ex = Exec::on(dev);
    const Buffer<float> bx = on(dev, x);
    Buffer<double> out(dev);
    out.resize(n);
    kernels::segment_sum_squares(ex, bx.data(), begin.data(), len.data(), n, out.data());
    std::vector<double> got(len.size(), -1.0);
    kernels::copy_to_host(ex, got.data(), out.data(), sizeof(double) * len.size());
    for (size_t s = 0; s < len.size(); ++s) {
      double want = 0;
      long double exact = 0;
      for (int64_t i = begin[s]; i < begin[s] + len[s]; ++i)
        want += static_cast<double>(x[i]) * x[i], exact += static_cast<long double>(x[i]) * x[i];
      EXPECT_EQ(got[s], want) << device_name(dev) << " segment " << s;
      EXPECT_NEAR(got[s], static_cast<double>(exact), 1e-12 * static_cast<double>(exact) + 1e-300);
      double alone = -1;
      kernels::segment_sum_squares(ex, bx.data(), &begin[s], &len[s], 1, out.data());
      kernels::copy_to_host(ex, &alone, out.data(), sizeof alone);
      EXPECT_EQ(alone, got[s]) << device_name(dev) << " segment " << s;
    }
    EXPECT_EQ(got[0], 0.0);
    EXPECT_GT(got[3], 0.0);
  }
}

TEST(OptimVec, CountsNanAndInfinities) {
  for (Device dev : {Device::CPU, Device::Guard}) {
    std::vector<float> x = rand_floats(70000, 5);
    int64_t got = -1;
    Buffer<int64_t> out(dev);
    out.resize(1);
    kernels::count_nonfinite(Exec::on(dev), on(dev, x).data(), 70000, out.data());
    kernels::copy_to_host(Exec::on(dev), &got, out.data(), sizeof got);
    EXPECT_EQ(got, 0);
    x[0] = std::numeric_limits<float>::quiet_NaN();
    x[12345] = std::numeric_limits<float>::infinity();
    x[69999] = -std::numeric_limits<float>::infinity();
    x[500] = std::numeric_limits<float>::max();  // finite
    kernels::count_nonfinite(Exec::on(dev), on(dev, x).data(), 70000, out.data());
    kernels::copy_to_host(Exec::on(dev), &got, out.data(), sizeof got);
    EXPECT_EQ(got, 3);
  }
}

TEST(OptimVec, ScaleAndBf16Rounding) {
  for (Device dev : {Device::CPU, Device::Guard}) {
    std::vector<float> x = rand_floats(40000, 9);
    x[0] = 1.f + 0x1p-8f;      // a tie: rounds to even (1.0)
    x[1] = 1.f + 3 * 0x1p-8f;  // a tie: rounds to even (1 + 2^-6)
    Buffer<float> b = on(dev, x);
    kernels::scale_inplace(Exec::on(dev), b.data(), 0.37f, 40000);
    std::vector<float> got = back(dev, b);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(got[i], x[i] * 0.37f) << i;
    b = on(dev, x);
    kernels::round_bf16_inplace(Exec::on(dev), b.data(), 40000);
    got = back(dev, b);
    for (size_t i = 0; i < x.size(); ++i) ASSERT_EQ(got[i], round_bf16(x[i])) << i;
    EXPECT_EQ(got[0], 1.f);
    EXPECT_EQ(got[1], 1.f + 0x1p-6f);
  }
}

}  // namespace
}  // namespace moetron
