// mpi-ranks: 2 4
// Expert-parallel dispatch on real ranks, in each wire precision (parallel/ep_dispatch.h): every
// rank can regenerate every rank's tokens, routes and gradients, so it predicts exactly which
// rows it receives and what each holds after the wire's encoding — as sent (Native), rounded to
// bf16, or E4M3 with a power-of-two scale per 128 channels (FP8 dispatches, BF16 combines).
// Also the bytes each phase moves: FP8 dispatch rows cost (1 + 4/128) / 2 of BF16's.
// The exchanges are point-to-point and never block the other stream: dispatch_start returns
// before any peer has started its own; several exchanges of one dispatcher in flight at once,
// started and waited in interleaved orders (as an overlapped forward/backward pair does), give
// the bits of one-at-a-time; progress() alone completes them; the in-order (collective) path that
// NCCL-like communicators take gives the same bits too. Either way the counts bring the received
// pairs per local expert (the MoE layer's row groups) exactly. The wires are pooled: many
// micro-batches between their forward and backward keep only their routing, the dispatcher one pair
// of wires per exchange in flight, and a warm steady state with two in flight allocates nothing. On
// device memory (the guard device) the dispatcher plans ahead: its plan, made before another
// exchange runs, posts afterwards with the rows of planning and posting at once.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <thread>
#include <type_traits>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/device.h"
#include "kernels/ops.h"
#include "kernels/scalar.h"
#include "parallel/comm.h"
#include "parallel/ep_dispatch.h"

using namespace moetron;

