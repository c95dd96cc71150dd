// Fused output head + cross-entropy tests: vocabulary chunks that do not divide V (and a chunk
// larger than V, and chunk 1), ignored targets, the BF16 logits GEMM, against a naive full-logits
// reference in double; the double backward also against finite differences.
#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"
#include "tests/test_kernels_util.h"

namespace moetron::kernels::cpu::testing {
namespace {

// The op writes its loss sum to a (device) buffer; here, a host double.
template <class T>
double ce_loss_sum(const T* h, const T* W, const int32_t* t, int64_t N, int64_t D, int64_t V,
                   int64_t chunk, T* lse, GemmPrecision prec) {
  double sum = 0;
  lm_head_ce_forward<T>(h, W, t, N, D, V, chunk, lse, prec, &sum);
  return sum;
}

struct CeRef {
  double loss = 0;
  std::vector<double> lse, dh, dW;
};

CeRef ref_ce(const std::vector<double>& h, const std::vector<double>& W,
             const std::vector<int32_t>& t, int64_t N, int64_t D, int64_t V, double g) {
  CeRef r;
  r.lse.resize(N);
  r.dh.assign(N * D, 0);
  r.dW.assign(V * D, 0);
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> z(V);
    double m = -1e300;
    for (int64_t v = 0; v < V; ++v) {
      double s = 0;
      for (int64_t d = 0; d < D; ++d) s += h[n * D + d] * W[v * D + d];
      z[v] = s;
      m = std::max(m, s);
    }
    double l = 0;
    for (double x : z) l += std::exp(x - m);
    r.lse[n] = m + std::log(l);
    if (t[n] < 0) continue;
    r.loss += r.lse[n] - z[t[n]];
    for (int64_t v = 0; v < V; ++v) {
      const double dz = g * (std::exp(z[v] - r.lse[n]) - (v == t[n] ? 1.0 : 0.0));
      for (int64_t d = 0; d < D; ++d) {
        r.dh[n * D + d] += dz * W[v * D + d];
        r.dW[v * D + d] += dz * h[n * D + d];
      }
    }
  }
  return r;
}

std::vector<int32_t> targets(int64_t N, int64_t V) {
  std::vector<int32_t> t(N);
  for (int64_t n = 0; n < N; ++n) t[n] = static_cast<int32_t>((n * 37 + 11) % V);
  t[0] = 0;
  t[1] = static_cast<int32_t>(V - 1);
  t[2] = -1;  // ignored rows
  t[N - 1] = -100;
  return t;
}

template <class T>
class CrossEntropyTest : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(CrossEntropyTest, Types);

TYPED_TEST(CrossEntropyTest, ChunkedMatchesNaive) {
  using T = TypeParam;
  const int64_t N = 37, D = 53, V = 101;
  const auto h = to_double(cast<T>(rand_vec(N * D, 1, -1, 1)));
  const auto W = to_double(cast<T>(rand_vec(V * D, 2, -0.5, 0.5)));
  const auto t = targets(N, V);
  const double g = 1.0 / 35;
  const CeRef r = ref_ce(h, W, t, N, D, V, g);
  const auto dW0 = rand_vec(V * D, 3);  // dW accumulates
  for (int64_t chunk : {16, 101, 1000, 1}) {
    std::vector<T> lse(N), dh(N * D, T(5));
    auto dW = cast<T>(dW0);
    const double loss = ce_loss_sum<T>(cast<T>(h).data(), cast<T>(W).data(), t.data(), N, D, V,
                                       chunk, lse.data(), GemmPrecision::FP32);
    lm_head_ce_backward<T>(cast<T>(h).data(), cast<T>(W).data(), t.data(), lse.data(), T(g), N, D,
                           V, chunk, dh.data(), dW.data(), GemmPrecision::FP32);
    std::vector<double> dWref(V * D);
    for (int64_t i = 0; i < V * D; ++i) dWref[i] = static_cast<double>(T(dW0[i])) + r.dW[i];
    const std::string tag = "chunk " + std::to_string(chunk);
    EXPECT_NEAR(loss, r.loss, kTol<T> * std::fabs(r.loss)) << tag;
    expect_close(lse, r.lse, kTol<T>, tag + " lse");
    expect_close(dh, r.dh, kTol<T>, tag + " dh");
    expect_close(dW, dWref, kTol<T>, tag + " dW");
  }
}

TYPED_TEST(CrossEntropyTest, Bf16LogitsUseRoundedInputs) {
  using T = TypeParam;
  const int64_t N = 19, D = 41, V = 67;
  auto h = to_double(cast<T>(rand_vec(N * D, 4)));
  auto W = to_double(cast<T>(rand_vec(V * D, 5)));
  const auto t = targets(N, V);
  std::vector<T> lse(N);
  const double loss = ce_loss_sum<T>(cast<T>(h).data(), cast<T>(W).data(), t.data(), N, D, V, 16,
                                     lse.data(), GemmPrecision::BF16);
  for (double& x : h) x = round_bf16(static_cast<float>(x));
  for (double& x : W) x = round_bf16(static_cast<float>(x));
  const CeRef r = ref_ce(h, W, t, N, D, V, 1.0);
  EXPECT_NEAR(loss, r.loss, kTol<T> * std::fabs(r.loss));
  expect_close(lse, r.lse, kTol<T>, "bf16 lse");
}

// The head weight's bf16 copy (the model's Bf16WeightCache): forward and backward give the bits of
// the BF16 op that converts W per chunk; a copy is refused for fp32 products.
TEST(CrossEntropy, Bf16WeightCopyKeepsTheBits) {
  const int64_t N = 19, D = 41, V = 67, chunk = 16;
  const auto h = cast<float>(rand_vec(N * D, 14)), W = cast<float>(rand_vec(V * D, 15));
  std::vector<uint16_t> W16(W.size());
  for (size_t i = 0; i < W.size(); ++i) W16[i] = f32_to_bf16(W[i]);
  const auto t = targets(N, V);
  const GemmPrecision bf = GemmPrecision::BF16;
  std::vector<float> lse(N), lse16(N);
  double loss = 0, loss16 = 0;
  lm_head_ce_forward<float>(h.data(), W.data(), t.data(), N, D, V, chunk, lse.data(), bf, &loss);
  lm_head_ce_forward<float>(h.data(), W.data(), t.data(), N, D, V, chunk, lse16.data(), bf,
                            &loss16, W16.data());
  EXPECT_EQ(lse16, lse);
  EXPECT_EQ(loss16, loss);
  std::vector<float> dh(N * D), dh16(N * D), dW(V * D, 0.5f), dW16(V * D, 0.5f);
  lm_head_ce_backward<float>(h.data(), W.data(), t.data(), lse.data(), 0.1f, N, D, V, chunk,
                             dh.data(), dW.data(), bf);
  lm_head_ce_backward<float>(h.data(), W.data(), t.data(), lse.data(), 0.1f, N, D, V, chunk,
                             dh16.data(), dW16.data(), bf, W16.data());
  EXPECT_EQ(dh16, dh);
  EXPECT_EQ(dW16, dW);
  EXPECT_THROW(lm_head_ce_forward<float>(h.data(), W.data(), t.data(), N, D, V, chunk, lse.data(),
                                         GemmPrecision::FP32, &loss, W16.data()),
               std::invalid_argument);
}

TEST(CrossEntropy, AllRowsIgnoredGivesZero) {
  const int64_t N = 3, D = 4, V = 5;
  const auto h = cast<float>(rand_vec(N * D, 6)), W = cast<float>(rand_vec(V * D, 7));
  const std::vector<int32_t> t(N, -1);
  std::vector<float> lse(N), dh(N * D, 9.f), dW(V * D, 0.f);
  EXPECT_EQ(
      ce_loss_sum<float>(h.data(), W.data(), t.data(), N, D, V, 2, lse.data(), GemmPrecision::FP32),
      0.0);
  lm_head_ce_backward<float>(h.data(), W.data(), t.data(), lse.data(), 1.f, N, D, V, 2, dh.data(),
                             dW.data(), GemmPrecision::FP32);
  for (float x : dh) EXPECT_EQ(x, 0.f);
  for (float x : dW) EXPECT_EQ(x, 0.f);
  const std::vector<int32_t> bad = {0, 5, 1};
  EXPECT_THROW(ce_loss_sum<float>(h.data(), W.data(), bad.data(), N, D, V, 2, lse.data(),
                                  GemmPrecision::FP32),
               std::out_of_range);
}

TEST(CrossEntropy, BackwardMatchesFiniteDifferences) {
  const int64_t N = 7, D = 9, V = 23, chunk = 5;
  auto h = rand_vec(N * D, 8), W = rand_vec(V * D, 9);
  const auto t = targets(N, V);
  const double g = 0.37;
  std::vector<double> lse(N), dh(N * D), dW(V * D, 0.0);
  auto f = [&] {
    return g * ce_loss_sum<double>(h.data(), W.data(), t.data(), N, D, V, chunk, lse.data(),
                                   GemmPrecision::FP32);
  };
  f();
  lm_head_ce_backward<double>(h.data(), W.data(), t.data(), lse.data(), g, N, D, V, chunk,
                              dh.data(), dW.data(), GemmPrecision::FP32);
  expect_grad_fd(f, h, dh, "dh", 63);
  expect_grad_fd(f, W, dW, "dW", 100);
}

}  // namespace
}  // namespace moetron::kernels::cpu::testing
