// Expert-parallel wire ops (kernels/cpu/ep_wire.cpp) against plain references: the dispatch plan
// (rows grouped by peer, tokens in order inside a peer, nodes per token), the row encodings byte
// for byte (Native copies, bf16 bit patterns, E4M3 codes followed by the quantiser's pow2 scales)
// on unaligned rows, the scatter-add in peer order, and the routes that travel exactly.
#include <cstring>
#include <numeric>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"
#include "tests/test_kernels_util.h"

namespace moetron::kernels::cpu::testing {
namespace {

struct Plan {
  std::vector<int64_t> counts, slot, send_token;
};
Plan plan(const std::vector<int32_t>& idx, int64_t N, int64_t K, int64_t El, int64_t P,
          const std::vector<int32_t>& node) {
  Plan p;
  p.counts.resize(P + 1), p.slot.resize(N * P), p.send_token.resize(N * P);
  ep_dispatch_plan(idx.data(), N, K, El, P, node.data(), p.counts.data(), p.slot.data(),
                   p.send_token.data());
  return p;
}

TEST(EpWire, PlanGroupsRowsByPeerInTokenOrder) {
  const int64_t N = 41, K = 3, El = 2, P = 4;
  const auto idx = random_routes(N, K, El * P, 7);
  const std::vector<int32_t> node = {0, 0, 1, 1};  // two peers per node
  const Plan p = plan(idx, N, K, El, P, node);
  // reference: walk peers in order, and inside a peer the tokens with an expert there
  int64_t row = 0, max_nodes = 0;
  for (int64_t q = 0; q < P; ++q) {
    int64_t c = 0;
    for (int64_t n = 0; n < N; ++n) {
      bool there = false;
      for (int64_t k = 0; k < K; ++k) there |= idx[n * K + k] / El == q;
      if (!there) {
        EXPECT_EQ(p.slot[n * P + q], -1);
        continue;
      }
      EXPECT_EQ(p.slot[n * P + q], row);
      EXPECT_EQ(p.send_token[row], n);
      ++row, ++c;
    }
    EXPECT_EQ(p.counts[q], c);
  }
  for (int64_t n = 0; n < N; ++n) {
    bool on[2] = {false, false};
    for (int64_t k = 0; k < K; ++k) on[node[idx[n * K + k] / El]] = true;
    max_nodes = std::max<int64_t>(max_nodes, int64_t{on[0]} + int64_t{on[1]});
  }
  EXPECT_EQ(p.counts[P], max_nodes);
  EXPECT_EQ(max_nodes, 2);  // 3 of 8 experts: some token reaches both nodes
}

TEST(EpWire, PlanCountsNodesAndRejectsBadIds) {
  // N=3, K=2, El=1, P=3, every peer on its own node: tokens reach 2, 1 (both on peer 1), 2 nodes
  const std::vector<int32_t> idx = {0, 2, 1, 1, 2, 0};
  const Plan p = plan(idx, 3, 2, 1, 3, {0, 1, 2});
  EXPECT_EQ(p.counts, (std::vector<int64_t>{2, 1, 2, 2}));
  EXPECT_EQ(p.slot, (std::vector<int64_t>{0, -1, 3, -1, 2, -1, 1, -1, 4}));
  EXPECT_EQ(std::vector<int64_t>(p.send_token.begin(), p.send_token.begin() + 5),
            (std::vector<int64_t>{0, 2, 1, 0, 2}));
  // all peers on one node: one node per token; no tokens: 0
  EXPECT_EQ(plan(idx, 3, 2, 1, 3, {0, 0, 0}).counts[3], 1);
  EXPECT_EQ(plan(idx, 0, 2, 1, 3, {0, 0, 0}).counts, (std::vector<int64_t>{0, 0, 0, 0}));
  EXPECT_THROW(plan({0, 3}, 1, 2, 1, 3, {0, 0, 0}), std::out_of_range);
  EXPECT_THROW(plan({-1, 0}, 1, 2, 1, 3, {0, 0, 0}), std::out_of_range);
  // given a flag, bad ids are counted and skipped instead (the caller reads it with the counts)
  const std::vector<int32_t> with_bad = {0, 3, -1, 1};  // token 0: peer 0; token 1: peer 1
  std::vector<int64_t> counts(4), slot(9), send(9);
  const std::vector<int32_t> node = {0, 1, 2};
  int64_t bad = -7;
  ep_dispatch_plan(with_bad.data(), 2, 2, 1, 3, node.data(), counts.data(), slot.data(),
                   send.data(), &bad);
  EXPECT_EQ(bad, 2);
  EXPECT_EQ(counts, (std::vector<int64_t>{1, 1, 0, 1}));
  EXPECT_EQ(std::vector<int64_t>(slot.begin(), slot.begin() + 6),
            (std::vector<int64_t>{0, -1, -1, -1, 1, -1}));
  ep_dispatch_plan(idx.data(), 3, 2, 1, 3, node.data(), counts.data(), slot.data(), send.data(),
                   &bad);
  EXPECT_EQ(bad, 0);
  EXPECT_EQ(counts, p.counts);
}

// The reference encoding of one row of floats, byte for byte.
std::vector<uint8_t> ref_encode(RowEncoding e, const float* x, int64_t D) {
  std::vector<uint8_t> out(row_encoding_bytes(e, D, 4));
  if (e == RowEncoding::Native) {
    std::memcpy(out.data(), x, 4 * D);
  } else if (e == RowEncoding::BF16) {
    for (int64_t i = 0; i < D; ++i) {
      const uint16_t h = f32_to_bf16(x[i]);
      std::memcpy(out.data() + 2 * i, &h, 2);
    }
  } else {
    std::vector<float> s((D + 127) / 128);
    quantize(x, 1, D, kTile1x128, /*pow2=*/true, out.data(), s.data());
    std::memcpy(out.data() + D, s.data(), 4 * s.size());
  }
  return out;
}
std::vector<float> ref_decode(RowEncoding e, const float* x, int64_t D) {
  std::vector<float> out(x, x + D);
  if (e == RowEncoding::BF16) {
    for (float& v : out) v = round_bf16(v);
  } else if (e == RowEncoding::FP8) {
    std::vector<uint8_t> q(D);
    std::vector<float> s((D + 127) / 128);
    quantize(x, 1, D, kTile1x128, true, q.data(), s.data());
    dequantize(q.data(), s.data(), 1, D, kTile1x128, out.data());
  }
  return out;
}

TEST(EpWire, RowBytesOfEachEncoding) {
  EXPECT_EQ(row_encoding_bytes(RowEncoding::Native, 200, 4), 800);
  EXPECT_EQ(row_encoding_bytes(RowEncoding::Native, 200, 8), 1600);
  EXPECT_EQ(row_encoding_bytes(RowEncoding::BF16, 200, 4), 400);
  EXPECT_EQ(row_encoding_bytes(RowEncoding::FP8, 200, 4), 200 + 4 * 2);
  EXPECT_EQ(row_encoding_bytes(RowEncoding::FP8, 7168, 4), 7168 + 4 * 56);
}

TEST(EpWire, EncodeGathersRowsAndMatchesTheReferenceBytes) {
  const int64_t rows = 9, D = 301, n = 6;  // D odd: rows unaligned; 3 scale blocks, one partial
  std::vector<float> x = cast<float>(rand_vec(rows * D, 3, -4, 4));
  for (int64_t i = 0; i < rows * D; i += 5) x[i] *= 1e-3f;  // mixed magnitudes
  const std::vector<int64_t> gather = {4, 0, 8, 4, 2, 7};
  for (RowEncoding e : {RowEncoding::Native, RowEncoding::BF16, RowEncoding::FP8}) {
    const int64_t A = row_encoding_bytes(e, D, 4), stride = A + 13;
    std::vector<uint8_t> wire(n * stride, 0xAB);
    ep_encode_rows<float>(e, x.data(), gather.data(), n, D, wire.data(), stride);
    for (int64_t i = 0; i < n; ++i) {
      const auto want = ref_encode(e, x.data() + gather[i] * D, D);
      ASSERT_EQ(0, std::memcmp(wire.data() + i * stride, want.data(), A)) << int(e) << " " << i;
      for (int64_t b = A; b < stride; ++b) ASSERT_EQ(wire[i * stride + b], 0xAB);  // untouched
    }
    // decode: the reference rounding of each gathered row, bit for bit
    std::vector<float> back(n * D);
    ep_decode_rows<float>(e, wire.data(), stride, n, D, back.data());
    for (int64_t i = 0; i < n; ++i) {
      const auto want = ref_decode(e, x.data() + gather[i] * D, D);
      for (int64_t d = 0; d < D; ++d) ASSERT_EQ(back[i * D + d], want[d]) << int(e) << " " << i;
    }
  }
  // no gather index: row i is src row i
  std::vector<uint8_t> wire(rows * D * 4);
  ep_encode_rows<float>(RowEncoding::Native, x.data(), nullptr, rows, D, wire.data(), D * 4);
  EXPECT_EQ(0, std::memcmp(wire.data(), x.data(), wire.size()));
}

TEST(EpWire, NativeDoubleRoundTripsAndNarrowEncodingsNeedFloat) {
  const int64_t n = 5, D = 7;
  const std::vector<double> x = rand_vec(n * D, 4);
  std::vector<uint8_t> wire(n * (8 * D + 3));
  ep_encode_rows<double>(RowEncoding::Native, x.data(), nullptr, n, D, wire.data(), 8 * D + 3);
  std::vector<double> back(n * D);
  ep_decode_rows<double>(RowEncoding::Native, wire.data(), 8 * D + 3, n, D, back.data());
  EXPECT_EQ(back, x);
  EXPECT_THROW(
      ep_encode_rows<double>(RowEncoding::BF16, x.data(), nullptr, n, D, wire.data(), 2 * D),
      std::invalid_argument);
  EXPECT_THROW(ep_decode_rows<double>(RowEncoding::FP8, wire.data(), D + 4, n, D, back.data()),
               std::invalid_argument);
}

// The scatter-add equals one pass over the rows in send order (grouped by peer), each decoded
// and added into its origin token: the same fp32 sums, bit for bit.
template <class T>
void check_decode_add(RowEncoding e) {
  const int64_t N = 23, K = 2, El = 3, P = 3, D = 130;
  const auto idx = random_routes(N, K, El * P, 11);
  const Plan p = plan(idx, N, K, El, P, {0, 1, 2});
  const int64_t rows = p.counts[0] + p.counts[1] + p.counts[2];
  const std::vector<T> src = cast<T>(rand_vec(rows * D, 12));
  const int64_t stride = row_encoding_bytes(e, D, sizeof(T)) + 3;
  std::vector<uint8_t> wire(rows * stride);
  ep_encode_rows<T>(e, src.data(), nullptr, rows, D, wire.data(), stride);
  const std::vector<T> init = cast<T>(rand_vec(N * D, 13));
  std::vector<T> got = init, want = init, row(D);
  ep_decode_add_rows<T>(e, wire.data(), stride, p.slot.data(), N, P, D, got.data());
  for (int64_t r = 0; r < rows; ++r) {
    ep_decode_rows<T>(e, wire.data() + r * stride, stride, 1, D, row.data());
    for (int64_t d = 0; d < D; ++d) want[p.send_token[r] * D + d] += row[d];
  }
  EXPECT_EQ(got, want);
}
TEST(EpWire, DecodeAddIsTheScatterAddInPeerOrder) {
  check_decode_add<float>(RowEncoding::Native);
  check_decode_add<float>(RowEncoding::BF16);
  check_decode_add<float>(RowEncoding::FP8);
  check_decode_add<double>(RowEncoding::Native);
}

template <class T>
void check_routes() {
  const int64_t N = 17, K = 3, El = 2, P = 4;
  const auto idx = random_routes(N, K, El * P, 21);
  const std::vector<T> w = cast<T>(rand_vec(N * K, 22, 0, 1));
  const Plan p = plan(idx, N, K, El, P, {0, 0, 0, 0});
  const int64_t rows = p.counts[0] + p.counts[1] + p.counts[2] + p.counts[3];
  const int64_t A = 5, stride = A + 2 * K * static_cast<int64_t>(sizeof(T));  // after 5 bytes
  std::vector<uint8_t> wire(rows * stride, 0xCD);
  ep_pack_routes<T>(idx.data(), w.data(), p.slot.data(), N, K, P, El, wire.data() + A, stride);
  std::vector<int32_t> ridx(rows * K);
  std::vector<T> rw(rows * K);
  ep_unpack_routes<T>(wire.data() + A, stride, rows, K, ridx.data(), rw.data());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t q = 0; q < P; ++q) {
      const int64_t r = p.slot[n * P + q];
      if (r < 0) continue;
      for (int64_t a = 0; a < A; ++a) ASSERT_EQ(wire[r * stride + a], 0xCD);
      for (int64_t k = 0; k < K; ++k) {
        const int32_t e = idx[n * K + k];
        EXPECT_EQ(ridx[r * K + k], e / El == q ? e - q * El : -1);
        EXPECT_EQ(rw[r * K + k], e / El == q ? w[n * K + k] : T(0));
      }
    }
}
TEST(EpWire, RoutesTravelExactlyAsLocalIdsAndWeights) {
  check_routes<float>();
  check_routes<double>();
}

}  // namespace
}  // namespace moetron::kernels::cpu::testing