namespace {

constexpr int64_t N = 37, K = 2, D = 200;  // D: one full 128-channel block and a partial one

struct Tokens {
  std::vector<float> x, w, dy;  // [N,D], [N,K], [N,D]
  std::vector<int32_t> idx;     // [N,K] distinct global experts
};

Tokens tokens_of(int rank, int64_t n_experts) {
  std::mt19937_64 g(1000 + rank);
  std::normal_distribution<float> nd(0.f, 1.f);
  Tokens t;
  t.x.resize(N * D), t.dy.resize(N * D), t.w.resize(N * K), t.idx.resize(N * K);
  for (int64_t i = 0; i < N * D; ++i) {
    t.x[i] = nd(g) * std::exp2(static_cast<float>(i % 7) - 3.f);  // channels of mixed magnitude
    t.dy[i] = 1e-3f * nd(g);
  }
  for (int64_t n = 0; n < N; ++n) {
    const int32_t a = static_cast<int32_t>(g() % n_experts);
    int32_t b = static_cast<int32_t>(g() % (n_experts - 1));
    if (b >= a) ++b;
    t.idx[n * K] = a, t.idx[n * K + 1] = b;
    t.w[n * K] = 0.25f + 0.5f * static_cast<float>(g() % 100) / 100.f, t.w[n * K + 1] = 0.5f;
  }
  return t;
}

// what a row of D floats is after crossing the wire in this encoding
std::vector<float> wire(const float* x, const char* enc) {
  std::vector<float> out(x, x + D);
  if (std::string(enc) == "bf16") {
    for (float& v : out) v = round_bf16(v);
  } else if (std::string(enc) == "fp8") {
    std::vector<uint8_t> q(D);
    std::vector<float> s((D + 127) / 128);
    kernels::cpu::quantize(x, 1, D, kernels::Tile{1, 128}, true, q.data(), s.data());
    kernels::cpu::dequantize(q.data(), s.data(), 1, D, kernels::Tile{1, 128}, out.data());
  }
  return out;
}

void run_wire(WirePrecision prec, const char* dispatch_enc, const char* combine_enc) {
  Communicator& ep = world();
  const int P = ep.size(), me = ep.rank();
  const int64_t E = 4 * P, El = 4;
  std::vector<Tokens> all;
  for (int p = 0; p < P; ++p) all.push_back(tokens_of(p, E));
  const Tokens& mine = all[me];
  EpDispatcher<float> d(Exec{}, ep, std::vector<int>(P, 0), prec);
  DispatchState<float> st;
  d.dispatch_start(st, mine.x.data(), mine.idx.data(), mine.w.data(), N, K, D, E);
  d.dispatch_wait(st);

  // expected rows: peer by peer, that peer's tokens with an expert here, in token order
  std::vector<std::pair<int, int64_t>> from;  // (peer, token)
  for (int p = 0; p < P; ++p)
    for (int64_t n = 0; n < N; ++n)
      if (all[p].idx[n * K] / El == me || all[p].idx[n * K + 1] / El == me) from.push_back({p, n});
  ASSERT_EQ(st.R, static_cast<int64_t>(from.size()));
  double worst_rel = 0;
  for (int64_t i = 0; i < st.R; ++i) {
    const auto [p, n] = from[i];
    const std::vector<float> want = wire(all[p].x.data() + n * D, dispatch_enc);
    for (int64_t c = 0; c < D; ++c) {
      ASSERT_EQ(st.rx.data()[i * D + c], want[c]) << "row " << i << " channel " << c;
      const float x = all[p].x[n * D + c];
      if (std::fabs(x) > 1e-2f)
        worst_rel =
            std::max(worst_rel, std::fabs(double(st.rx.data()[i * D + c]) - x) / std::fabs(x));
    }
    for (int64_t k = 0; k < K; ++k) {
      const int32_t e = all[p].idx[n * K + k];
      EXPECT_EQ(st.ridx.data()[i * K + k], e / El == me ? e - me * El : -1);
      EXPECT_EQ(st.rw.data()[i * K + k], e / El == me ? all[p].w[n * K + k] : 0.f);
    }
  }
  EXPECT_LE(worst_rel, std::string(dispatch_enc) == "fp8" ? 1.0 / 16 : 1.0 / 256);

  // combine: rank q returns its received rows times (q + 1); each origin sums what returns
  sized(st.ry, st.R * D);
  for (int64_t i = 0; i < st.R * D; ++i)
    st.ry.data()[i] = st.rx.data()[i] * static_cast<float>(me + 1);
  std::vector<float> y(N * D, 0.f);
  d.combine_start(st);
  d.combine_wait(st, y.data());
  for (int64_t n = 0; n < N; ++n) {
    std::vector<double> want(D, 0.0);
    for (int q = 0; q < P; ++q) {
      if (mine.idx[n * K] / El != q && mine.idx[n * K + 1] / El != q) continue;
      std::vector<float> back = wire(mine.x.data() + n * D, dispatch_enc);
      for (float& v : back) v *= static_cast<float>(q + 1);
      back = wire(back.data(), combine_enc);
      for (int64_t c = 0; c < D; ++c) want[c] += back[c];
    }
    for (int64_t c = 0; c < D; ++c)
      ASSERT_NEAR(y[n * D + c], want[c], 1e-6 * (1 + std::fabs(want[c]))) << n << "," << c;
  }

  // combine backward sends dy like a dispatch; dispatch backward returns dx like a combine
  d.combine_backward_start(st, mine.dy.data());
  d.combine_backward_wait(st);
  for (int64_t i = 0; i < st.R; ++i) {
    const auto [p, n] = from[i];
    const std::vector<float> want = wire(all[p].dy.data() + n * D, dispatch_enc);
    for (int64_t c = 0; c < D; ++c) ASSERT_EQ(st.rdy.data()[i * D + c], want[c]);
  }
  sized(st.rdx, st.R * D), sized(st.rdw, st.R * K);
  for (int64_t i = 0; i < st.R * D; ++i) st.rdx.data()[i] = st.rdy.data()[i];
  for (int64_t i = 0; i < st.R * K; ++i) st.rdw.data()[i] = st.ridx.data()[i] >= 0 ? 1.f + me : 0.f;
  std::vector<float> dx(N * D, 0.f), dw(N * K, -7.f);
  d.dispatch_backward_start(st);
  d.dispatch_backward_wait(st, dx.data(), dw.data());
  for (int64_t n = 0; n < N; ++n) {
    int holders = 0;
    for (int q = 0; q < P; ++q)
      holders += mine.idx[n * K] / El == q || mine.idx[n * K + 1] / El == q;
    const std::vector<float> once =
        wire(wire(mine.dy.data() + n * D, dispatch_enc).data(), combine_enc);
    for (int64_t c = 0; c < D; ++c) ASSERT_FLOAT_EQ(dx[n * D + c], holders * once[c]);
    for (int64_t k = 0; k < K; ++k)
      EXPECT_EQ(dw[n * K + k], 1.f + static_cast<float>(mine.idx[n * K + k] / El));
  }

  // bytes: each row's activations plus 2K (dispatch) / K (dispatch backward) fp32 values
  const int64_t sent = EpDispatcher<float>::rows_sent(st);
  const int64_t a_disp = std::string(dispatch_enc) == "fp8"    ? D + 4 * 2
                         : std::string(dispatch_enc) == "bf16" ? 2 * D
                                                               : 4 * D;
  const int64_t a_comb = std::string(combine_enc) == "bf16" ? 2 * D : 4 * D;
  EXPECT_EQ(d.bytes_sent(EpPhase::Dispatch), sent * (a_disp + 2 * K * 4));
  EXPECT_EQ(d.bytes_sent(EpPhase::CombineBackward), sent * a_disp);
  EXPECT_EQ(d.bytes_sent(EpPhase::Combine), st.R * a_comb);
  EXPECT_EQ(d.bytes_sent(EpPhase::DispatchBackward), st.R * (a_comb + K * 4));
}

}  // namespace

