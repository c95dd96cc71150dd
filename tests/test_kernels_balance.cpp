// MoE balancing kernels against naive references: the sequence-wise balance loss over the first V
// of S positions of each sequence (V = S in the main model, S - k in MTP depth k, SPEC §1.5) —
// f, the loss and, through the sigmoid, its gradient by finite differences in double; the masked
// positions get no gradient and change nothing; the expert-load histogram with a period; the
// auxiliary-loss-free bias update.
#include <algorithm>
#include <numeric>

#include "kernels/cpu/ops_cpu.h"
#include "tests/test_kernels_util.h"

namespace moetron::kernels::cpu::testing {
namespace {

std::vector<double> sigmoid(const std::vector<double>& x) {
  std::vector<double> s(x.size());
  for (size_t i = 0; i < x.size(); ++i) s[i] = 1.0 / (1.0 + std::exp(-x[i]));
  return s;
}

struct BalanceRef {
  std::vector<double> f;  // [B, E]
  double loss = 0;
};

// Straight from SPEC §1.4 over the first V positions: sort each token's scores, count the plain
// top-K, f = E/(K V) count, P = mean s / sum s, loss = alpha mean_b sum_i f P.
BalanceRef ref_balance(const std::vector<double>& s, int64_t B, int64_t S, int64_t V, int64_t E,
                       int64_t K, double alpha) {
  BalanceRef r;
  r.f.assign(B * E, 0.0);
  for (int64_t b = 0; b < B; ++b) {
    std::vector<double> P(E, 0.0);
    for (int64_t t = 0; t < V; ++t) {
      const double* st = &s[(b * S + t) * E];
      std::vector<int64_t> order(E);
      std::iota(order.begin(), order.end(), 0);
      std::sort(order.begin(), order.end(),
                [&](int64_t i, int64_t j) { return st[i] > st[j] || (st[i] == st[j] && i < j); });
      for (int64_t k = 0; k < K; ++k) r.f[b * E + order[k]] += double(E) / double(K * V);
      double z = 0;
      for (int64_t e = 0; e < E; ++e) z += st[e];
      for (int64_t e = 0; e < E; ++e) P[e] += st[e] / z / double(V);
    }
    for (int64_t e = 0; e < E; ++e) r.loss += alpha * r.f[b * E + e] * P[e] / double(B);
  }
  return r;
}

template <class T>
void check_forward(int64_t B, int64_t S, int64_t V, int64_t E, int64_t K) {
  const double alpha = 0.3;
  const auto s = sigmoid(rand_vec(B * S * E, 7 + V, -3, 3));
  const BalanceRef ref = ref_balance(s, B, S, V, E, K, alpha);
  std::vector<T> f(B * E, T(-1));
  double loss = -1;
  seq_balance_loss_forward<T>(cast<T>(s).data(), B, S, V, E, K, alpha, f.data(), &loss);
  const std::string what = "S=" + std::to_string(S) + " V=" + std::to_string(V);
  expect_close(f, ref.f, kTol<T>, "f " + what);
  EXPECT_NEAR(loss, ref.loss, kTol<T> * std::fabs(ref.loss) + 1e-300) << what;
  if (V > 0) {
    EXPECT_GT(loss, 0.0) << what;
  }
  // the positions past V change nothing
  auto s2 = cast<T>(s);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = V; t < S; ++t)
      for (int64_t e = 0; e < E; ++e) s2[(b * S + t) * E + e] = T(0.5) + T(0.01) * T(e);
  std::vector<T> f2(B * E);
  double loss2 = -1;
  seq_balance_loss_forward<T>(s2.data(), B, S, V, E, K, alpha, f2.data(), &loss2);
  EXPECT_EQ(f2, f) << what;
  EXPECT_EQ(loss2, loss) << what;
}

TEST(BalanceLoss, ForwardMatchesNaiveOverTheValidPositions) {
  for (int64_t V : {9, 8, 6, 1, 0}) {
    check_forward<double>(3, 9, V, 8, 3);
    check_forward<float>(3, 9, V, 8, 3);
  }
}

TEST(BalanceLoss, MaskingTheTailDiffersFromCountingIt) {
  const int64_t B = 2, S = 7, E = 6, K = 2;
  const auto s = sigmoid(rand_vec(B * S * E, 3, -3, 3));
  std::vector<double> f(B * E);
  double all = 0, masked = 0;
  seq_balance_loss_forward<double>(s.data(), B, S, S, E, K, 1.0, f.data(), &all);
  seq_balance_loss_forward<double>(s.data(), B, S, S - 1, E, K, 1.0, f.data(), &masked);
  EXPECT_NE(all, masked);
  EXPECT_NEAR(masked, ref_balance(s, B, S, S - 1, E, K, 1.0).loss, 1e-12);
}

TEST(BalanceLoss, BackwardMatchesFiniteDifferencesAndSkipsTheTail) {
  const int64_t B = 2, S = 7, V = 5, E = 8, K = 3;
  const double alpha = 0.7, c = alpha / double(B * V);  // d loss / d (sum over f P terms)
  auto logits = rand_vec(B * S * E, 11, -3, 3);
  std::vector<double> f(B * E);
  auto loss = [&] {  // f held at its value: it is piecewise constant in the scores
    const auto s = sigmoid(logits);
    double total = 0;
    for (int64_t b = 0; b < B; ++b)
      for (int64_t t = 0; t < V; ++t) {
        const double* st = &s[(b * S + t) * E];
        double z = 0;
        for (int64_t e = 0; e < E; ++e) z += st[e];
        for (int64_t e = 0; e < E; ++e) total += f[b * E + e] * st[e] / z;
      }
    return c * total;
  };
  double l = 0;
  const auto s = sigmoid(logits);
  seq_balance_loss_forward<double>(s.data(), B, S, V, E, K, alpha, f.data(), &l);
  EXPECT_NEAR(loss(), l, 1e-12);
  std::vector<double> dl(B * S * E, 0.25);  // adds into what is there
  seq_balance_loss_backward<double>(s.data(), f.data(), B, S, V, E, c, dl.data());
  for (double& g : dl) g -= 0.25;
  expect_grad_fd(loss, logits, dl, "dlogits", 200);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = V; t < S; ++t)
      for (int64_t e = 0; e < E; ++e) EXPECT_EQ(dl[(b * S + t) * E + e], 0.0) << b << "," << t;
}

