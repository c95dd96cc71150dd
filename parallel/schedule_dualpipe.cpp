// DualPipe and DualPipeV: the 8-step rules of SPEC-deepseek-v3 §4.5, restated as op lists.
//
// Each rank replays the reference's per-rank program with the same bookkeeping: per chunk
// (module) FIFO counters of forwards, backwards, sends and receives, and a FIFO of deferred
// weight gradients (WeightGradStore). Each primitive appends ops instead of running anything:
//   recv_fwd / send_fwd / recv_bwd / send_bwd  -> RecvActivation / SendActivation / RecvGrad /
//       SendGrad, or nothing when the neighbour stage is off the path or on this rank (the
//       DualPipeV turn on rank N-1, where phase 0's output is phase 1's input locally)
//   F, B(zb), W, F&B                           -> Forward, Backward | BackwardInput, the oldest
//       deferred BackwardWeight, ForwardBackward (forward of one chunk, full backward of the
//       other)
//   commit                                     -> implicit: the strict reading of the execution
//       contract (schedule.h) commits every posted message before each compute op (W too),
//       exactly where the reference calls commit().
// Phases: DualPipe phase p on rank r runs chunk p XOR (r >= P/2), chunk d being direction d
// (stage r for d = 0, stage P-1-r for d = 1); DualPipeV phase p is chunk p (stage r, 2N-1-r).
// Micro-batches: DualPipe direction d carries global ids d*C/2 .. d*C/2 + C/2-1 (each direction
// counts its own from 0 in the SPEC's notation); DualPipeV carries 0..C-1 through both phases.
// Fewer micro-batches than the steps need (DualPipe C < 2P or C odd: direction 0 then carries
// ceil(C/2); DualPipeV C < 2N) run the schedule of enough micro-batches with the ops of the extra
// ones removed (without_microbatches): larger bubbles, same rules. SPEC §4.3 (the reference)
// rejects such C; the first steps of a batch-size ramp need them.
//
// What the lists give (tests): SPEC §4.6's examples op for op; every rank holds at most S+1
// chunks of activations (P+1, resp. 2N+1); replayed with comm = 0, the largest idle time of a rank
// is (S/2 - 1)(F&B + B - 3W), the §4.7 formula, exactly when F = W = B/2 (any F&B). For other
// ratios the steps' critical path differs, on either side (e.g. below it for W < B/2, above it
// for F > W): the formula is the README's estimate, not an identity of the schedule.
#include <algorithm>
#include <deque>
#include <stdexcept>
#include <utility>

#include "parallel/schedule.h"

namespace moetron::pipeline {

namespace {

// One rank's program state.
struct DualRank {
  Schedule& s;
  RankEmitter e;
  bool swap_phases;                  // DualPipe second-half rank: phase p = chunk 1-p
  int first_mb[2];                   // global id of the chunk's local micro-batch 0
  int f[2] = {0, 0}, b[2] = {0, 0};  // forwards / backwards computed, per chunk
  int f_recv[2] = {0, 0}, f_send[2] = {0, 0}, b_recv[2] = {0, 0}, b_send[2] = {0, 0};
  std::deque<std::pair<int, int>> deferred;  // (mb, stage) whose W is pending, oldest first

  DualRank(Schedule& sc, int rank, bool swap, int first_mb_of_chunk1)
      : s(sc), e{sc, rank}, swap_phases(swap), first_mb{0, first_mb_of_chunk1} {}

  int chunk(int phase) const { return phase ^ static_cast<int>(swap_phases); }
  int stage(int c) const { return s.chunks_of_rank[e.rank][c].stage; }
  int mb(int c, int local) const { return first_mb[c] + local; }

  void recv_fwd(int p) {
    const int c = chunk(p);
    if (e.recv_activation(mb(c, f_recv[c]), stage(c) - 1)) ++f_recv[c];
  }
  void send_fwd(int p) {
    const int c = chunk(p);
    if (e.send_activation(mb(c, f_send[c]), stage(c))) ++f_send[c];
  }
  void recv_bwd(int p) {
    const int c = chunk(p);
    if (e.recv_grad(mb(c, b_recv[c]), stage(c) + 1)) ++b_recv[c];
  }
  void send_bwd(int p) {
    const int c = chunk(p);
    if (e.send_grad(mb(c, b_send[c]), stage(c))) ++b_send[c];
  }
  void F(int p) {
    const int c = chunk(p);
    e.forward(mb(c, f[c]++), stage(c));
  }
  void B(int p, bool zb) {
    const int c = chunk(p), m = mb(c, b[c]++);
    if (!zb) return e.backward(m, stage(c));
    e.backward_input(m, stage(c));
    deferred.emplace_back(m, stage(c));
  }
  void W() {
    if (deferred.empty()) throw std::logic_error("dualpipe: W with no deferred weight gradient");
    e.weight(deferred.front().first, deferred.front().second);
    deferred.pop_front();
  }
  void FB(int p0, int p1) {
    const int c0 = chunk(p0), c1 = chunk(p1);
    const int m0 = mb(c0, f[c0]++), m1 = mb(c1, b[c1]++);
    e.forward_backward(m0, stage(c0), m1, stage(c1));
  }