TEST(ep_dispatch, NativeWireIsExact) { run_wire(WirePrecision::Native, "native", "native"); }
TEST(ep_dispatch, Bf16WireRoundsEveryPayload) { run_wire(WirePrecision::BF16, "bf16", "bf16"); }
TEST(ep_dispatch, Fp8WireQuantisesDispatchesAndRoundsCombines) {
  run_wire(WirePrecision::FP8, "fp8", "bf16");
}

// The ratio DeepSeek-V3 quotes: with whole 128-channel blocks an FP8 row with its fp32 scales is
// (1 + 4/128) / 2 of a BF16 row.
TEST(ep_dispatch, Fp8RowIsAboutHalfABf16Row) {
  Communicator& ep = world();
  const int P = ep.size();
  const int64_t Dw = 7168, Kw = 1;  // V3's hidden size
  std::vector<float> x(4 * Dw, 0.5f), w(4 * Kw, 1.f);
  std::vector<int32_t> idx = {0, 1, 2, 3};
  for (auto& i : idx) i %= P;  // one expert per rank
  int64_t bytes[2];
  int j = 0;
  for (WirePrecision prec : {WirePrecision::BF16, WirePrecision::FP8}) {
    EpDispatcher<float> d(Exec{}, ep, std::vector<int>(P, 0), prec);
    DispatchState<float> st;
    d.dispatch_start(st, x.data(), idx.data(), w.data(), 4, Kw, Dw, P);
    d.dispatch_wait(st);
    bytes[j++] = d.bytes_sent(EpPhase::Dispatch) - 4 * 2 * Kw * 4;  // less ids and weights
  }
  EXPECT_EQ(static_cast<double>(bytes[1]) / static_cast<double>(bytes[0]), (1 + 4.0 / 128) / 2);
}

