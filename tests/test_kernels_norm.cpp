// RMSNorm tests: forward, input gradient and weight gradient against a naive double reference,
// and the double backward against finite differences.
#include "kernels/cpu/ops_cpu.h"
#include "tests/test_kernels_util.h"

namespace moetron::kernels::cpu::testing {
namespace {

struct NormRef {
  std::vector<double> y, rstd, dx, dw;
};

NormRef ref_rmsnorm(const std::vector<double>& x, const std::vector<double>& w,
                    const std::vector<double>& dy, int64_t N, int64_t D, double eps) {
  NormRef r;
  r.y.resize(N * D);
  r.rstd.resize(N);
  r.dx.resize(N * D);
  r.dw.assign(D, 0);
  for (int64_t n = 0; n < N; ++n) {
    double ss = 0;
    for (int64_t d = 0; d < D; ++d) ss += x[n * D + d] * x[n * D + d];
    const double rs = 1.0 / std::sqrt(ss / D + eps);
    r.rstd[n] = rs;
    double c = 0;  // sum_d dy w x
    for (int64_t d = 0; d < D; ++d) {
      r.y[n * D + d] = x[n * D + d] * rs * w[d];
      c += dy[n * D + d] * w[d] * x[n * D + d];
      r.dw[d] += dy[n * D + d] * x[n * D + d] * rs;
    }
    // d y_i / d x_j = rs w_i delta_ij - rs^3 x_i w_i x_j / D
    for (int64_t d = 0; d < D; ++d) {
      r.dx[n * D + d] = rs * dy[n * D + d] * w[d] - rs * rs * rs * x[n * D + d] * c / D;
    }
  }
  return r;
}

template <class T>
class RmsNormTest : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(RmsNormTest, Types);

TYPED_TEST(RmsNormTest, MatchesNaive) {
  using T = TypeParam;
  for (auto [N, D] : {std::pair<int64_t, int64_t>{37, 53}, {1, 7}, {130, 300}}) {
    const auto x = to_double(cast<T>(rand_vec(N * D, 1, -3, 3)));
    const auto w = to_double(cast<T>(rand_vec(D, 2, 0.5, 1.5)));
    const auto dy = to_double(cast<T>(rand_vec(N * D, 3)));
    const double eps = 1e-6;
    std::vector<T> y(N * D), rstd(N), dx(N * D);
    const auto dw0 = to_double(cast<T>(rand_vec(D, 4)));  // the weight gradient accumulates
    auto dw = cast<T>(dw0);
    rmsnorm_forward<T>(cast<T>(x).data(), cast<T>(w).data(), N, D, T(eps), y.data(), rstd.data());
    rmsnorm_backward_input<T>(cast<T>(dy).data(), cast<T>(x).data(), cast<T>(w).data(), rstd.data(),
                              N, D, dx.data());
    rmsnorm_backward_weight<T>(cast<T>(dy).data(), cast<T>(x).data(), rstd.data(), N, D, dw.data());
    auto r = ref_rmsnorm(x, w, dy, N, D, eps);
    for (int64_t d = 0; d < D; ++d) r.dw[d] += dw0[d];
    expect_close(y, r.y, kTol<T>, "y");
    expect_close(rstd, r.rstd, kTol<T>, "rstd");
    expect_close(dx, r.dx, kTol<T>, "dx");
    expect_close(dw, r.dw, kTol<T>, "dw");
  }
}

TEST(RmsNorm, BackwardMatchesFiniteDifferences) {
  const int64_t N = 5, D = 37;
  auto x = rand_vec(N * D, 11, -2, 2), w = rand_vec(D, 12, 0.5, 1.5);
  const auto g = rand_vec(N * D, 13);
  std::vector<double> y(N * D), rstd(N), dx(N * D), dw(D, 0.0);
  auto f = [&] {
    rmsnorm_forward<double>(x.data(), w.data(), N, D, 1e-6, y.data(), rstd.data());
    return dot(y, g);
  };
  f();
  rmsnorm_backward_input<double>(g.data(), x.data(), w.data(), rstd.data(), N, D, dx.data());
  rmsnorm_backward_weight<double>(g.data(), x.data(), rstd.data(), N, D, dw.data());
  expect_grad_fd(f, x, dx, "dx", 100);
  expect_grad_fd(f, w, dw, "dw", 100);
}

}  // namespace
}  // namespace moetron::kernels::cpu::testing
