// The CUDA expert-parallel wire ops against their CPU twins: the dispatch plan (counts with the
// nodes per token, slots, send order; bit for bit, and a bad expert id throwing
// std::out_of_range), the three row encodings byte for byte on unaligned rows (bytes outside the
// rows untouched), the decodes and the scatter-add in peer order, and the routes. Wire buffers
// start as the same byte pattern on both sides and are compared whole. Skipped without a GPU.
//
// Decoded rows are compared bit for bit (NaN signs included); the scatter-add's sums with any NaN
// equal to any NaN: a GPU sum with a NaN operand is the canonical NaN, where the CPU keeps the
// operand's payload and sign.
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "tests/test_cuda_util.h"

namespace moetron::kernels::gpu::testing {
namespace {

template <class T>
void expect_same_values(const std::vector<T>& gpu, const std::vector<T>& cpu,
                        const std::string& what) {
  ASSERT_EQ(gpu.size(), cpu.size()) << what;
  size_t bad = 0, first = 0;
  for (size_t i = 0; i < cpu.size(); ++i) {
    const bool same =
        std::memcmp(&gpu[i], &cpu[i], sizeof(T)) == 0 || (std::isnan(gpu[i]) && std::isnan(cpu[i]));
    if (!same && bad++ == 0) first = i;
  }
  EXPECT_EQ(bad, 0u) << what << ": " << bad << " of " << cpu.size() << " values differ; first ["
                     << first << "] gpu " << gpu[first] << " cpu " << cpu[first];
}

// idx [N, K]: K distinct experts of E per token.
std::vector<int32_t> random_routes(int64_t N, int64_t K, int64_t E, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> idx(N * K), all(E);
  for (int64_t n = 0; n < N; ++n) {
    std::iota(all.begin(), all.end(), 0);
    std::shuffle(all.begin(), all.end(), rng);
    for (int64_t k = 0; k < K; ++k) idx[n * K + k] = all[k];
  }
  return idx;
}

struct Plan {
  std::vector<int64_t> counts, slot, send_token;
  int64_t rows() const { return std::accumulate(counts.begin(), counts.end() - 1, int64_t{0}); }
};
Plan cpu_plan(const std::vector<int32_t>& idx, int64_t N, int64_t K, int64_t El, int64_t P,
              const std::vector<int32_t>& node) {
  Plan p;
  p.counts.resize(P + 1), p.slot.resize(N * P), p.send_token.resize(N * P);
  cpu::ep_dispatch_plan(idx.data(), N, K, El, P, node.data(), p.counts.data(), p.slot.data(),
                        p.send_token.data());
  return p;
}

void check_plan(int64_t N, int64_t K, int64_t El, int64_t P, const std::vector<int32_t>& node,
                uint64_t seed) {
  const std::string what =
      "plan N=" + std::to_string(N) + " K=" + std::to_string(K) + " P=" + std::to_string(P);
  const auto idx = random_routes(N, K, El * P, seed);
  const Plan want = cpu_plan(idx, N, K, El, P, node);
  Buffer<int32_t> di = dev(idx), dn = dev(node);
  Buffer<int64_t> dc = dev_garbage<int64_t>(P + 1), ds = dev_garbage<int64_t>(N * P),
                  dt = dev_garbage<int64_t>(N * P);
  kernels::ep_dispatch_plan(gpu_exec(), di.data(), N, K, El, P, dn.data(), dc.data(), ds.data(),
                            dt.data());
  expect_equal(host(dc, P + 1), want.counts, what + ": counts");
  expect_equal(host(ds, N * P), want.slot, what + ": slot");
  const int64_t rows = want.rows();
  expect_equal(host(dt, rows),
               std::vector<int64_t>(want.send_token.begin(), want.send_token.begin() + rows),
               what + ": send_token");
}

TEST(CudaEpWire, PlanMatchesTheCpu) {
  MOETRON_REQUIRE_GPU();
  const std::vector<int32_t> two_nodes = {0, 0, 1, 1};
  check_plan(41, 3, 2, 4, two_nodes, 1);
  check_plan(1, 3, 2, 4, two_nodes, 2);
  check_plan(1000, 3, 2, 4, two_nodes, 3);  // several chunks of tokens, a partial last one
  check_plan(1000, 1, 2, 4, two_nodes, 4);  // one node per token
  check_plan(300, 8, 2, 4, two_nodes, 5);   // every expert: all peers
  check_plan(40, 3, 2, 4, {0, 1, 0, 1}, 6);
  std::vector<int32_t> eight(64);
  for (int64_t p = 0; p < 64; ++p) eight[p] = static_cast<int32_t>(p / 8);
  check_plan(3000, 8, 4, 64, eight, 7);  // DeepSeek-V3-like: 256 experts on 64 peers, 8 nodes
  check_plan(0, 3, 2, 4, two_nodes, 8);  // no tokens: counts zero
}

TEST(CudaEpWire, PlanRejectsExpertIdsOutOfRange) {
  MOETRON_REQUIRE_GPU();
  const std::vector<int32_t> node = {0, 0, 1, 1};
  Buffer<int32_t> dn = dev(node);
  for (int32_t bad : {8, -1, 1000}) {  // P El = 8
    auto idx = random_routes(300, 3, 8, 9);
    idx[3 * 271 + 1] = bad;
    Buffer<int32_t> di = dev(idx);
    Buffer<int64_t> dc = dev_garbage<int64_t>(5), ds = dev_garbage<int64_t>(300 * 4),
                    dt = dev_garbage<int64_t>(300 * 4);
    EXPECT_THROW(kernels::ep_dispatch_plan(gpu_exec(), di.data(), 300, 3, 2, 4, dn.data(),
                                           dc.data(), ds.data(), dt.data()),
                 std::out_of_range)
        << bad;
    EXPECT_THROW(cpu_plan(idx, 300, 3, 2, 4, node), std::out_of_range);
    // with a flag: no throw and no wait; the flag counts the bad id, the rest is the CPU's plan
    Buffer<int64_t> dbad = dev_garbage<int64_t>(1);
    kernels::ep_dispatch_plan(gpu_exec(), di.data(), 300, 3, 2, 4, dn.data(), dc.data(), ds.data(),
                              dt.data(), dbad.data());
    std::vector<int64_t> counts(5), slot(300 * 4), send(300 * 4);
    int64_t want_bad = 0;
    cpu::ep_dispatch_plan(idx.data(), 300, 3, 2, 4, node.data(), counts.data(), slot.data(),
                          send.data(), &want_bad);
    EXPECT_EQ(want_bad, 1);
    EXPECT_EQ(host(dbad, 1), std::vector<int64_t>{want_bad}) << bad;
    expect_equal(host(dc, 5), counts, "counts with a bad id skipped");
    expect_equal(host(ds, 300 * 4), slot, "slots with a bad id skipped");
  }
  // the device and the stream are fine afterwards
  check_plan(41, 3, 2, 4, node, 10);
}

// Rows [rows, D] of floats with mixed magnitudes, a zero tile, and special values.
std::vector<float> wire_rows(int64_t rows, int64_t D, uint64_t seed) {
  std::vector<float> x = rand_vec<float>(rows * D, seed, -4, 4);
  for (int64_t i = 0; i < rows * D; i += 5) x[i] *= 1e-3f;
  for (int64_t i = 2; i < rows * D; i += 11) x[i] *= 300.f;  // saturates E4M3 in some tiles
  if (rows < 4 || D < 9) return x;
  if (D >= 128)
    for (int64_t d = 0; d < 128; ++d) x[D + d] = 0.f;  // row 1, tile 0: all zero (amax floor)
  x[3] = std::numeric_limits<float>::quiet_NaN();
  x[4] = -std::numeric_limits<float>::quiet_NaN();
  x[2 * D + 7] = std::numeric_limits<float>::infinity();
  x[2 * D + 8] = -std::numeric_limits<float>::infinity();
  x[3 * D + 1] = 1e-30f;  // tiny: E4M3 subnormal / zero
  return x;
}

template <class T>
void check_encode_decode(RowEncoding e, int64_t rows, int64_t D, bool gather, uint64_t seed) {
  const std::string what = "encoding " + std::to_string(int(e)) +
                           " T=" + std::to_string(sizeof(T)) + " D=" + std::to_string(D) +
                           (gather ? " gathered" : "");
  std::vector<T> x;
  if constexpr (std::is_same_v<T, float>) {
    x = wire_rows(rows, D, seed);
  } else {
    x = rand_vec<T>(rows * D, seed);
    x[1] = std::numeric_limits<T>::quiet_NaN();
  }
  std::vector<int64_t> gidx;
  int64_t n = rows;
  if (gather) {
    std::mt19937_64 rng(seed + 1);
    n = rows + 3;
    for (int64_t i = 0; i < n; ++i) gidx.push_back(static_cast<int64_t>(rng() % rows));
  }
  const int64_t A = row_encoding_bytes(e, D, sizeof(T)), stride = A + 13;  // unaligned rows
  std::vector<uint8_t> wire(n * stride, 0xAB);
  cpu::ep_encode_rows<T>(e, x.data(), gather ? gidx.data() : nullptr, n, D, wire.data(), stride);
  Buffer<T> dx = dev(x);
  Buffer<int64_t> dg = dev(gather ? gidx : std::vector<int64_t>{0});
  Buffer<uint8_t> dw = dev(std::vector<uint8_t>(n * stride, 0xAB));
  kernels::ep_encode_rows<T>(gpu_exec(), e, dx.data(), gather ? dg.data() : nullptr, n, D,
                             dw.data(), stride);
  expect_equal(host(dw, n * stride), wire, what + ": wire bytes");
  // decode the CPU's bytes on the GPU (rows start at odd offsets: wire + 1)
  std::vector<T> back(n * D);
  cpu::ep_decode_rows<T>(e, wire.data(), stride, n, D, back.data());
  std::vector<uint8_t> shifted(n * stride + 1, 0);
  std::memcpy(shifted.data() + 1, wire.data(), wire.size());
  Buffer<uint8_t> dsh = dev(shifted);
  Buffer<T> dback = dev_garbage<T>(n * D);
  kernels::ep_decode_rows<T>(gpu_exec(), e, dsh.data() + 1, stride, n, D, dback.data());
  expect_equal(host(dback, n * D), back, what + ": decoded");
}
TEST(CudaEpWire, EncodeAndDecodeMatchTheCpuByteForByte) {
  MOETRON_REQUIRE_GPU();
  for (RowEncoding e : {RowEncoding::Native, RowEncoding::BF16, RowEncoding::FP8}) {
    for (bool gather : {false, true}) {
      check_encode_decode<float>(e, 9, 301, gather, 1);   // D odd: 3 scale tiles, one partial
      check_encode_decode<float>(e, 6, 7168, gather, 2);  // DeepSeek-V3's hidden size
      check_encode_decode<float>(e, 5, 37, gather, 3);    // one partial tile only
      check_encode_decode<float>(e, 300, 128, gather, 4);
    }
  }
  check_encode_decode<double>(RowEncoding::Native, 9, 301, false, 5);
  check_encode_decode<double>(RowEncoding::Native, 9, 301, true, 6);
}

TEST(CudaEpWire, NarrowEncodingsNeedFloat) {
  MOETRON_REQUIRE_GPU();
  Buffer<double> dx = dev(std::vector<double>(8, 1.0));
  Buffer<uint8_t> dw = dev(std::vector<uint8_t>(64, 0));
  EXPECT_THROW(kernels::ep_encode_rows<double>(gpu_exec(), RowEncoding::BF16, dx.data(), nullptr, 2,
                                               4, dw.data(), 8),
               std::invalid_argument);
  EXPECT_THROW(
      kernels::ep_decode_rows<double>(gpu_exec(), RowEncoding::FP8, dw.data(), 8, 2, 4, dx.data()),
      std::invalid_argument);
  Buffer<int64_t> ds = dev(std::vector<int64_t>{0, -1});
  EXPECT_THROW(kernels::ep_decode_add_rows<double>(gpu_exec(), RowEncoding::BF16, dw.data(), 8,
                                                   ds.data(), 1, 2, 4, dx.data()),
               std::invalid_argument);
}

template <class T>
void check_decode_add(RowEncoding e, int64_t N, int64_t D, uint64_t seed) {
  const std::string what = "decode_add encoding " + std::to_string(int(e)) +
                           " T=" + std::to_string(sizeof(T)) + " D=" + std::to_string(D);
  const int64_t K = 3, El = 2, P = 4;
  const auto idx = random_routes(N, K, El * P, seed);
  const Plan plan = cpu_plan(idx, N, K, El, P, {0, 0, 1, 1});
  const int64_t rows = plan.rows();
  std::vector<T> src;
  if constexpr (std::is_same_v<T, float>)
    src = wire_rows(rows, D, seed + 1);
  else
    src = rand_vec<T>(rows * D, seed + 1);
  const int64_t stride = row_encoding_bytes(e, D, sizeof(T)) + 3;
  std::vector<uint8_t> wire(rows * stride, 0);
  cpu::ep_encode_rows<T>(e, src.data(), nullptr, rows, D, wire.data(), stride);
  const auto init = rand_vec<T>(N * D, seed + 2);
  std::vector<T> out = init;
  cpu::ep_decode_add_rows<T>(e, wire.data(), stride, plan.slot.data(), N, P, D, out.data());
  Buffer<uint8_t> dw = dev(wire);
  Buffer<int64_t> ds = dev(plan.slot);
  Buffer<T> dout = dev(init);
  kernels::ep_decode_add_rows<T>(gpu_exec(), e, dw.data(), stride, ds.data(), N, P, D, dout.data());
  expect_same_values(host(dout, N * D), out, what);
}
TEST(CudaEpWire, DecodeAddIsTheCpusScatterAddInPeerOrder) {
  MOETRON_REQUIRE_GPU();
  for (RowEncoding e : {RowEncoding::Native, RowEncoding::BF16, RowEncoding::FP8}) {
    check_decode_add<float>(e, 23, 130, 1);
    check_decode_add<float>(e, 300, 257, 2);
  }
  check_decode_add<double>(RowEncoding::Native, 23, 130, 3);
  check_decode_add<double>(RowEncoding::Native, 300, 257, 4);
}

template <class T>
void check_routes(int64_t N, int64_t K, uint64_t seed) {
  const std::string what = "routes T=" + std::to_string(sizeof(T)) + " N=" + std::to_string(N);
  const int64_t El = 2, P = 4;
  const auto idx = random_routes(N, K, El * P, seed);
  const auto w = rand_vec<T>(N * K, seed + 1, 0, 1);
  const Plan plan = cpu_plan(idx, N, K, El, P, {0, 0, 1, 1});
  const int64_t rows = plan.rows();
  const int64_t A = 5, stride = A + 2 * K * static_cast<int64_t>(sizeof(T)) + 3;  // after 5 bytes
  std::vector<uint8_t> wire(rows * stride, 0xCD);
  cpu::ep_pack_routes<T>(idx.data(), w.data(), plan.slot.data(), N, K, P, El, wire.data() + A,
                         stride);
  Buffer<int32_t> di = dev(idx);
  Buffer<T> dwt = dev(w);
  Buffer<int64_t> ds = dev(plan.slot);
  Buffer<uint8_t> dw = dev(std::vector<uint8_t>(rows * stride, 0xCD));
  kernels::ep_pack_routes<T>(gpu_exec(), di.data(), dwt.data(), ds.data(), N, K, P, El,
                             dw.data() + A, stride);
  expect_equal(host(dw, rows * stride), wire, what + ": packed bytes");
  std::vector<int32_t> ridx(rows * K);
  std::vector<T> rw(rows * K);
  cpu::ep_unpack_routes<T>(wire.data() + A, stride, rows, K, ridx.data(), rw.data());
  Buffer<uint8_t> dcw = dev(wire);
  Buffer<int32_t> dri = dev_garbage<int32_t>(rows * K);
  Buffer<T> drw = dev_garbage<T>(rows * K);
  kernels::ep_unpack_routes<T>(gpu_exec(), dcw.data() + A, stride, rows, K, dri.data(), drw.data());
  expect_equal(host(dri, rows * K), ridx, what + ": unpacked ids");
  expect_equal(host(drw, rows * K), rw, what + ": unpacked weights");
}
TEST(CudaEpWire, RoutesPackAndUnpackLikeTheCpu) {
  MOETRON_REQUIRE_GPU();
  for (int64_t N : {17, 1000}) {
    check_routes<float>(N, 3, 21 + N);
    check_routes<double>(N, 3, 22 + N);
    check_routes<float>(N, 8, 23 + N);
  }
}

}  // namespace
}  // namespace moetron::kernels::gpu::testing