namespace {

// The rows rank `me` should receive from a dispatch: per peer, that peer's tokens with an expert
// here, in token order.
std::vector<std::pair<int, int64_t>> expected_rows(const std::vector<Tokens>& all, int me,
                                                   int64_t El) {
  std::vector<std::pair<int, int64_t>> from;
  for (int p = 0; p < static_cast<int>(all.size()); ++p)
    for (int64_t n = 0; n < N; ++n)
      if (all[p].idx[n * K] / El == me || all[p].idx[n * K + 1] / El == me) from.push_back({p, n});
  return from;
}

void expect_native_rows(const DispatchState<float>& st, const std::vector<Tokens>& all, int me,
                        int64_t El) {
  const auto from = expected_rows(all, me, El);
  ASSERT_EQ(st.R, static_cast<int64_t>(from.size()));
  for (int64_t i = 0; i < st.R; ++i)
    ASSERT_EQ(std::memcmp(st.rx.data() + i * D, all[from[i].first].x.data() + from[i].second * D,
                          sizeof(float) * D),
              0)
        << "row " << i;
}

// One micro-batch through every phase: its tokens, its state, and everything it produced.
struct MicroBatch {
  Tokens t;
  DispatchState<float> st;
  std::vector<float> rx, rw, ry, y, rdy, dx, dw;
  std::vector<int32_t> ridx;
};

std::vector<float> copy_of(const Buffer<float>& b, int64_t n) {
  return std::vector<float>(b.data(), b.data() + n);
}

// The local "experts": forward returns rx * (me + 1) + w-sum, backward a function of rdy and ids.
void experts_forward(MicroBatch& m, int me) {
  DispatchState<float>& st = m.st;
  m.rx = copy_of(st.rx, st.R * D), m.rw = copy_of(st.rw, st.R * K);
  m.ridx.assign(st.ridx.data(), st.ridx.data() + st.R * K);
  sized(st.ry, st.R * D);
  for (int64_t i = 0; i < st.R * D; ++i)
    st.ry.data()[i] = st.rx.data()[i] * static_cast<float>(me + 1) + st.rw.data()[i / D * K];
  m.ry = copy_of(st.ry, st.R * D);
}
void experts_backward(MicroBatch& m, int me) {
  DispatchState<float>& st = m.st;
  m.rdy = copy_of(st.rdy, st.R * D);
  sized(st.rdx, st.R * D), sized(st.rdw, st.R * K);
  for (int64_t i = 0; i < st.R * D; ++i) st.rdx.data()[i] = st.rdy.data()[i] * 0.5f - 0.25f;
  for (int64_t i = 0; i < st.R * K; ++i)
    st.rdw.data()[i] = st.ridx.data()[i] >= 0 ? st.rdy.data()[i / K * D + i % K] + me : 0.f;
}

MicroBatch micro_batch(int me, int m, int64_t E) {
  MicroBatch b;
  b.t = tokens_of(me + 100 * m, E);
  b.y.assign(N * D, 0.f), b.dx.assign(N * D, 0.f), b.dw.assign(N * K, -7.f);
  return b;
}

// The received (token, slot) pairs per local expert that came with the counts, as offsets: those
// of the received routes, which the MoE layer would otherwise read back from the device.
void expect_expert_offsets(const EpDispatcher<float>& d, const DispatchState<float>& st,
                           int64_t El) {
  const int64_t* off = d.expert_offsets(st);
  ASSERT_NE(off, nullptr);
  std::vector<int64_t> want(El + 1, 0);
  for (int64_t i = 0; i < st.R * K; ++i)
    if (st.ridx.data()[i] >= 0) ++want[st.ridx.data()[i] + 1];
  for (int64_t e = 0; e < El; ++e) want[e + 1] += want[e];
  EXPECT_EQ(std::vector<int64_t>(off, off + El + 1), want);
}

void start_dispatch(EpDispatcher<float>& d, MicroBatch& m, int64_t E) {
  d.dispatch_start(m.st, m.t.x.data(), m.t.idx.data(), m.t.w.data(), N, K, D, E);
}

// Every phase of each micro-batch, one exchange at a time.
std::vector<MicroBatch> one_at_a_time(Communicator& ep, WirePrecision prec, int n_mb) {
  const int P = ep.size(), me = ep.rank();
  const int64_t E = 4 * P;
  EpDispatcher<float> d(Exec{}, ep, std::vector<int>(P, 0), prec);
  std::vector<MicroBatch> mb;
  for (int m = 0; m < n_mb; ++m) mb.push_back(micro_batch(me, m, E));
  for (MicroBatch& b : mb) {
    start_dispatch(d, b, E);
    d.dispatch_wait(b.st);
    expect_expert_offsets(d, b.st, E / P);
    experts_forward(b, me);
    d.combine_start(b.st);
    d.combine_wait(b.st, b.y.data());
    d.combine_backward_start(b.st, b.t.dy.data());
    d.combine_backward_wait(b.st);
    experts_backward(b, me);
    d.dispatch_backward_start(b.st);
    d.dispatch_backward_wait(b.st, b.dx.data(), b.dw.data());
  }
  return mb;
}

void expect_same_bits(const std::vector<float>& a, const std::vector<float>& b, const char* what,
                      int m) {
  ASSERT_EQ(a.size(), b.size()) << what << " of micro-batch " << m;
  EXPECT_EQ(std::memcmp(a.data(), b.data(), sizeof(float) * a.size()), 0)
      << what << " of micro-batch " << m;
}
void expect_same(const std::vector<MicroBatch>& a, const std::vector<MicroBatch>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t m = 0; m < a.size(); ++m) {
    const int i = static_cast<int>(m);
    expect_same_bits(a[m].rx, b[m].rx, "rx", i), expect_same_bits(a[m].rw, b[m].rw, "rw", i);
    expect_same_bits(a[m].y, b[m].y, "y", i), expect_same_bits(a[m].rdy, b[m].rdy, "rdy", i);
    expect_same_bits(a[m].dx, b[m].dx, "dx", i), expect_same_bits(a[m].dw, b[m].dw, "dw", i);
    EXPECT_EQ(a[m].ridx, b[m].ridx) << "ridx of micro-batch " << i;
  }
}

// B's forward runs first; then B's backward is paired with A's and C's forwards the way an
// overlapped F&B pair posts them (DESIGN-NOTES Part B 1.4.3), up to three exchanges in flight,
// waited in another order than started; then A's and C's backwards, also crossed.
std::vector<MicroBatch> interleaved(Communicator& ep, WirePrecision prec) {
  const int P = ep.size(), me = ep.rank();
  const int64_t E = 4 * P;
  EpDispatcher<float> d(Exec{}, ep, std::vector<int>(P, 0), prec);
  std::vector<MicroBatch> mb;
  for (int m = 0; m < 3; ++m) mb.push_back(micro_batch(me, m, E));
  MicroBatch &A = mb[0], &B = mb[1], &C = mb[2];
  start_dispatch(d, B, E);
  d.dispatch_wait(B.st);
  experts_forward(B, me);
  d.combine_start(B.st);
  d.combine_wait(B.st, B.y.data());
  d.combine_backward_start(B.st, B.t.dy.data());  // AttnF(A) || combine-bwd(B)
  d.progress();
  start_dispatch(d, A, E);  // MlpB(B) || dispatch(A)
  d.progress();
  d.combine_backward_wait(B.st);
  experts_backward(B, me);
  d.dispatch_backward_start(B.st);  // MlpF(A) || dispatch-bwd(B)
  start_dispatch(d, C, E);          // a third exchange in flight
  EXPECT_EQ(d.in_flight(), 3u);
  d.progress();
  d.dispatch_wait(A.st);
  experts_forward(A, me);
  d.combine_start(A.st);  // AttnB(B) || combine(A)
  d.progress();
  d.dispatch_backward_wait(B.st, B.dx.data(), B.dw.data());
  d.dispatch_wait(C.st);
  experts_forward(C, me);
  d.combine_start(C.st);
  d.combine_wait(A.st, A.y.data());
  d.combine_wait(C.st, C.y.data());
  d.combine_backward_start(A.st, A.t.dy.data());
  d.combine_backward_start(C.st, C.t.dy.data());
  d.progress();
  d.combine_backward_wait(C.st);
  d.combine_backward_wait(A.st);
  experts_backward(A, me), experts_backward(C, me);
  d.dispatch_backward_start(C.st);
  d.dispatch_backward_start(A.st);
  d.dispatch_backward_wait(A.st, A.dx.data(), A.dw.data());
  d.dispatch_backward_wait(C.st, C.dx.data(), C.dw.data());
  EXPECT_EQ(d.in_flight(), 0u);
  return mb;
}

