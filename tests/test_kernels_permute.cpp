// Token permutation tests: the routing table (counts, offsets, stable (n, k) order inside an
// expert), gather + scatter-add round trip (= x * K), accumulation, and the adjoint relation
// that makes unpermute_add the backward of permute_rows.
#include <numeric>

#include "kernels/ops.h"
#include "tests/test_kernels_util.h"

namespace moetron::kernels::testing {
namespace {

std::vector<int32_t> random_idx(int64_t N, int64_t K, int64_t E, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> idx(N * K);
  for (int64_t n = 0; n < N; ++n) {  // K distinct experts per token, like the gate produces
    std::vector<int32_t> all(E);
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    for (int64_t k = 0; k < K; ++k) idx[n * K + k] = all[k];
  }
  return idx;
}

TEST(Permute, RoutingTableIsAStableCountingSort) {
  const int64_t N = 37, K = 3, E = 12;
  const auto idx = random_idx(N, K, E, 1);
  const ExpertRouting r = route_by_expert(idx.data(), N, K, E);
  ASSERT_EQ(r.counts.size(), size_t(E));
  ASSERT_EQ(r.offsets.size(), size_t(E + 1));
  // Naive: walk experts in order, and inside an expert the assignments in (n, k) order.
  int64_t row = 0;
  for (int64_t e = 0; e < E; ++e) {
    EXPECT_EQ(r.offsets[e], row);
    int64_t c = 0;
    for (int64_t i = 0; i < N * K; ++i) {
      if (idx[i] != e) continue;
      EXPECT_EQ(r.slot[i], row);
      EXPECT_EQ(r.row_slot[row], i);
      EXPECT_EQ(r.row_token[row], i / K);
      ++row;
      ++c;
    }
    EXPECT_EQ(r.counts[e], c);
  }
  EXPECT_EQ(r.offsets[E], N * K);
}

TEST(Permute, EmptyExpertsAndOutOfRangeIds) {
  const std::vector<int32_t> idx = {2, 2, 0, 2};  // N=2, K=2: expert 1 and 3 get nothing
  const ExpertRouting r = route_by_expert(idx.data(), 2, 2, 4);
  EXPECT_EQ(r.counts, (std::vector<int64_t>{1, 0, 3, 0}));
  EXPECT_EQ(r.offsets, (std::vector<int64_t>{0, 1, 1, 4, 4}));
  EXPECT_EQ(r.slot, (std::vector<int64_t>{1, 2, 0, 3}));
  const std::vector<int32_t> bad = {0, 4};
  EXPECT_THROW(route_by_expert(bad.data(), 1, 2, 4), std::out_of_range);
}

template <class T>
class PermuteTest : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(PermuteTest, Types);

TYPED_TEST(PermuteTest, GatherThenScatterIsXTimesK) {
  using T = TypeParam;
  const int64_t N = 37, K = 3, E = 12, D = 53;
  const auto idx = random_idx(N, K, E, 2);
  const ExpertRouting r = route_by_expert(idx.data(), N, K, E);
  const auto x = cast<T>(rand_vec(N * D, 3));
  std::vector<T> rows(N * K * D);
  permute_rows<T>(x.data(), r, D, rows.data());
  for (int64_t row = 0; row < N * K; ++row) {
    for (int64_t d = 0; d < D; ++d) ASSERT_EQ(rows[row * D + d], x[r.row_token[row] * D + d]);
  }
  const auto base = rand_vec(N * D, 4);  // unpermute_add accumulates
  auto out = cast<T>(base);
  unpermute_add<T>(rows.data(), r, N, D, out.data());
  std::vector<double> ref(N * D);
  for (int64_t i = 0; i < N * D; ++i) ref[i] = static_cast<double>(T(base[i])) + K * double(x[i]);
  expect_close(out, ref, kTol<T>, "unpermute(permute(x))");
}

// <permute(x), y> = <x, unpermute_add(y)>: the scatter-add is the transpose of the gather.
TEST(Permute, ScatterIsTheAdjointOfGather) {
  const int64_t N = 29, K = 4, E = 7, D = 5;
  const auto idx = random_idx(N, K, E, 5);
  const ExpertRouting r = route_by_expert(idx.data(), N, K, E);
  const auto x = rand_vec(N * D, 6), y = rand_vec(N * K * D, 7);
  std::vector<double> px(N * K * D), uy(N * D, 0.0);
  permute_rows<double>(x.data(), r, D, px.data());
  unpermute_add<double>(y.data(), r, N, D, uy.data());
  EXPECT_NEAR(dot(px, y), dot(x, uy), 1e-12 * (1 + std::fabs(dot(px, y))));
}

}  // namespace
}  // namespace moetron::kernels::testing

// Expert parallelism: slots whose expert lives in another process are marked -1; they get no
// row, and the scatter-add skips them.
TEST(Permute, SkipsSlotsServedElsewhere) {
  const int32_t idx[] = {1, -1, 0, 1, -1, -1};  // N=3 tokens, K=2
  auto r = moetron::kernels::route_by_expert(idx, 3, 2, 2);
  EXPECT_EQ(r.row_token.size(), 3u);
  EXPECT_EQ(r.counts[0], 1);
  EXPECT_EQ(r.counts[1], 2);
  EXPECT_EQ(r.slot[1], -1);
  EXPECT_EQ(r.slot[4], -1);
  EXPECT_EQ(r.slot[5], -1);
  const double x[] = {1, 2, 3};  // D=1
  double rows[3], out[3] = {0, 0, 0};
  moetron::kernels::permute_rows<double>(x, r, 1, rows);
  moetron::kernels::unpermute_add<double>(rows, r, 3, 1, out);
  EXPECT_EQ(out[0], 1.0);  // one local slot
  EXPECT_EQ(out[1], 4.0);  // two local slots
  EXPECT_EQ(out[2], 0.0);  // none
}