  void fwd_chunk(int p, bool recv = true, bool send = true) {
    if (recv) recv_fwd(p);
    F(p);
    if (send) send_fwd(p);
  }
  void bwd_chunk(int p, bool zb = false, bool recv = true, bool send = true) {
    if (recv) recv_bwd(p);
    B(p, zb);
    if (send) send_bwd(p);
  }
  void fb_chunk(int p0, int p1, bool recv0 = true) {
    if (recv0) recv_fwd(p0);
    recv_bwd(p1);
    FB(p0, p1);
    send_fwd(p0);
    send_bwd(p1);
  }

  // The 8 steps. n: ranks per half (DualPipe P/2, DualPipeV N); h: half rank (DualPipe
  // min(r, P-1-r), DualPipeV r); c: micro-batches per phase stream (DualPipe C/2, DualPipeV C);
  // middle: DualPipe's two middle ranks / DualPipeV's last rank; v: DualPipeV.
  void steps(int n, int h, int c, bool middle, bool v) {
    for (int i = 0; i < 2 * (n - h - 1); ++i) fwd_chunk(0);  // 1: nF0

    // 2: nF0F1. DualPipe's middle ranks send F0 at once; everyone else (and DualPipeV always)
    // sends it after the F1 that follows.
    const bool send0_now = middle && !v;
    recv_fwd(0);
    for (int i = 0; i <= h; ++i) {
      fwd_chunk(0, /*recv=*/false, /*send=*/send0_now);
      recv_fwd(0);
      fwd_chunk(1, /*recv=*/true, /*send=*/!middle || i < h);
      if (!send0_now) send_fwd(0);
    }

    for (int i = 0; i < n - h - 1; ++i) {  // 3: nB1W1F1, zero bubble
      bwd_chunk(1, /*zb=*/true);
      recv_fwd(1);
      W();
      fwd_chunk(1, /*recv=*/false);
    }

    for (int i = 0; i < c - 2 * n + h + 1; ++i) {  // 4: main, nF0B1F1B0
      if (i == 0 && middle) {
        // Not overlapped, to shrink the bubble (as the reference does).
        fwd_chunk(0, /*recv=*/false, /*send=*/false);
        send_fwd(1);
        bwd_chunk(1, /*zb=*/false, /*recv=*/true, /*send=*/false);
        send_fwd(0);
        send_bwd(1);
      } else {
        fb_chunk(0, 1, /*recv0=*/i > 0);
      }
      fb_chunk(1, 0);
    }

    for (int i = 0; i < n - h - 1; ++i) {  // 5: nB1F1B0
      bwd_chunk(1);
      fb_chunk(1, 0);
    }

    bool zb = false;  // 6: nB1B0, the second half with zero bubble
    for (int i = 0; i <= h; ++i) {
      const bool switch_now = i == (h + 1) / 2;
      if (switch_now && h % 2 == 1) zb = true;
      bwd_chunk(1, zb);
      if (switch_now && h % 2 == 0) zb = true;
      bwd_chunk(0, zb);
    }

    for (int i = 0; i < n - h - 1; ++i) {  // 7: nWB0
      W();
      bwd_chunk(0, /*zb=*/true);
    }

    for (int i = 0; i <= h; ++i) W();  // 8: nW
    if (!deferred.empty()) throw std::logic_error("dualpipe: deferred weight gradients left");
  }
};

void check_counts(const Schedule& s, const DualRank& d, int per_chunk) {
  for (int c = 0; c < 2; ++c)
    if (d.f[c] != per_chunk || d.b[c] != per_chunk)
      throw std::logic_error("schedule " + s.kind + ": rank " + std::to_string(d.e.rank) +
                             " chunk " + std::to_string(c) + " runs " + std::to_string(d.f[c]) +
                             " forwards and " + std::to_string(d.b[c]) + " backwards, not " +
                             std::to_string(per_chunk));
}

}  // namespace

namespace {

// A schedule with fewer micro-batches than its generator needs: `full` with the ops of the
// micro-batches that id maps to -1 removed and the others renumbered (id[m] their new number), each
// remaining op in its place; a pair whose other half is gone runs its half alone. A removed
// micro-batch takes both ends of each of its messages with it and nothing another micro-batch
// waits for, so the lists still run to the end (validate() proves it for every (P, C) a run
// uses), and the activations in flight can only be fewer. The bubbles grow: the warm-up and
// cool-down of the full schedule stay, with less steady state between them.
Schedule without_microbatches(const Schedule& full, const std::vector<int>& id, int C,
                              std::vector<int> direction_of_mb) {
  Schedule s =
      empty_schedule(full.kind, full.ranks, full.stages, C, full.route, std::move(direction_of_mb));
  s.in_flight_bound = full.in_flight_bound;
  for (int r = 0; r < full.ranks; ++r)
    for (Op op : full.per_rank[r]) {
      const int m = id[op.mb], m2 = op.kind == OpKind::ForwardBackward ? id[op.mb2] : -1;
      if (m < 0 && m2 < 0) continue;
      if (op.kind == OpKind::ForwardBackward && m < 0)  // the backward half alone
        op = Op{op.defer_weight ? OpKind::BackwardInput : OpKind::Backward, m2, op.stage2};
      else if (op.kind == OpKind::ForwardBackward && m2 < 0)  // the forward half alone
        op = Op{OpKind::Forward, m, op.stage};
      else
        op.mb = m, op.mb2 = op.kind == OpKind::ForwardBackward ? m2 : op.mb2;
      s.per_rank[r].push_back(op);
    }
  s.send_window = default_send_window(s);
  return s;
}

}  // namespace

Schedule make_dualpipe(int P, int C) {
  const std::string k = "schedule dualpipe: ";
  if (P < 2 || P % 2 != 0)
    throw std::invalid_argument(k + "needs an even number of pipeline ranks (>= 2), got " +
                                std::to_string(P));
  if (C < 2) throw std::invalid_argument(too_few_microbatches("dualpipe", C, P, 2));
  if (C < 2 * P || C % 2 != 0) {
    // The 8 steps need C/2 >= P per direction: fewer (the first steps of a batch-size ramp:
    // DeepSeek-V3's 3072 sequences make 24 micro-batches per pipeline at DP128, PP16 needs 32), or
    // an odd count (direction 0 takes the extra one), run the schedule of 2 x max(P, ceil(C/2))
    // without the micro-batches beyond C.
    const int c0 = (C + 1) / 2, c1 = C / 2, per = std::max(P, c0);
    std::vector<int> id(2 * per, -1), dir(C, 0);
    for (int l = 0; l < c0; ++l) id[l] = l;
    for (int l = 0; l < c1; ++l) id[per + l] = c0 + l, dir[c0 + l] = 1;
    return without_microbatches(make_dualpipe(P, 2 * per), id, C, std::move(dir));
  }
  std::vector<int> down(P), up(P), dir(C);
  for (int st = 0; st < P; ++st) down[st] = st, up[st] = P - 1 - st;
  for (int m = 0; m < C; ++m) dir[m] = m < C / 2 ? 0 : 1;
  Schedule s = empty_schedule("dualpipe", P, P, C, {down, up}, dir);
  const int H = P / 2;
  for (int r = 0; r < P; ++r) {
    DualRank d(s, r, /*swap=*/r >= H, /*first_mb_of_chunk1=*/C / 2);
    d.steps(H, std::min(r, P - 1 - r), C / 2, r == H - 1 || r == H, /*v=*/false);
    check_counts(s, d, C / 2);
    s.in_flight_bound[r] = P + 1;
  }
  s.send_window = default_send_window(s);
  return s;
}

Schedule make_dualpipev(int N, int C) {
  if (N < 1)
    throw std::invalid_argument("schedule dualpipev: needs at least 1 pipeline rank, got " +
                                std::to_string(N));
  if (C < 1) throw std::invalid_argument(too_few_microbatches("dualpipev", C, N, 1));
  if (C < 2 * N) {  // the 8 steps need C >= 2N: the schedule of 2N without the micro-batches >= C
    std::vector<int> id(2 * N, -1);
    for (int m = 0; m < C; ++m) id[m] = m;
    return without_microbatches(make_dualpipev(N, 2 * N), id, C, std::vector<int>(C, 0));
  }
  std::vector<int> v(2 * N);
  for (int st = 0; st < 2 * N; ++st) v[st] = st < N ? st : 2 * N - 1 - st;
  Schedule s = empty_schedule("dualpipev", N, 2 * N, C, {v}, std::vector<int>(C, 0));
  for (int r = 0; r < N; ++r) {
    DualRank d(s, r, /*swap=*/false, /*first_mb_of_chunk1=*/0);
    d.steps(N, r, C, r == N - 1, /*v=*/true);
    check_counts(s, d, C);
    s.in_flight_bound[r] = 2 * N + 1;
  }
  s.send_window = default_send_window(s);
  return s;
}

}  // namespace moetron::pipeline