// Forwards everything to another communicator but says its messages match in order only (as
// NCCL's do), so the dispatcher takes its collective path.
class InOrder final : public Communicator {
 public:
  explicit InOrder(Communicator& c) : c_(c) {}
  int rank() const override { return c_.rank(); }
  int size() const override { return c_.size(); }
  bool tags_match() const override { return false; }
  void send(const void* b, size_t n, int p, int t) override { c_.send(b, n, p, t); }
  void recv(void* b, size_t n, int p, int t) override { c_.recv(b, n, p, t); }
  Request isend(const void* b, size_t n, int p, int t) override { return c_.isend(b, n, p, t); }
  Request irecv(void* b, size_t n, int p, int t) override { return c_.irecv(b, n, p, t); }
  using Communicator::all_gather;
  using Communicator::all_reduce;
  using Communicator::batch_isend_irecv;
  using Communicator::reduce_scatter;
  Request batch_isend_irecv(const P2pOp* o, size_t n) override {
    return c_.batch_isend_irecv(o, n);
  }
  void all_reduce(void* d, size_t n, CommDType t, ReduceOp op) override {
    c_.all_reduce(d, n, t, op);
  }
  Request ireduce_scatter(const void* i, void* o, size_t n, CommDType t, ReduceOp op) override {
    return c_.ireduce_scatter(i, o, n, t, op);
  }
  void all_gather(const void* i, void* o, size_t n, CommDType t) override {
    c_.all_gather(i, o, n, t);
  }
  void all_to_all(const int64_t* i, int64_t* o, size_t n) override { c_.all_to_all(i, o, n); }
  Request iall_to_all_v(const void* s, const std::vector<size_t>& sb, void* r,
                        const std::vector<size_t>& rb) override {
    return c_.iall_to_all_v(s, sb, r, rb);
  }
  void barrier() override { c_.barrier(); }
  std::unique_ptr<Communicator> split(int color, int key) override { return c_.split(color, key); }

 private:
  Communicator& c_;
};

}  // namespace

