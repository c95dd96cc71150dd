// MoE gate tests: group-limited selection on a hand-built case where it differs from plain
// top-k, bias used for selection only, ties to the lower index, weights summing to route_scale,
// random cases against a naive sort-based reference, and the backward (finite differences in
// double, naive analytic formula for float).
#include <numeric>

#include "kernels/cpu/ops_cpu.h"
#include "tests/test_kernels_util.h"

namespace moetron::kernels::cpu::testing {
namespace {

// The op reads the bias as the parameter's type T (fp32-valued here).
template <class T>
std::vector<T> to_t(const std::vector<float>& v) {
  return std::vector<T>(v.begin(), v.end());
}

double logit_of(double s) { return std::log(s / (1 - s)); }

struct GateRef {
  std::vector<double> scores, weights, dlogits;
  std::vector<int32_t> idx;
};

// Naive gate: sort-based selection in double, then the backward of the normalised weights.
GateRef ref_gate(const std::vector<double>& logits, const std::vector<float>* bias, int64_t N,
                 const GateParams& p, const std::vector<double>* dw = nullptr) {
  const int64_t E = p.n_experts, K = p.topk, G = p.n_group, gs = E / G;
  GateRef r;
  r.scores.resize(N * E);
  r.weights.resize(N * K);
  r.idx.resize(N * K);
  r.dlogits.assign(N * E, 0.0);
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> s(E), sb(E);
    for (int64_t e = 0; e < E; ++e) {
      s[e] = 1.0 / (1.0 + std::exp(-logits[n * E + e]));
      sb[e] = s[e] + (bias ? (*bias)[e] : 0.0);
      r.scores[n * E + e] = s[e];
    }
    std::vector<bool> keep(E, true);
    if (G > 1) {
      std::vector<double> gscore(G);
      for (int64_t g = 0; g < G; ++g) {
        std::vector<double> v(sb.begin() + g * gs, sb.begin() + (g + 1) * gs);
        std::sort(v.begin(), v.end(), std::greater<double>());
        gscore[g] = std::accumulate(v.begin(), v.begin() + K / p.topk_group, 0.0);
      }
      std::vector<int64_t> order(G);
      std::iota(order.begin(), order.end(), 0);
      std::stable_sort(order.begin(), order.end(),
                       [&](int64_t a, int64_t b) { return gscore[a] > gscore[b]; });
      std::vector<bool> gkeep(G, false);
      for (int64_t j = 0; j < p.topk_group; ++j) gkeep[order[j]] = true;
      for (int64_t e = 0; e < E; ++e) keep[e] = gkeep[e / gs];
    }
    std::vector<int64_t> cand;
    for (int64_t e = 0; e < E; ++e)
      if (keep[e]) cand.push_back(e);
    std::stable_sort(cand.begin(), cand.end(), [&](int64_t a, int64_t b) { return sb[a] > sb[b]; });
    double S = 0;
    for (int64_t k = 0; k < K; ++k) S += s[cand[k]];
    double dot = 0;
    for (int64_t k = 0; k < K; ++k) {
      r.idx[n * K + k] = static_cast<int32_t>(cand[k]);
      r.weights[n * K + k] = s[cand[k]] / S * p.route_scale;
      if (dw) dot += (*dw)[n * K + k] * s[cand[k]];
    }
    if (!dw) continue;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t j = cand[k];
      const double ds = p.route_scale * ((*dw)[n * K + k] / S - dot / (S * S));
      r.dlogits[n * E + j] = ds * s[j] * (1 - s[j]);
    }
  }
  return r;
}

TEST(Gate, GroupLimitedSelectionDiffersFromPlainTopK) {
  // 4 groups of 2 experts; top-4 over the 2 best groups by (sum of top 4/2 = 2 scores).
  const std::vector<double> s = {0.9, 0.1, 0.8, 0.7, 0.85, 0.05, 0.6, 0.6};
  std::vector<double> logits(8);
  for (int e = 0; e < 8; ++e) logits[e] = logit_of(s[e]);
  GateParams p{8, 4, 4, 2, 2.5};
  std::vector<double> scores(8), w(4);
  std::vector<int32_t> idx(4);
  gate_forward<double>(logits.data(), nullptr, 1, p, scores.data(), idx.data(), w.data());
  // group sums: 1.0, 1.5, 0.9, 1.2 -> keep groups 1 and 3 -> experts 2, 3, 6, 7 (6 before 7: tie)
  EXPECT_EQ(idx, (std::vector<int32_t>{2, 3, 6, 7}));
  const double S = 0.8 + 0.7 + 0.6 + 0.6;
  EXPECT_NEAR(w[0], 0.8 / S * 2.5, 1e-12);
  EXPECT_NEAR(w[3], 0.6 / S * 2.5, 1e-12);
  // Without group limiting the plain top-4 is 0, 4, 2, 3.
  GateParams plain{8, 4, 1, 1, 2.5};
  gate_forward<double>(logits.data(), nullptr, 1, plain, scores.data(), idx.data(), w.data());
  EXPECT_EQ(idx, (std::vector<int32_t>{0, 4, 2, 3}));
  EXPECT_EQ(ref_gate(logits, nullptr, 1, p).idx, (std::vector<int32_t>{2, 3, 6, 7}));
}

