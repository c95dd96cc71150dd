// RoPE tests: base and YaRN frequencies (the DeepSeek-V3 numbers of SPEC 1.3), the interleaved
// rotation on a strided multi-head layout against a naive reference, the inverse, and the
// backward (the inverse rotation is the transpose) against finite differences.
#include <numbers>

#include "kernels/cpu/ops_cpu.h"
#include "tests/test_kernels_util.h"

namespace moetron::kernels::cpu::testing {
namespace {

TEST(Rope, BaseFrequencies) {
  RopeParams p;
  p.dim = 10;
  p.theta = 500.0;
  const auto f = rope_frequencies(p);
  ASSERT_EQ(f.size(), 5u);
  for (int i = 0; i < 5; ++i) EXPECT_DOUBLE_EQ(f[i], std::pow(500.0, -2.0 * i / 10));
}

TEST(Rope, YarnDeepSeekV3Frequencies) {
  RopeParams p;
  p.dim = 64;
  p.theta = 1e4;
  p.yarn = true;
  p.factor = 40;
  p.original_seq_len = 4096;
  p.beta_fast = 32;
  p.beta_slow = 1;
  const auto f = rope_frequencies(p);
  ASSERT_EQ(f.size(), 32u);
  // SPEC 1.3: low = 10, high = 23: pairs 0..10 keep the base frequency, pairs >= 23 are divided
  // by the factor, linear blend in between.
  for (int i = 0; i < 32; ++i) {
    const double base = std::pow(1e4, -2.0 * i / 64);
    if (i <= 10) {
      EXPECT_DOUBLE_EQ(f[i], base) << i;
    } else if (i >= 23) {
      EXPECT_NEAR(f[i], base / 40, 1e-15 * base) << i;
    } else {
      const double ramp = (i - 10) / 13.0;
      EXPECT_NEAR(f[i], base / 40 * ramp + base * (1 - ramp), 1e-15 * base) << i;
      EXPECT_LT(f[i], base);
      EXPECT_GT(f[i], base / 40);
    }
  }
  p.yarn = false;
  EXPECT_DOUBLE_EQ(rope_frequencies(p)[31], std::pow(1e4, -62.0 / 64));
}

TEST(Rope, YarnLowEqualsHighGetsAnEpsilonRamp) {
  // beta_fast == beta_slow gives low == high; the ramp must stay finite (high += 0.001).
  RopeParams p;
  p.dim = 16;
  p.yarn = true;
  p.factor = 4;
  p.beta_fast = p.beta_slow = 2.0;
  for (double f : rope_frequencies(p)) EXPECT_TRUE(std::isfinite(f));
}

// x: nvec vectors at stride `stride` (>= dim), vector v at position pos[v / vpp].
std::vector<double> ref_rope(std::vector<double> x, int64_t nvec, int64_t stride, int64_t vpp,
                             const std::vector<int32_t>& pos, const std::vector<double>& f,
                             bool inverse) {
  const int64_t half = f.size();
  for (int64_t v = 0; v < nvec; ++v) {
    for (int64_t i = 0; i < half; ++i) {
      const double a = pos[v / vpp] * f[i] * (inverse ? -1 : 1);
      const double x0 = x[v * stride + 2 * i], x1 = x[v * stride + 2 * i + 1];
      x[v * stride + 2 * i] = x0 * std::cos(a) - x1 * std::sin(a);
      x[v * stride + 2 * i + 1] = x0 * std::sin(a) + x1 * std::cos(a);
    }
  }
  return x;
}

template <class T>
class RopeTest : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(RopeTest, Types);

TYPED_TEST(RopeTest, RotatesInterleavedPairsOnStridedHeads) {
  using T = TypeParam;
  RopeParams p;
  p.dim = 16;
  p.yarn = true;
  p.factor = 8;
  p.original_seq_len = 64;
  const auto f = rope_frequencies(p);
  // 7 tokens x 3 heads, each head row 24 wide with the rotary part at offset 0 (the rest must
  // stay untouched), positions not in order.
  const int64_t T_ = 7, H = 3, stride = 24, nvec = T_ * H;
  const std::vector<int32_t> pos = {0, 5, 1, 4000, 17, 3, 9};
  const auto x = to_double(cast<T>(rand_vec(nvec * stride, 1)));
  for (bool inverse : {false, true}) {
    auto y = cast<T>(x);
    rope_apply<T>(y.data(), nvec, stride, H, pos.data(), f.data(),
                  2 * static_cast<int64_t>(f.size()), inverse);
    const auto ref = ref_rope(x, nvec, stride, H, pos, f, inverse);
    expect_close(y, ref, kTol<T>, inverse ? "inverse" : "forward");
    // forward then inverse is the identity
    if (!inverse) {
      rope_apply<T>(y.data(), nvec, stride, H, pos.data(), f.data(),
                    2 * static_cast<int64_t>(f.size()), true);
      expect_close(y, x, 10 * kTol<T>, "round trip");
    }
  }
}

// The rotation is orthogonal, so the backward is the inverse rotation: check it as the gradient
// of f(x) = sum(rope(x) * g) by finite differences.
TEST(Rope, InverseIsTheBackward) {
  RopeParams p;
  p.dim = 8;
  const auto f = rope_frequencies(p);
  const int64_t nvec = 10, stride = 8, vpp = 2;
  const std::vector<int32_t> pos = {3, 1, 4, 1, 5};
  auto x = rand_vec(nvec * stride, 2);
  const auto g = rand_vec(nvec * stride, 3);
  auto fn = [&] {
    auto y = x;
    rope_apply<double>(y.data(), nvec, stride, vpp, pos.data(), f.data(),
                       2 * static_cast<int64_t>(f.size()), false);
    return dot(y, g);
  };
  auto grad = g;
  rope_apply<double>(grad.data(), nvec, stride, vpp, pos.data(), f.data(),
                     2 * static_cast<int64_t>(f.size()), true);
  expect_grad_fd(fn, x, grad, "rope backward", 80);
}

}  // namespace
}  // namespace moetron::kernels::cpu::testing