// With a blocking count exchange, rank 0 would wait in dispatch_start for rank 1, which waits
// for rank 0's "go" first: a deadlock, here a failure after a timeout (rank 1 then starts anyway).
TEST(ep_dispatch, DispatchStartNeverBlocksOnAPeer) {
  Communicator& ep = world();
  const int P = ep.size(), me = ep.rank();
  const int64_t E = 4 * P;
  std::vector<Tokens> all;
  for (int p = 0; p < P; ++p) all.push_back(tokens_of(p, E));
  EpDispatcher<float> d(Exec{}, ep, std::vector<int>(P, 0), WirePrecision::Native);
  DispatchState<float> st;
  constexpr int kGoTag = 4242;
  char go = 1, got = 0;
  auto dispatch = [&] {
    d.dispatch_start(st, all[me].x.data(), all[me].idx.data(), all[me].w.data(), N, K, D, E);
  };
  if (me == 0) {
    dispatch();
    Request sent = ep.isend(&go, 1, 1, kGoTag);
    d.dispatch_wait(st);
    sent.wait();
  } else if (me == 1) {
    Request r = ep.irecv(&got, 1, 0, kGoTag);
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (!r.test() && std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    EXPECT_EQ(got, 1) << "rank 0's dispatch_start blocked until rank 1 started its dispatch";
    dispatch();
    d.dispatch_wait(st);
    r.wait();
  } else {
    dispatch();
    d.dispatch_wait(st);
  }
  expect_native_rows(st, all, me, 4);
}

TEST(ep_dispatch, InterleavedExchangesGiveTheBitsOfOneAtATime) {
  for (WirePrecision prec : {WirePrecision::Native, WirePrecision::FP8}) {
    const std::vector<MicroBatch> ref = one_at_a_time(world(), prec, 3);
    expect_same(interleaved(world(), prec), ref);
  }
}

TEST(ep_dispatch, InOrderCommunicatorsTakeTheCollectivePathWithTheSameBits) {
  InOrder in_order(world());
  for (WirePrecision prec : {WirePrecision::Native, WirePrecision::FP8})
    expect_same(one_at_a_time(in_order, prec, 2), one_at_a_time(world(), prec, 2));
}

// progress() alone completes a dispatch (it posts the row receives when the counts arrive):
// nothing blocks before the wait, and the wait finds the rows there. Then the counters.
TEST(ep_dispatch, ProgressCompletesExchangesAndTheyAreTimed) {
  Communicator& ep = world();
  const int P = ep.size(), me = ep.rank();
  const int64_t E = 4 * P;
  std::vector<Tokens> all;
  for (int p = 0; p < P; ++p) all.push_back(tokens_of(p, E));
  EpDispatcher<float> d(Exec{}, ep, std::vector<int>(P, 0), WirePrecision::Native);
  DispatchState<float> st;
  EXPECT_TRUE(d.done(st));  // nothing started
  EXPECT_EQ(d.expert_offsets(st), nullptr);
  d.dispatch_start(st, all[me].x.data(), all[me].idx.data(), all[me].w.data(), N, K, D, E);
  EXPECT_EQ(d.in_flight(), 1u);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (!d.done(st) && std::chrono::steady_clock::now() < deadline) d.progress();
  EXPECT_TRUE(d.done(st)) << "progress() did not complete the dispatch";
  EXPECT_EQ(d.take_comm_seconds(), 0.0);  // nothing has blocked yet
  EXPECT_EQ(d.take_exchanges(), 1);       // progress() saw it complete
  d.dispatch_wait(st);
  EXPECT_EQ(d.in_flight(), 0u);
  expect_native_rows(st, all, me, 4);
  EXPECT_EQ(d.take_exchanges(), 0);  // counted once
  // the expert rows this rank received over its own tokens' N x K: 1 over the ranks on average
  const double load = static_cast<double>(d.expert_offsets(st)[E / P]) / static_cast<double>(N * K);
  EXPECT_EQ(d.take_rows_peak(), load);
  EXPECT_EQ(d.take_rows_peak(), 0.0);  // taken
  double loads = load;
  ep.all_reduce(&loads, 1);
  EXPECT_NEAR(loads, P, 1e-12);
  std::fill_n(sized(st.ry, st.R * D), st.R * D, 1.f);
  std::vector<float> y(N * D, 0.f), dx(N * D, 0.f), dw(N * K, 0.f);
  d.combine_start(st);
  d.combine_wait(st, y.data());
  d.combine_backward_start(st, all[me].dy.data());
  d.combine_backward_wait(st);
  std::fill_n(sized(st.rdx, st.R * D), st.R * D, 1.f);
  std::fill_n(sized(st.rdw, st.R * K), st.R * K, 1.f);
  d.dispatch_backward_start(st);
  d.dispatch_backward_wait(st, dx.data(), dw.data());
  EXPECT_EQ(d.take_exchanges(), 3);
  const double comm = d.take_comm_seconds(), inflight = d.take_inflight_seconds();
  EXPECT_GE(comm, 0.0);
  EXPECT_GT(inflight, 0.0);
  EXPECT_GE(d.take_skew_seconds(), 0.0);
  EXPECT_EQ(d.take_inflight_seconds(), 0.0);  // taken
  EXPECT_EQ(d.take_comm_seconds(), 0.0);
}

// Device memory: plans_ahead, and a plan made before another dispatch has run its whole course
// posts afterwards with the same rows as one made and posted at once (plan, then other work, then
// start: what the MoE forward does between its two pieces), and holds no wire in between.
TEST(ep_dispatch, PlansAheadOnDeviceMemoryWithAnotherExchangeBetween) {
  Communicator& ep = world();
  const int P = ep.size(), me = ep.rank();
  const int64_t E = 4 * P;
  std::vector<Tokens> all, other;
  for (int p = 0; p < P; ++p) all.push_back(tokens_of(p, E)), other.push_back(tokens_of(p + 7, E));
  const Exec g = Exec::on(Device::Guard);
  auto on_guard = [&](const auto& v) {
    Buffer<std::decay_t<decltype(v[0])>> b(Device::Guard);
    kernels::copy_from_host(g, b.resize(v.size()), v.data(), v.size() * sizeof(v[0]));
    return b;
  };
  const auto x = on_guard(all[me].x), w = on_guard(all[me].w);
  const auto idx = on_guard(all[me].idx);
  const auto x2 = on_guard(other[me].x), w2 = on_guard(other[me].w);
  const auto idx2 = on_guard(other[me].idx);
  EpDispatcher<float> host(Exec{}, ep, std::vector<int>(P, 0));
  EpDispatcher<float> dev(g, ep, std::vector<int>(P, 0));
  EXPECT_FALSE(host.plans_ahead());
  EXPECT_TRUE(dev.plans_ahead());
  set_default_device(Device::Guard);  // the states' received rows on the guard device too
  DispatchState<float> a, b;
  set_default_device(Device::CPU);
  dev.dispatch_plan(a, idx.data(), N, K, E);
  dev.dispatch_start(b, x2.data(), idx2.data(), w2.data(), N, K, D, E);  // plans itself
  dev.dispatch_wait(b);
  dev.dispatch_start(a, x.data(), idx.data(), w.data(), N, K, D, E);
  dev.dispatch_wait(a);
  EXPECT_EQ(dev.wire_pairs(), 1u);  // a planned dispatch holds no wire until it posts
  GuardAccess open;                 // read the guard device's rows here
  expect_native_rows(a, all, me, 4);
  expect_native_rows(b, other, me, 4);
  expect_expert_offsets(dev, a, 4), expect_expert_offsets(dev, b, 4);
}

// A bad expert id: planning does not check it (on a GPU that would wait for the stream); the
// post, which reads the plan's counts, throws std::out_of_range before anything is posted. Every
// rank routes one, so none posts.
TEST(ep_dispatch, BadExpertIdThrowsAtThePost) {
  Communicator& ep = world();
  const int P = ep.size(), me = ep.rank();
  const int64_t E = 4 * P;
  Tokens t = tokens_of(me, E);
  t.idx[5] = static_cast<int32_t>(E);  // out of range
  for (const Exec& ex : {Exec{}, Exec::on(Device::Guard)}) {
    EpDispatcher<float> d(ex, ep, std::vector<int>(P, 0));
    Buffer<int32_t> idx(ex.device);
    kernels::copy_from_host(ex, idx.resize(t.idx.size()), t.idx.data(), sizeof(int32_t) * N * K);
    DispatchState<float> st;
    if (d.plans_ahead()) d.dispatch_plan(st, idx.data(), N, K, E);  // no throw
    EXPECT_THROW(d.dispatch_start(st, t.x.data(), idx.data(), t.w.data(), N, K, D, E),
                 std::out_of_range)
        << device_name(ex.device);
    EXPECT_EQ(d.in_flight(), 0u);
  }
}

// A state reused before its wait completes its exchange first; one dropped before its wait stays
// alive in the dispatcher, which completes it (here: in its destructor).
TEST(ep_dispatch, ReusedAndDroppedStatesAreSafe) {
  Communicator& ep = world();
  const int P = ep.size(), me = ep.rank();
  const int64_t E = 4 * P;
  std::vector<Tokens> all;
  for (int p = 0; p < P; ++p) all.push_back(tokens_of(p, E));
  const Tokens& t = all[me];
  auto d = std::make_unique<EpDispatcher<float>>(Exec{}, ep, std::vector<int>(P, 0));
  DispatchState<float> st;
  d->dispatch_start(st, t.x.data(), t.idx.data(), t.w.data(), N, K, D, E);
  {
    DispatchState<float> dropped;
    d->dispatch_start(dropped, t.x.data(), t.idx.data(), t.w.data(), N, K, D, E);
  }
  d->dispatch_start(st, t.x.data(), t.idx.data(), t.w.data(), N, K, D, E);  // reused
  EXPECT_EQ(d->in_flight(), 2u);  // st's second dispatch and the dropped one
  d->dispatch_wait(st);
  expect_native_rows(st, all, me, 4);
  // progress() retires the dropped state's exchange once complete: its wire back in the pool
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (d->in_flight() > 0 && std::chrono::steady_clock::now() < deadline) d->progress();
  EXPECT_EQ(d->in_flight(), 0u);
  EXPECT_EQ(d->wire_pairs(), 2u);  // the most exchanges that were in flight at once
  d.reset();
}

namespace {

// The bytes a state's own buffers hold (capacities): what the model side keeps per micro-batch.
int64_t state_buffer_bytes(const DispatchState<float>& st) {
  return static_cast<int64_t>(4 * (st.rx.capacity() + st.ridx.capacity() + st.rw.capacity() +
                                   st.ry.capacity() + st.rdy.capacity() + st.rdx.capacity() +
                                   st.rdw.capacity()));
}
int64_t live_bytes() { return allocator(Device::CPU).stats().live_bytes; }

void forward(EpDispatcher<float>& d, MicroBatch& m, int me, int64_t E) {
  start_dispatch(d, m, E);
  d.dispatch_wait(m.st);
  experts_forward(m, me);
  d.combine_start(m.st);
  d.combine_wait(m.st, m.y.data());
}
void backward(EpDispatcher<float>& d, MicroBatch& m, int me) {
  d.combine_backward_start(m.st, m.t.dy.data());
  d.combine_backward_wait(m.st);
  experts_backward(m, me);
  d.dispatch_backward_start(m.st);
  d.dispatch_backward_wait(m.st, m.dx.data(), m.dw.data());
}

}  // namespace

// Eight micro-batches between their forward and their backward, as a pipeline's warm-up keeps
// them, one exchange at a time: each adds its state's buffers and its plan's routing to the
// process's memory, not a pair of wires — the dispatcher has one pair, at most as large as one
// exchange can need (every token to every rank, rows of the widest phase).
TEST(ep_dispatch, MicroBatchesInFlightKeepNoWires) {
  Communicator& ep = world();
  const int P = ep.size(), me = ep.rank();
  const int64_t E = 4 * P;
  constexpr int M = 8;
  EpDispatcher<float> d(Exec{}, ep, std::vector<int>(P, 0), WirePrecision::Native);
  const int64_t bound =
      EpDispatcher<float>::exchange_bytes(WirePrecision::Native, N, D, K, static_cast<double>(P));
  // the routing on the device, and the host copy of its counts (a PinnedVector: the CPU
  // allocator's memory here)
  const int64_t routing = EpDispatcher<float>::state_bytes(N, P, E) + 8 * (P + 2 + E);
  std::vector<MicroBatch> mb;
  for (int m = 0; m < M; ++m) mb.push_back(micro_batch(me, m, E));
  forward(d, mb[0], me, E);
  const int64_t live0 = live_bytes(), wire0 = d.wire_bytes();
  int64_t kept = 0;  // what micro-batches 1.. keep of their own
  for (int m = 1; m < M; ++m) {
    forward(d, mb[m], me, E);
    kept += state_buffer_bytes(mb[m].st) + routing;
    EXPECT_EQ(d.wire_pairs(), 1u);
    EXPECT_LE(d.wire_bytes(), bound);
  }
  // exactly that, and what the one pair grew for a later micro-batch's rows (a regrown buffer
  // frees its old memory): per-plan wires would add a pair per micro-batch
  EXPECT_EQ(live_bytes() - live0, kept + d.wire_bytes() - wire0);
  for (int m = M - 1; m >= 0; --m) backward(d, mb[m], me);
  EXPECT_EQ(d.wire_pairs(), 1u);
  EXPECT_EQ(d.in_flight(), 0u);
}

// DualPipe's steady state on one rank: A's forward; then B's forward against A's backward, their
// exchanges interleaved as the executor's overlapped pair posts them (backward first), two in
// flight; then B's backward. The pool settles on two pairs: from the third step on nothing is
// allocated, and the results are those of one exchange at a time.
TEST(ep_dispatch, OverlappedPairsReuseTwoPairsOfWires) {
  Communicator& ep = world();
  const int P = ep.size(), me = ep.rank();
  const int64_t E = 4 * P;
  for (WirePrecision prec : {WirePrecision::Native, WirePrecision::FP8}) {
    const std::vector<MicroBatch> ref = one_at_a_time(ep, prec, 2);
    EpDispatcher<float> d(Exec{}, ep, std::vector<int>(P, 0), prec);
    std::vector<MicroBatch> mb;
    for (int m = 0; m < 2; ++m) mb.push_back(micro_batch(me, m, E));
    MicroBatch &A = mb[0], &B = mb[1];
    int64_t allocs = 0;
    for (int step = 1; step <= 5; ++step) {
      if (step == 3) allocs = allocator(Device::CPU).stats().allocations;
      for (MicroBatch* m : {&A, &B})
        m->y.assign(N * D, 0.f), m->dx.assign(N * D, 0.f), m->dw.assign(N * K, -7.f);
      forward(d, A, me, E);
      d.combine_backward_start(A.st, A.t.dy.data());  // B piece
      start_dispatch(d, B, E);                        // F piece
      EXPECT_EQ(d.in_flight(), 2u);
      d.progress();
      d.combine_backward_wait(A.st);
      experts_backward(A, me);
      d.dispatch_backward_start(A.st);
      d.dispatch_wait(B.st);
      experts_forward(B, me);
      d.combine_start(B.st);
      EXPECT_EQ(d.in_flight(), 2u);
      d.dispatch_backward_wait(A.st, A.dx.data(), A.dw.data());
      d.combine_wait(B.st, B.y.data());
      backward(d, B, me);
      EXPECT_EQ(d.wire_pairs(), 2u);
    }
    EXPECT_EQ(allocator(Device::CPU).stats().allocations, allocs)
        << "wire " << static_cast<int>(prec);
    expect_same(mb, ref);
  }
}