TEST(Gate, BiasSelectsButDoesNotWeight) {
  const std::vector<double> s = {0.9, 0.8, 0.7, 0.6};
  std::vector<double> logits(4);
  for (int e = 0; e < 4; ++e) logits[e] = logit_of(s[e]);
  const std::vector<float> bias = {0.f, 0.f, 0.5f, 0.f};
  GateParams p{4, 2, 1, 1, 1.0};
  std::vector<double> scores(4), w(2);
  std::vector<int32_t> idx(2);
  gate_forward<double>(logits.data(), to_t<double>(bias).data(), 1, p, scores.data(), idx.data(),
                       w.data());
  EXPECT_EQ(idx, (std::vector<int32_t>{2, 0}));  // 0.7 + 0.5 beats 0.9
  EXPECT_NEAR(w[0], 0.7 / 1.6, 1e-12);
  EXPECT_NEAR(w[1], 0.9 / 1.6, 1e-12);
  for (int e = 0; e < 4; ++e) EXPECT_NEAR(scores[e], s[e], 1e-12);
}

TEST(Gate, TiesBreakToTheLowerIndex) {
  std::vector<float> logits(6, 0.3f), scores(6), w(3);
  std::vector<int32_t> idx(3);
  gate_forward<float>(logits.data(), nullptr, 1, GateParams{6, 3, 1, 1, 1.0}, scores.data(),
                      idx.data(), w.data());
  EXPECT_EQ(idx, (std::vector<int32_t>{0, 1, 2}));
  for (float x : w) EXPECT_FLOAT_EQ(x, 1.f / 3);
  // Equal groups: the first group wins.
  std::vector<int32_t> idx2(2);
  std::vector<float> w2(2);
  gate_forward<float>(logits.data(), nullptr, 1, GateParams{6, 2, 3, 1, 1.0}, scores.data(),
                      idx2.data(), w2.data());
  EXPECT_EQ(idx2, (std::vector<int32_t>{0, 1}));
}

TEST(Gate, InvalidParamsThrow) {
  std::vector<float> l(8), s(8), w(8);
  std::vector<int32_t> idx(8);
  EXPECT_THROW(gate_forward<float>(l.data(), nullptr, 1, GateParams{8, 9, 1, 1, 1}, s.data(),
                                   idx.data(), w.data()),
               std::invalid_argument);
  EXPECT_THROW(gate_forward<float>(l.data(), nullptr, 1, GateParams{8, 2, 3, 1, 1}, s.data(),
                                   idx.data(), w.data()),
               std::invalid_argument);
  EXPECT_THROW(gate_forward<float>(l.data(), nullptr, 1, GateParams{8, 3, 4, 2, 1}, s.data(),
                                   idx.data(), w.data()),
               std::invalid_argument);
}

template <class T>
class GateTest : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(GateTest, Types);

TYPED_TEST(GateTest, RandomMatchesNaive) {
  using T = TypeParam;
  const int64_t N = 37;
  for (GateParams p : {GateParams{12, 4, 3, 2, 2.5}, GateParams{12, 3, 1, 1, 1.0},
                       GateParams{16, 6, 4, 3, 16.0}, GateParams{32, 8, 8, 4, 2.5}}) {
    const int64_t E = p.n_experts, K = p.topk;
    const auto logits = to_double(cast<T>(rand_vec(N * E, E + K, -3, 3)));
    std::vector<float> bias(E);
    const auto b = rand_vec(E, 99, -0.2, 0.2);
    for (int64_t e = 0; e < E; ++e) bias[e] = static_cast<float>(b[e]);
    const auto dw = to_double(cast<T>(rand_vec(N * K, 7)));
    std::vector<T> scores(N * E), w(N * K), dl(N * E, T(-1));
    std::vector<int32_t> idx(N * K);
    gate_forward<T>(cast<T>(logits).data(), to_t<T>(bias).data(), N, p, scores.data(), idx.data(),
                    w.data());
    gate_backward<T>(cast<T>(dw).data(), scores.data(), idx.data(), w.data(), N, p, dl.data());
    const GateRef r = ref_gate(logits, &bias, N, p, &dw);
    ASSERT_EQ(idx, r.idx) << "E=" << E << " K=" << K;
    expect_close(scores, r.scores, kTol<T>, "scores");
    expect_close(w, r.weights, kTol<T>, "weights");
    expect_close(dl, r.dlogits, kTol<T>, "dlogits");
    for (int64_t n = 0; n < N; ++n) {
      double sum = 0;
      for (int64_t k = 0; k < K; ++k) sum += w[n * K + k];
      EXPECT_NEAR(sum, p.route_scale, 10 * kTol<T> * p.route_scale);
    }
  }
}

TEST(Gate, BackwardMatchesFiniteDifferences) {
  const int64_t N = 9;
  const GateParams p{12, 4, 3, 2, 2.5};
  auto logits = rand_vec(N * p.n_experts, 5, -3, 3);
  const auto g = rand_vec(N * p.topk, 6);
  const std::vector<float> bias(p.n_experts, 0.01f);
  std::vector<double> scores(N * p.n_experts), w(N * p.topk), dl(N * p.n_experts);
  std::vector<int32_t> idx(N * p.topk);
  auto f = [&] {
    gate_forward<double>(logits.data(), to_t<double>(bias).data(), N, p, scores.data(), idx.data(),
                         w.data());
    return dot(w, g);
  };
  f();
  gate_backward<double>(g.data(), scores.data(), idx.data(), w.data(), N, p, dl.data());
  expect_grad_fd(f, logits, dl, "dlogits", 108);
}

}  // namespace
}  // namespace moetron::kernels::cpu::testing
