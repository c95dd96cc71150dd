// The CUDA MoE routing ops against their CPU twins: the gate (DeepSeek-V3's group-limited top-k
// and a small plain one; inputs without near-ties so an ulp of sigmoid cannot change the choice,
// and rows of exact ties to check that ties go to the lower index), its backward, the sequence
// balance loss (f bit for bit, the loss to 1e-13: summed by chunks of positions) and its backward,
// the expert histogram, the bias update, the stable routing table, the gather and the scatter-add
// (bit for bit). Outputs start as NaN / 0xff garbage, so an element an op fails to write is caught.
// Skipped without a GPU.
#include <algorithm>
#include <cmath>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "tests/test_cuda_util.h"

namespace moetron::kernels::gpu::testing {
namespace {

GateParams v3_params() {  // DeepSeek-V3: 256 experts, top-8 from 4 of 8 groups, scale 2.5
  GateParams p;
  p.n_experts = 256, p.topk = 8, p.n_group = 8, p.topk_group = 4, p.route_scale = 2.5;
  return p;
}
GateParams small_params() {
  GateParams p;
  p.n_experts = 8, p.topk = 2, p.n_group = 1, p.topk_group = 1, p.route_scale = 1.0;
  return p;
}

template <class T>
double rtol_of() {
  return std::is_same_v<T, float> ? 1e-6 : 1e-12;
}

// The biased scores (in double) and the group scores of one token are pairwise at least `gap`
// apart, so a one-ulp difference in the sigmoid cannot change the selection.
template <class T>
bool well_separated(const T* lg, const std::vector<T>& bias, const GateParams& p, double gap) {
  const int64_t E = p.n_experts, G = p.n_group, gs = E / G;
  std::vector<double> sb(E);
  for (int64_t e = 0; e < E; ++e)
    sb[e] = 1.0 / (1.0 + std::exp(-static_cast<double>(lg[e]))) +
            (bias.empty() ? 0.0 : static_cast<double>(bias[e]));
  auto separated = [gap](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    for (size_t i = 1; i < v.size(); ++i)
      if (v[i] - v[i - 1] < gap) return false;
    return true;
  };
  if (!separated(sb)) return false;
  if (G == 1) return true;
  std::vector<double> gscore(G);
  for (int64_t g = 0; g < G; ++g) {
    std::vector<double> v(sb.begin() + g * gs, sb.begin() + (g + 1) * gs);
    std::sort(v.begin(), v.end(), std::greater<double>());
    for (int64_t j = 0; j < p.topk / p.topk_group; ++j) gscore[g] += v[j];
  }
  return separated(gscore);
}

// Random logits [N, E] in [-4, 4], each token redrawn until well separated with the bias (and,
// with `both`, also without it).
template <class T>
std::vector<T> separated_logits(int64_t N, const GateParams& p, const std::vector<T>& bias,
                                uint64_t seed, bool both = false) {
  const int64_t E = p.n_experts;
  std::vector<T> lg(N * E);
  std::mt19937_64 rng(seed);
  std::uniform_real_distribution<double> u(-4.0, 4.0);
  for (int64_t n = 0; n < N; ++n) {
    int tries = 0;
    do {
      for (int64_t e = 0; e < E; ++e) lg[n * E + e] = static_cast<T>(u(rng));
      if (++tries > 1000) throw std::runtime_error("cannot draw separated logits");
    } while (!well_separated(lg.data() + n * E, bias, p, 2e-6) ||
             (both && !well_separated(lg.data() + n * E, std::vector<T>{}, p, 2e-6)));
  }
  return lg;
}

// Bias [E]: fp32-valued, in [-0.05, 0.05].
template <class T>
std::vector<T> gate_bias(int64_t E, uint64_t seed) {
  std::vector<T> b(E);
  const auto r = rand_vec<float>(E, seed, -0.05, 0.05);
  for (int64_t e = 0; e < E; ++e) b[e] = static_cast<T>(r[e]);
  return b;
}

// gate_forward on both devices from the same logits and bias (empty: none); idx bitwise, scores
// and weights to rtol. Returns the CPU's results for the backward.
template <class T>
void compare_gate_forward(const std::vector<T>& lg, const std::vector<T>& bias, int64_t N,
                          const GateParams& p, const std::string& what) {
  const int64_t E = p.n_experts, K = p.topk;
  std::vector<T> s(N * E), w(N * K);
  std::vector<int32_t> idx(N * K);
  cpu::gate_forward<T>(lg.data(), bias.empty() ? nullptr : bias.data(), N, p, s.data(), idx.data(),
                       w.data());
  Buffer<T> dlg = dev(lg), db = dev(bias.empty() ? std::vector<T>{T(0)} : bias);
  Buffer<T> ds = dev_garbage<T>(N * E), dw = dev_garbage<T>(N * K);
  Buffer<int32_t> di = dev_garbage<int32_t>(N * K);
  kernels::gate_forward<T>(gpu_exec(), dlg.data(), bias.empty() ? nullptr : db.data(), N, p,
                           ds.data(), di.data(), dw.data());
  expect_equal(host(di, N * K), idx, what + ": idx");
  expect_near_rel(host(ds, N * E), s, rtol_of<T>(), what + ": scores");
  expect_near_rel(host(dw, N * K), w, rtol_of<T>(), what + ": weights");
}

template <class T>
void check_gate_forward_random() {
  {
    const GateParams p = v3_params();
    for (int64_t N : {1, 67, 1000}) {
      const auto bias = gate_bias<T>(p.n_experts, 10 + N);
      const auto lg = separated_logits<T>(N, p, bias, 20 + N);
      compare_gate_forward<T>(lg, bias, N, p, "v3 N=" + std::to_string(N));
      const auto lg0 = separated_logits<T>(N, p, {}, 30 + N);
      compare_gate_forward<T>(lg0, {}, N, p, "v3 no bias N=" + std::to_string(N));
    }
  }
  {
    const GateParams p = small_params();
    for (int64_t N : {1, 33, 513}) {
      const auto bias = gate_bias<T>(p.n_experts, 40 + N);
      const auto lg = separated_logits<T>(N, p, bias, 50 + N);
      compare_gate_forward<T>(lg, bias, N, p, "small N=" + std::to_string(N));
      const auto lg0 = separated_logits<T>(N, p, {}, 60 + N);
      compare_gate_forward<T>(lg0, {}, N, p, "small no bias N=" + std::to_string(N));
    }
  }
}
TEST(CudaGate, ForwardMatchesTheCpuOnV3AndSmallParams) {
  MOETRON_REQUIRE_GPU();
  check_gate_forward_random<float>();
  check_gate_forward_random<double>();
}

// Exact ties built from identical logits (identical sigmoids on either device): ties must go to
// the lower expert (and group) index, as on the CPU.
template <class T>
void check_gate_ties() {
  {  // small: logits and bias from a few values (their sums well apart), many exact ties
    const GateParams p = small_params();
    const int64_t N = 200, E = p.n_experts;
    const T lv[4] = {T(-1.3), T(0), T(0.7), T(1.9)};
    const T bv[3] = {T(0), T(0.25), T(-0.125)};
    std::mt19937_64 rng(5);
    std::vector<T> lg(N * E), bias(E);
    for (T& x : lg) x = lv[rng() % 4];
    for (T& x : bias) x = bv[rng() % 3];
    compare_gate_forward<T>(lg, bias, N, p, "small ties");
    compare_gate_forward<T>(lg, {}, N, p, "small ties, no bias");
    // one all-equal row: experts 0, 1
    std::vector<T> same(E, T(0.3));
    std::vector<int32_t> idx(2);
    Buffer<T> dl = dev(same), ds = dev_garbage<T>(E), dw = dev_garbage<T>(2);
    Buffer<int32_t> di = dev_garbage<int32_t>(2);
    kernels::gate_forward<T>(gpu_exec(), dl.data(), nullptr, 1, p, ds.data(), di.data(), dw.data());
    EXPECT_EQ(host(di, 2), (std::vector<int32_t>{0, 1}));
  }
  {  // V3: every group holds the same 32 values (group scores tie exactly), bias periodic too
    const GateParams p = v3_params();
    const int64_t N = 64, E = p.n_experts;
    // 8 values, separated with and without the bias, repeated: 4 copies in each group of 32
    std::vector<T> lg(N * E), bias(E);
    const auto pat_b = gate_bias<T>(8, 6);
    for (int64_t e = 0; e < E; ++e) bias[e] = pat_b[e % 8];
    for (int64_t n = 0; n < N; ++n) {
      const auto pat = separated_logits<T>(1, small_params(), pat_b, 100 + n, true);
      for (int64_t e = 0; e < E; ++e) lg[n * E + e] = pat[e % 8];
    }
    compare_gate_forward<T>(lg, bias, N, p, "v3 ties");
    compare_gate_forward<T>(lg, {}, N, p, "v3 ties, no bias");
    // all equal: groups 0..3 kept, experts 0..7
    std::vector<T> same(E, T(-0.2));
    Buffer<T> dl = dev(same), ds = dev_garbage<T>(E), dw = dev_garbage<T>(8);
    Buffer<int32_t> di = dev_garbage<int32_t>(8);
    kernels::gate_forward<T>(gpu_exec(), dl.data(), nullptr, 1, p, ds.data(), di.data(), dw.data());
    EXPECT_EQ(host(di, 8), (std::vector<int32_t>{0, 1, 2, 3, 4, 5, 6, 7}));
    const auto w = host(dw, 8);
    for (T x : w) EXPECT_NEAR(static_cast<double>(x), 2.5 / 8, 1e-6);
  }
}
TEST(CudaGate, ExactTiesGoToTheLowerIndex) {
  MOETRON_REQUIRE_GPU();
  check_gate_ties<float>();
  check_gate_ties<double>();
}

TEST(CudaGate, BadParamsThrowLikeTheCpu) {
  MOETRON_REQUIRE_GPU();
  GateParams p = v3_params();
  p.topk_group = 3;  // does not divide topk
  EXPECT_THROW(
      kernels::gate_forward<float>(gpu_exec(), nullptr, nullptr, 1, p, nullptr, nullptr, nullptr),
      std::invalid_argument);
}

template <class T>
void check_gate_backward(const GateParams& p, int64_t N, uint64_t seed) {
  const int64_t E = p.n_experts, K = p.topk;
  const auto bias = gate_bias<T>(E, seed);
  const auto lg = separated_logits<T>(N, p, bias, seed + 1);
  std::vector<T> s(N * E), w(N * K), dl(N * E);
  std::vector<int32_t> idx(N * K);
  cpu::gate_forward<T>(lg.data(), bias.data(), N, p, s.data(), idx.data(), w.data());
  const auto dwt = rand_vec<T>(N * K, seed + 2);
  cpu::gate_backward<T>(dwt.data(), s.data(), idx.data(), w.data(), N, p, dl.data());
  Buffer<T> ddw = dev(dwt), ds = dev(s), dw = dev(w), ddl = dev_garbage<T>(N * E);
  Buffer<int32_t> di = dev(idx);
  kernels::gate_backward<T>(gpu_exec(), ddw.data(), ds.data(), di.data(), dw.data(), N, p,
                            ddl.data());
  // FMA contraction of the dot product may move the last bit
  expect_near_rel(host(ddl, N * E), dl, std::is_same_v<T, float> ? 1e-5 : 1e-12,
                  "gate_backward E=" + std::to_string(E) + " N=" + std::to_string(N));
}
TEST(CudaGate, BackwardMatchesTheCpu) {
  MOETRON_REQUIRE_GPU();
  for (int64_t N : {1, 67, 1000}) {
    check_gate_backward<float>(v3_params(), N, 70 + N);
    check_gate_backward<double>(v3_params(), N, 80 + N);
    check_gate_backward<float>(small_params(), N, 90 + N);
    check_gate_backward<double>(small_params(), N, 100 + N);
  }
}

// ---- balance ---------------------------------------------------------------------------------

// Scores [B*S, E]: sigmoids of random logits, or (ties) a few values only.
template <class T>
std::vector<T> balance_scores(int64_t n, uint64_t seed, bool ties) {
  std::vector<T> s = rand_vec<T>(n, seed, -4, 4);
  const T few[4] = {T(0.125), T(0.375), T(0.5), T(0.875)};
  for (size_t i = 0; i < s.size(); ++i)
    s[i] = ties ? few[static_cast<size_t>(std::fabs(s[i]) * 100) % 4]
                : T(1) / (T(1) + std::exp(-s[i]));
  return s;
}

template <class T>
void check_balance(int64_t B, int64_t S, int64_t E, int64_t K, bool ties, uint64_t seed,
                   int64_t tail = 0) {
  const int64_t V = S - tail;  // the positions that count (MTP depth k: S - k)
  const std::string what = "balance B=" + std::to_string(B) + " S=" + std::to_string(S) +
                           " V=" + std::to_string(V) + " E=" + std::to_string(E) +
                           (ties ? " ties" : "");
  const auto s = balance_scores<T>(B * S * E, seed, ties);
  const double alpha = 1e-4;
  std::vector<T> f(B * E);
  double loss = 0;
  cpu::seq_balance_loss_forward<T>(s.data(), B, S, V, E, K, alpha, f.data(), &loss);
  Buffer<T> ds = dev(s), df = dev_garbage<T>(B * E);
  Buffer<double> dloss = dev_garbage<double>(1);
  kernels::seq_balance_loss_forward<T>(gpu_exec(), ds.data(), B, S, V, E, K, alpha, df.data(),
                                       dloss.data());
  expect_equal(host(df, B * E), f, what + ": f");  // counts times one scale: exact
  const double got = host(dloss, 1)[0];
  EXPECT_NEAR(got, loss, 1e-13 * std::fabs(loss)) << what << ": loss";
  // deterministic: a second run gives the same bits
  kernels::seq_balance_loss_forward<T>(gpu_exec(), ds.data(), B, S, V, E, K, alpha, df.data(),
                                       dloss.data());
  expect_equal(host(dloss, 1), std::vector<double>{got}, what + ": loss rerun");

  // backward: accumulates into dlogits
  const double c = alpha / B * 3.0;
  const auto init = rand_vec<T>(B * S * E, seed + 1);
  std::vector<T> dl = init;
  cpu::seq_balance_loss_backward<T>(s.data(), f.data(), B, S, V, E, c, dl.data());
  Buffer<T> ddl = dev(init);
  kernels::seq_balance_loss_backward<T>(gpu_exec(), ds.data(), df.data(), B, S, V, E, c,
                                        ddl.data());
  expect_near_rel(host(ddl, B * S * E), dl, std::is_same_v<T, float> ? 1e-6 : 1e-12,
                  what + ": backward");
  // the gradient alone (zero init), so that the accumulation's scale does not hide it
  std::vector<T> g(B * S * E, T(0));
  cpu::seq_balance_loss_backward<T>(s.data(), f.data(), B, S, V, E, c, g.data());
  Buffer<T> dg = dev(std::vector<T>(B * S * E, T(0)));
  kernels::seq_balance_loss_backward<T>(gpu_exec(), ds.data(), df.data(), B, S, V, E, c, dg.data());
  expect_near_rel(host(dg, B * S * E), g, std::is_same_v<T, float> ? 1e-5 : 1e-12,
                  what + ": gradient");
}
TEST(CudaBalance, SeqBalanceLossMatchesTheCpu) {
  MOETRON_REQUIRE_GPU();
  for (bool ties : {false, true}) {
    check_balance<float>(3, 37, 8, 2, ties, 1);
    check_balance<double>(3, 37, 8, 2, ties, 2);
    check_balance<float>(2, 300, 256, 8, ties, 3);
    check_balance<double>(2, 300, 256, 8, ties, 4);
    check_balance<float>(1, 1, 7, 3, ties, 5);
    check_balance<float>(3, 37, 8, 2, ties, 6, /*tail=*/1);  // MTP depth 1 and 3
    check_balance<double>(2, 300, 256, 8, ties, 7, /*tail=*/3);
    check_balance<double>(2, 3, 8, 2, ties, 8, /*tail=*/3);  // nothing counts: f = 0, loss 0
    check_balance<float>(1, 4096, 64, 8, ties, 9);           // mid-size: 16 chunks, 2 expert blocks
  }
}

TEST(CudaBalance, ExpertHistogramCountsAndAccumulates) {
  MOETRON_REQUIRE_GPU();
  for (int64_t E : {8, 256}) {
    const int64_t n = 100003;
    std::mt19937_64 rng(E);
    std::vector<int32_t> idx(n);
    for (auto& x : idx) x = static_cast<int32_t>(rng() % (E + 3)) - 1;  // -1 and >= E skipped
    std::vector<int64_t> load(E);
    cpu::expert_histogram(idx.data(), n, n, n, E, load.data(), false);
    Buffer<int32_t> di = dev(idx);
    Buffer<int64_t> dload = dev_garbage<int64_t>(E);
    kernels::expert_histogram(gpu_exec(), di.data(), n, n, n, E, dload.data(), false);
    expect_equal(host(dload, E), load, "histogram");
    cpu::expert_histogram(idx.data(), 1000, 1000, 1000, E, load.data(), true);
    kernels::expert_histogram(gpu_exec(), di.data(), 1000, 1000, 1000, E, dload.data(), true);
    expect_equal(host(dload, E), load, "histogram, accumulated");
    // the first 7 of each 10 entries (the positions with a target, K = 1)
    cpu::expert_histogram(idx.data(), n, 10, 7, E, load.data(), false);
    kernels::expert_histogram(gpu_exec(), di.data(), n, 10, 7, E, dload.data(), false);
    expect_equal(host(dload, E), load, "histogram, periodic");
  }
}

template <class T>
void check_bias_update(int64_t E, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<int64_t> load(E);
  for (auto& x : load) x = static_cast<int64_t>(rng() % 5);  // many loads equal to others
  if (E % 2 == 0) load[0] = 1, load[1] = 3;                  // (mean exactly hit sometimes)
  const auto b0 = rand_vec<T>(E, seed + 1, -0.1, 0.1);
  std::vector<T> b = b0;
  cpu::bias_sign_update<T>(b.data(), load.data(), E, 1e-3);
  Buffer<T> db = dev(b0);
  Buffer<int64_t> dl = dev(load);
  kernels::bias_sign_update<T>(gpu_exec(), db.data(), dl.data(), E, 1e-3);
  expect_equal(host(db, E), b, "bias_sign_update E=" + std::to_string(E));
}
TEST(CudaBalance, BiasSignUpdateMatchesTheCpu) {
  MOETRON_REQUIRE_GPU();
  for (int64_t E : {2, 7, 256, 1000}) {
    check_bias_update<float>(E, E);
    check_bias_update<double>(E, E + 1);
  }
  // loads all equal: no change
  std::vector<int64_t> load(4, 5);
  Buffer<float> db = dev(std::vector<float>{1, 2, 3, 4});
  Buffer<int64_t> dl = dev(load);
  kernels::bias_sign_update<float>(gpu_exec(), db.data(), dl.data(), 4, 0.5);
  EXPECT_EQ(host(db, 4), (std::vector<float>{1, 2, 3, 4}));
}

// ---- permutation -----------------------------------------------------------------------------

// idx [N, K]: random experts with some -1 (elsewhere); `skew`: most go to expert 1.
std::vector<int32_t> routes(int64_t N, int64_t K, int64_t E, uint64_t seed, bool skew) {
  std::mt19937_64 rng(seed);
  std::vector<int32_t> idx(N * K);
  for (auto& x : idx) {
    const uint64_t r = rng();
    x = r % 7 == 0 ? -1 : (skew && r % 5 != 0 ? 1 : static_cast<int32_t>((r >> 8) % E));
  }
  return idx;
}

void check_route(int64_t N, int64_t K, int64_t E, uint64_t seed, bool skew, int64_t align = 1) {
  const std::string what = "route N=" + std::to_string(N) + " K=" + std::to_string(K) +
                           " E=" + std::to_string(E) + (skew ? " skewed" : "") +
                           " align=" + std::to_string(align);
  const auto idx = routes(N, K, E, seed, skew);
  const int64_t NK = N * K, R = NK + E * (align - 1);  // rows at most
  std::vector<int64_t> counts(E), offsets(E + 1), slot(NK), rt(R), rs(R);
  cpu::route_by_expert(idx.data(), N, K, E, align, counts.data(), offsets.data(), slot.data(),
                       rt.data(), rs.data());
  Buffer<int32_t> di = dev(idx);
  Buffer<int64_t> dc = dev_garbage<int64_t>(E), doff = dev_garbage<int64_t>(E + 1);
  Buffer<int64_t> dslot = dev_garbage<int64_t>(NK), drt = dev_garbage<int64_t>(R),
                  drs = dev_garbage<int64_t>(R);
  kernels::route_by_expert(gpu_exec(), di.data(), N, K, E, align, dc.data(), doff.data(),
                           dslot.data(), drt.data(), drs.data());
  expect_equal(host(dc, E), counts, what + ": counts");
  expect_equal(host(doff, E + 1), offsets, what + ": offsets");
  expect_equal(host(dslot, NK), slot, what + ": slot");
  const int64_t rows = offsets[E];
  expect_equal(host(drt, rows), std::vector<int64_t>(rt.begin(), rt.begin() + rows),
               what + ": row_token");
  expect_equal(host(drs, rows), std::vector<int64_t>(rs.begin(), rs.begin() + rows),
               what + ": row_slot");
}
TEST(CudaPermute, RouteByExpertIsTheCpusStableTable) {
  MOETRON_REQUIRE_GPU();
  check_route(3, 2, 8, 1, false);
  check_route(333, 3, 8, 2, false);  // 999 assignments: a partial last chunk
  check_route(1000, 8, 256, 3, false);
  check_route(4096, 8, 256, 4, false);
  check_route(4096, 8, 256, 5, true);  // one expert gets most rows
  check_route(1, 1, 1, 6, false);
  check_route(0, 8, 16, 7, false);  // no tokens: counts and offsets zero
  check_route(5, 0, 16, 8, false);
  // each expert's rows padded to 16 (cuBLASLt's FP8 alignment) or 5: the pad rows -1
  check_route(333, 3, 8, 9, false, 16);
  check_route(4096, 8, 256, 10, true, 16);
  check_route(1000, 8, 64, 11, false, 5);
}

template <class T>
void check_gather_unpermute(int64_t N, int64_t K, int64_t E, int64_t D, uint64_t seed) {
  const std::string what = "N=" + std::to_string(N) + " D=" + std::to_string(D);
  const auto idx = routes(N, K, E, seed, false);
  const int64_t NK = N * K;
  std::vector<int64_t> counts(E), offsets(E + 1), slot(NK), rt(NK), rs(NK);
  cpu::route_by_expert(idx.data(), N, K, E, 1, counts.data(), offsets.data(), slot.data(),
                       rt.data(), rs.data());
  const int64_t rows = offsets[E];
  // gather: token rows into expert order, plus a few -1 rows (zeros)
  const auto x = rand_vec<T>(N * D, seed + 1);
  std::vector<int64_t> gidx(rt.begin(), rt.begin() + rows);
  for (int64_t i = 0; i < rows; i += 7) gidx[i] = -1;
  std::vector<T> g(rows * D);
  cpu::gather_rows<T>(x.data(), gidx.data(), rows, D, g.data());
  Buffer<T> dx = dev(x), dg = dev_garbage<T>(rows * D);
  Buffer<int64_t> dgi = dev(gidx);
  kernels::gather_rows<T>(gpu_exec(), dx.data(), dgi.data(), rows, D, dg.data());
  expect_equal(host(dg, rows * D), g, "gather_rows " + what);
  // unpermute_add: expert rows back into tokens, added in k order into existing contents
  const auto y = rand_vec<T>(rows * D, seed + 2);
  const auto init = rand_vec<T>(N * D, seed + 3);
  std::vector<T> out = init;
  cpu::unpermute_add<T>(y.data(), slot.data(), N, K, D, out.data());
  Buffer<T> dy = dev(y), dout = dev(init);
  Buffer<int64_t> dslot = dev(slot);
  kernels::unpermute_add<T>(gpu_exec(), dy.data(), dslot.data(), N, K, D, dout.data());
  expect_equal(host(dout, N * D), out, "unpermute_add " + what);
}
TEST(CudaPermute, GatherAndUnpermuteAddMatchTheCpuExactly) {
  MOETRON_REQUIRE_GPU();
  check_gather_unpermute<float>(37, 3, 8, 129, 1);
  check_gather_unpermute<double>(37, 3, 8, 129, 2);
  check_gather_unpermute<float>(256, 8, 256, 1024, 3);
  check_gather_unpermute<double>(5, 2, 4, 1, 4);
}

}  // namespace
}  // namespace moetron::kernels::gpu::testing
