// SwiGLU tests: forward with and without the per-row gate weight, backward (including the row
// weight gradient) against a naive double reference and, in double, finite differences.
#include "kernels/cpu/ops_cpu.h"
#include "tests/test_kernels_util.h"

namespace moetron::kernels::cpu::testing {
namespace {

double ref_sig(double x) { return 1.0 / (1.0 + std::exp(-x)); }

struct SwigluRef {
  std::vector<double> out, dgu, ds;
};

SwigluRef ref_swiglu(const std::vector<double>& gu, int64_t N, int64_t F,
                     const std::vector<double>* s, const std::vector<double>& dout) {
  SwigluRef r;
  r.out.resize(N * F);
  r.dgu.resize(N * 2 * F);
  r.ds.assign(N, 0);
  for (int64_t n = 0; n < N; ++n) {
    const double sc = s ? (*s)[n] : 1.0;
    for (int64_t f = 0; f < F; ++f) {
      const double g = gu[n * 2 * F + f], u = gu[n * 2 * F + F + f], d = dout[n * F + f];
      const double sg = ref_sig(g), act = g * sg;
      r.out[n * F + f] = act * u * sc;
      r.dgu[n * 2 * F + f] = d * u * sc * (sg + g * sg * (1 - sg));
      r.dgu[n * 2 * F + F + f] = d * act * sc;
      r.ds[n] += d * act * u;
    }
  }
  return r;
}

template <class T>
class SwigluTest : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(SwigluTest, Types);

TYPED_TEST(SwigluTest, MatchesNaive) {
  using T = TypeParam;
  const int64_t N = 37, F = 53;
  const auto gu = to_double(cast<T>(rand_vec(N * 2 * F, 1, -6, 6)));
  const auto s = to_double(cast<T>(rand_vec(N, 2, 0.1, 1)));
  const auto dout = to_double(cast<T>(rand_vec(N * F, 3)));
  for (bool scaled : {false, true}) {
    std::vector<T> out(N * F), dgu(N * 2 * F), ds(N, T(-7));
    const auto sT = cast<T>(s);
    const T* sp = scaled ? sT.data() : nullptr;
    swiglu_forward<T>(cast<T>(gu).data(), N, F, sp, out.data());
    swiglu_backward<T>(cast<T>(dout).data(), cast<T>(gu).data(), N, F, sp, dgu.data(),
                       scaled ? ds.data() : nullptr);
    const auto r = ref_swiglu(gu, N, F, scaled ? &s : nullptr, dout);
    expect_close(out, r.out, kTol<T>, "out");
    expect_close(dgu, r.dgu, kTol<T>, "dgu");
    if (scaled) expect_close(ds, r.ds, kTol<T>, "drow_scale");
  }
}

TEST(Swiglu, ExtremeGateValues) {
  // silu saturates cleanly: no NaN/Inf for large |g|.
  const int64_t F = 4;
  std::vector<float> gu = {-200.f, -90.f, 90.f, 200.f, 1.f, 1.f, 1.f, 1.f}, out(F), dgu(2 * F);
  std::vector<float> dout(F, 1.f);
  swiglu_forward<float>(gu.data(), 1, F, nullptr, out.data());
  swiglu_backward<float>(dout.data(), gu.data(), 1, F, nullptr, dgu.data(), nullptr);
  EXPECT_NEAR(out[0], 0.f, 1e-30);
  EXPECT_NEAR(out[1], 0.f, 1e-30);
  EXPECT_FLOAT_EQ(out[2], 90.f);
  EXPECT_FLOAT_EQ(out[3], 200.f);
  for (float x : dgu) EXPECT_TRUE(std::isfinite(x));
  EXPECT_FLOAT_EQ(dgu[3], 1.f);  // silu'(200) = 1
}

TEST(Swiglu, BackwardMatchesFiniteDifferences) {
  const int64_t N = 7, F = 9;
  auto gu = rand_vec(N * 2 * F, 11, -3, 3), s = rand_vec(N, 12, 0.2, 1.2);
  const auto g = rand_vec(N * F, 13);
  std::vector<double> out(N * F), dgu(N * 2 * F), ds(N);
  auto f = [&] {
    swiglu_forward<double>(gu.data(), N, F, s.data(), out.data());
    return dot(out, g);
  };
  swiglu_backward<double>(g.data(), gu.data(), N, F, s.data(), dgu.data(), ds.data());
  expect_grad_fd(f, gu, dgu, "dgu", 126);
  expect_grad_fd(f, s, ds, "drow_scale", 7);
}

// In place (dgu over gu, as the MLP and the routed experts run it under FP8: the widened input's
// scratch takes its gradient): the same bits as into a separate buffer, the row sums too.
TEST(Swiglu, BackwardInPlaceIsTheSameBits) {
  for (auto [N, F] : {std::pair<int64_t, int64_t>{7, 9}, {33, 2048}, {5, 161}}) {
    const auto gu = cast<float>(rand_vec(N * 2 * F, 21, -6, 6));
    const auto d = cast<float>(rand_vec(N * F, 22)), s = cast<float>(rand_vec(N, 23, 0.2, 1.2));
    std::vector<float> dgu(N * 2 * F), ds(N), ds2(N);
    swiglu_backward<float>(d.data(), gu.data(), N, F, s.data(), dgu.data(), ds.data());
    std::vector<float> inplace = gu;
    swiglu_backward<float>(d.data(), inplace.data(), N, F, s.data(), inplace.data(), ds2.data());
    EXPECT_EQ(inplace, dgu) << N << "x" << F;
    EXPECT_EQ(ds2, ds) << N << "x" << F;
  }
}

}  // namespace
}  // namespace moetron::kernels::cpu::testing
