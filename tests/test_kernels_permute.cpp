// Token permutation tests: the routing table (counts, offsets, stable (n, k) order inside an
// expert, each expert's rows padded to a multiple of `align`), gather + scatter-add round trip
// (= x * K), accumulation, and the adjoint relation that makes unpermute_add the backward of
// gather_rows by row_token.
#include <numeric>

#include "kernels/cpu/ops_cpu.h"
#include "tests/test_kernels_util.h"

namespace moetron::kernels::cpu::testing {
namespace {

// The routing table as host vectors (the op writes up to N*K + E*(align-1) rows; offsets[E] rows
// are used).
struct ExpertRouting {
  std::vector<int64_t> counts, offsets, slot, row_token, row_slot;
  int64_t K = 0;
};
ExpertRouting route(const int32_t* idx, int64_t N, int64_t K, int64_t E, int64_t align = 1) {
  ExpertRouting r;
  r.K = K;
  r.counts.resize(E), r.offsets.resize(E + 1), r.slot.resize(N * K);
  r.row_token.resize(N * K + E * (align - 1)), r.row_slot.resize(N * K + E * (align - 1));
  route_by_expert(idx, N, K, E, align, r.counts.data(), r.offsets.data(), r.slot.data(),
                  r.row_token.data(), r.row_slot.data());
  r.row_token.resize(r.offsets[E]), r.row_slot.resize(r.offsets[E]);
  return r;
}
template <class T>
void permute(const T* x, const ExpertRouting& r, int64_t D, T* out) {
  gather_rows<T>(x, r.row_token.data(), static_cast<int64_t>(r.row_token.size()), D, out);
}
template <class T>
void unpermute(const T* rows, const ExpertRouting& r, int64_t N, int64_t D, T* out) {
  unpermute_add<T>(rows, r.slot.data(), N, r.K, D, out);
}

TEST(Permute, RoutingTableIsAStableCountingSort) {
  const int64_t N = 37, K = 3, E = 12;
  const auto idx = random_routes(N, K, E, 1);
  const ExpertRouting r = route(idx.data(), N, K, E);
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
  const ExpertRouting r = route(idx.data(), 2, 2, 4);
  EXPECT_EQ(r.counts, (std::vector<int64_t>{1, 0, 3, 0}));
  EXPECT_EQ(r.offsets, (std::vector<int64_t>{0, 1, 1, 4, 4}));
  EXPECT_EQ(r.slot, (std::vector<int64_t>{1, 2, 0, 3}));
  const std::vector<int32_t> bad = {0, 4};
  EXPECT_THROW(route(bad.data(), 1, 2, 4), std::out_of_range);
}

// align 5: every expert's rows start at a multiple of 5 and take a multiple of 5 rows; its own
// rows come first, in the unpadded order; the pad rows gather zeros and are never scattered.
TEST(Permute, AlignedGroupsPadWithRowsThatGatherZeros) {
  const int64_t N = 37, K = 3, E = 12, D = 4, align = 5;
  const auto idx = random_routes(N, K, E, 1);
  const ExpertRouting plain = route(idx.data(), N, K, E);
  const ExpertRouting r = route(idx.data(), N, K, E, align);
  EXPECT_EQ(r.counts, plain.counts);
  int64_t padded = 0;
  for (int64_t e = 0; e < E; ++e) {
    ASSERT_EQ(r.offsets[e] % align, 0) << e;
    ASSERT_EQ(r.offsets[e + 1] - r.offsets[e], (plain.counts[e] + align - 1) / align * align) << e;
    for (int64_t j = 0; j < plain.counts[e]; ++j) {  // the expert's own rows, as without padding
      EXPECT_EQ(r.row_token[r.offsets[e] + j], plain.row_token[plain.offsets[e] + j]);
      EXPECT_EQ(r.row_slot[r.offsets[e] + j], plain.row_slot[plain.offsets[e] + j]);
    }
    for (int64_t row = r.offsets[e] + plain.counts[e]; row < r.offsets[e + 1]; ++row, ++padded) {
      EXPECT_EQ(r.row_token[row], -1);
      EXPECT_EQ(r.row_slot[row], -1);
    }
  }
  EXPECT_GT(padded, 0) << "no expert's count was ragged: the test shows nothing";
  EXPECT_EQ(r.offsets[E], N * K + padded);
  for (int64_t i = 0; i < N * K; ++i) {  // each slot points at its row in the padded order
    const int64_t e = idx[i];
    EXPECT_EQ(r.slot[i] - r.offsets[e], plain.slot[i] - plain.offsets[e]) << i;
  }
  // gather and scatter through the padded table: pad rows are zeros, the round trip is x * K
  const auto x = rand_vec(N * D, 3);
  std::vector<double> rows(r.offsets[E] * D, 7.0), out(N * D, 0.0);
  permute<double>(x.data(), r, D, rows.data());
  for (int64_t row = 0; row < r.offsets[E]; ++row) {
    if (r.row_token[row] < 0) {
      for (int64_t d = 0; d < D; ++d) ASSERT_EQ(rows[row * D + d], 0.0);
    }
  }
  unpermute<double>(rows.data(), r, N, D, out.data());
  for (int64_t i = 0; i < N * D; ++i) EXPECT_EQ(out[i], K * x[i]) << i;
  EXPECT_THROW(route(idx.data(), N, K, E, 0), std::invalid_argument);
}

template <class T>
class PermuteTest : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(PermuteTest, Types);

TYPED_TEST(PermuteTest, GatherThenScatterIsXTimesK) {
  using T = TypeParam;
  const int64_t N = 37, K = 3, E = 12, D = 53;
  const auto idx = random_routes(N, K, E, 2);
  const ExpertRouting r = route(idx.data(), N, K, E);
  const auto x = cast<T>(rand_vec(N * D, 3));
  std::vector<T> rows(N * K * D);
  permute<T>(x.data(), r, D, rows.data());
  for (int64_t row = 0; row < N * K; ++row) {
    for (int64_t d = 0; d < D; ++d) ASSERT_EQ(rows[row * D + d], x[r.row_token[row] * D + d]);
  }
  const auto base = rand_vec(N * D, 4);  // unpermute_add accumulates
  auto out = cast<T>(base);
  unpermute<T>(rows.data(), r, N, D, out.data());
  std::vector<double> ref(N * D);
  for (int64_t i = 0; i < N * D; ++i) ref[i] = static_cast<double>(T(base[i])) + K * double(x[i]);
  expect_close(out, ref, kTol<T>, "unpermute(permute(x))");
}

// <permute(x), y> = <x, unpermute_add(y)>: the scatter-add is the transpose of the gather.
TEST(Permute, ScatterIsTheAdjointOfGather) {
  const int64_t N = 29, K = 4, E = 7, D = 5;
  const auto idx = random_routes(N, K, E, 5);
  const ExpertRouting r = route(idx.data(), N, K, E);
  const auto x = rand_vec(N * D, 6), y = rand_vec(N * K * D, 7);
  std::vector<double> px(N * K * D), uy(N * D, 0.0);
  permute<double>(x.data(), r, D, px.data());
  unpermute<double>(y.data(), r, N, D, uy.data());
  EXPECT_NEAR(dot(px, y), dot(x, uy), 1e-12 * (1 + std::fabs(dot(px, y))));
}

// Expert parallelism: slots whose expert lives in another process are marked -1; they get no
// row, and the scatter-add skips them.
TEST(Permute, SkipsSlotsServedElsewhere) {
  const int32_t idx[] = {1, -1, 0, 1, -1, -1};  // N=3 tokens, K=2
  auto r = route(idx, 3, 2, 2);
  EXPECT_EQ(r.row_token.size(), 3u);
  EXPECT_EQ(r.counts[0], 1);
  EXPECT_EQ(r.counts[1], 2);
  EXPECT_EQ(r.slot[1], -1);
  EXPECT_EQ(r.slot[4], -1);
  EXPECT_EQ(r.slot[5], -1);
  const double x[] = {1, 2, 3};  // D=1
  double rows[3], out[3] = {0, 0, 0};
  permute<double>(x, r, 1, rows);
  unpermute<double>(rows, r, 3, 1, out);
  EXPECT_EQ(out[0], 1.0);  // one local slot
  EXPECT_EQ(out[1], 4.0);  // two local slots
  EXPECT_EQ(out[2], 0.0);  // none
}

}  // namespace
}  // namespace moetron::kernels::cpu::testing
