// The optimizer's vector ops (kernels/cpu/optim_vec.cpp) through the dispatcher on the CPU and
// on the guard device: the sum of squares against a naive double sum in index order (bitwise:
// ZeRO-1's gradient norm depends on it) and against a long-double sum; the count of NaN and
// infinities; the clip scale; the bf16 rounding against scalar.h's round_bf16, ties included.
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

TEST(OptimVec, SumOfSquaresIsTheIndexOrderDoubleSum) {
  for (Device dev : {Device::CPU, Device::Guard}) {
    for (size_t n : {size_t(0), size_t(1), size_t(7), size_t(100003)}) {
      const std::vector<float> x = rand_floats(n, 11 + static_cast<uint32_t>(n));
      double want = 0;
      long double exact = 0;
      for (float v : x)
        want += static_cast<double>(v) * v, exact += static_cast<long double>(v) * v;
      const Buffer<float> bx = on(dev, x);
      Buffer<double> out(dev);
      out.resize(1);
      kernels::sum_squares(Exec::on(dev), bx.data(), static_cast<int64_t>(n), out.data());
      double got = -1;
      kernels::copy_to_host(Exec::on(dev), &got, out.data(), sizeof got);
      EXPECT_EQ(got, want) << n;
      EXPECT_NEAR(got, static_cast<double>(exact), 1e-12 * static_cast<double>(exact) + 1e-300);
    }
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