TEST(BalanceLoss, RejectsAValidCountOutsideTheSequence) {
  std::vector<float> s(2 * 4, 0.5f), f(4);
  double loss = 0;
  EXPECT_THROW(seq_balance_loss_forward<float>(s.data(), 1, 2, 3, 4, 1, 1.0, f.data(), &loss),
               std::invalid_argument);
  EXPECT_THROW(seq_balance_loss_forward<float>(s.data(), 1, 2, -1, 4, 1, 1.0, f.data(), &loss),
               std::invalid_argument);
}

TEST(ExpertHistogram, CountsTheValidPartOfEachPeriod) {
  const int64_t B = 3, S = 5, K = 2, E = 7, V = 3;
  const auto idx = random_routes(B * S, K, E, 4);
  std::vector<int64_t> load(E, 100), ref(E, 0);
  for (int64_t b = 0; b < B; ++b)
    for (int64_t t = 0; t < V; ++t)
      for (int64_t k = 0; k < K; ++k) ++ref[idx[(b * S + t) * K + k]];
  expert_histogram(idx.data(), B * S * K, S * K, V * K, E, load.data(), /*accumulate=*/false);
  EXPECT_EQ(load, ref);
  EXPECT_EQ(std::accumulate(load.begin(), load.end(), int64_t(0)), B * V * K);
  expert_histogram(idx.data(), B * S * K, S * K, V * K, E, load.data(), /*accumulate=*/true);
  for (int64_t e = 0; e < E; ++e) EXPECT_EQ(load[e], 2 * ref[e]);
  // period == valid: every entry; out-of-range ids (the EP layout's -1) are skipped
  std::vector<int32_t> ids = {0, 6, -1, 7, 6, 6};
  expert_histogram(ids.data(), 6, 6, 6, E, load.data(), false);
  EXPECT_EQ(load, (std::vector<int64_t>{1, 0, 0, 0, 0, 0, 3}));
}

TEST(BiasUpdate, MovesTowardTheMeanLoad) {
  std::vector<double> bias = {0.0, 0.0, 0.0, 0.5};
  const std::vector<int64_t> load = {1, 5, 3, 3};  // mean 3
  bias_sign_update<double>(bias.data(), load.data(), 4, 0.25);
  EXPECT_EQ(bias, (std::vector<double>{0.25, -0.25, 0.0, 0.5}));
}

}  // namespace
}  // namespace moetron::kernels::cpu::testing
