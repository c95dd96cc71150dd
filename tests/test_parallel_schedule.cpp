// Pipeline schedules (parallel/schedule.h): every generator passes the validator over a grid of
// (PP, micro-batches); DualPipe / DualPipeV reproduce the worked examples of SPEC §4.6 op for
// op; the validator rejects hand-broken schedules with a message that names the rank, the op
// and the rule; the simulator reproduces the bubble formulas of SPEC §4.7 where our cost model
// and the formula's assumptions agree (and the tests pin down what it gives where they do not).
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdint>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "parallel/schedule.h"

namespace moetron::pipeline {
namespace {

// Runs fn, expects std::invalid_argument whose message contains every piece.
void expect_error(const std::function<void()>& fn, const std::vector<std::string>& pieces) {
  try {
    fn();
    ADD_FAILURE() << "no error; expected one containing \"" << pieces.front() << "\"";
  } catch (const std::invalid_argument& e) {
    const std::string msg = e.what();
    for (const auto& p : pieces) EXPECT_NE(msg.find(p), std::string::npos) << msg;
  }
}

int find_op(const Schedule& s, int rank, const Op& op) {
  const auto& ops = s.per_rank[rank];
  const auto it = std::find(ops.begin(), ops.end(), op);
  EXPECT_NE(it, ops.end()) << "op not found on rank " << rank;
  return static_cast<int>(it - ops.begin());
}

Op fwd(int m, int s) { return {.kind = OpKind::Forward, .mb = m, .stage = s}; }
Op bwd(int m, int s) { return {.kind = OpKind::Backward, .mb = m, .stage = s}; }
Op bi(int m, int s) { return {.kind = OpKind::BackwardInput, .mb = m, .stage = s}; }
Op wgt(int m, int s) { return {.kind = OpKind::BackwardWeight, .mb = m, .stage = s}; }
Op msg(OpKind k, int m, int s, int peer) { return {.kind = k, .mb = m, .stage = s, .peer = peer}; }

// Micro-batch counts each kind accepts for P ranks: the minimum and a few more, including counts
// that are not multiples of P.
std::vector<int> counts_for(const std::string& kind, int P) {
  if (kind == "dualpipe") return {2 * P, 2 * P + 2, 2 * P + 6, 5 * P};  // even, >= 2P
  if (kind == "dualpipev") return {2 * P, 2 * P + 1, 3 * P + 1, 4 * P};
  return {P, P + 1, 2 * P - 1, 2 * P, 3 * P + 1, 4 * P};
}

const std::vector<std::string> kKinds = {"1f1b", "zb1p", "dualpipe", "dualpipev"};

// ---- generators pass the validator --------------------------------------------------------

// The forwards and backwards rank r computes (a pair counts as one of each).
std::pair<int, int> compute_counts(const Schedule& s, int r) {
  int f = 0, b = 0;
  for (const Op& op : s.per_rank[r]) {
    f += op.kind == OpKind::Forward || op.kind == OpKind::ForwardBackward;
    b += op.kind == OpKind::Backward || op.kind == OpKind::BackwardInput ||
         op.kind == OpKind::ForwardBackward;
  }
  return {f, b};
}

TEST(Schedule, EveryGeneratorValidatesOverAGrid) {
  for (const auto& kind : kKinds)
    for (int P : {2, 4, 8})
      for (int C : counts_for(kind, P)) {
        SCOPED_TRACE(kind + " P=" + std::to_string(P) + " C=" + std::to_string(C));
        const Schedule s = make_schedule(kind, P, C);
        ASSERT_NO_THROW(validate(s));
        EXPECT_EQ(s.ranks, P);
        EXPECT_EQ(s.stages, kind == "dualpipev" ? 2 * P : P);
        // Compute work per rank: each chunk it holds runs C' forwards and C' backwards, C' = the
        // micro-batches of that chunk's direction.
        for (int r = 0; r < P; ++r) {
          const auto [f, b] = compute_counts(s, r);
          const int expect = kind == "dualpipe" ? C : kind == "dualpipev" ? 2 * C : C;
          EXPECT_EQ(f, expect) << "rank " << r;
          EXPECT_EQ(b, expect) << "rank " << r;
        }
      }
}

// ---- the send window and when a send's buffer is free -------------------------------------

// Each generator's window is its longest run of sends between two compute ops (DualPipe's pairs
// send an activation and a gradient); the forward-only schedule's is one.
TEST(Schedule, SendWindowIsTheLongestRunOfSends) {
  for (const auto& kind : kKinds)
    for (int P : {2, 4, 8})
      for (int C : counts_for(kind, P)) {
        const Schedule s = make_schedule(kind, P, C);
        EXPECT_EQ(s.send_window, default_send_window(s)) << kind << " P=" << P << " C=" << C;
        EXPECT_EQ(s.send_window, kind == "dualpipe" || kind == "dualpipev" ? 2 : 1)
            << kind << " P=" << P << " C=" << C;
      }
  EXPECT_EQ(make_forward_only(4, 8).send_window, 1);
}

// 1F1B, 2 ranks, 3 micro-batches (rank 0: F0.0 sendA0 F0.1 sendA1 recvG0 B0.0 F0.2 sendA2 recvG1
// B0.1 recvG2 B0.2; rank 1: recvA0 F0.0 B0.0 sendG0 recvA1 F0.1 B0.1 sendG1 recvA2 F0.2 B0.2
// sendG2). sendA1 (op 3) is read by rank 1's F0.1 (op 5); the first word from rank 1 posted after
// that op is sendG1 (op 7), which rank 0 waits for at B0.1 (op 9): free after op 9 — sendG0
// (rank 1's op 3, before F0.1) says nothing about it. Under the window of one, each send is free
// by the next one's post at the latest.
TEST(Schedule, SendReleaseIsTheReceiversFirstWordOrTheWindow) {
  Schedule s = make_1f1b(2, 3);
  ASSERT_EQ(format_rank(s, 0, true),
            "F0.0 sendA(m0,s0)>1 F0.1 sendA(m1,s0)>1 recvG(m0,s1)<1 B0.0 F0.2 sendA(m2,s0)>1 "
            "recvG(m1,s1)<1 B0.1 recvG(m2,s1)<1 B0.2");
  ASSERT_EQ(format_rank(s, 1, true),
            "recvA(m0,s0)<0 F0.0 B0.0 sendG(m0,s1)>0 recvA(m1,s0)<0 F0.1 B0.1 sendG(m1,s1)>0 "
            "recvA(m2,s0)<0 F0.2 B0.2 sendG(m2,s1)>0");
  s.send_window = 0;
  std::vector<std::vector<int>> rel = send_release(s);
  EXPECT_EQ(rel[0], (std::vector<int>{-1, 5, -1, 9, -1, -1, -1, 11, -1, -1, -1, -1}));
  // rank 1 hears from rank 0 after its B0.0 only through sendA2 (waited at F0.2, op 9); of the
  // later ones, nothing: held to the end
  EXPECT_EQ(rel[1], (std::vector<int>{-1, -1, -1, 9, -1, -1, -1, 12, -1, -1, -1, 12}));
  s.send_window = 1;
  rel = send_release(s);
  EXPECT_EQ(rel[0], (std::vector<int>{-1, 2, -1, 6, -1, -1, -1, 11, -1, -1, -1, -1}));
  EXPECT_EQ(rel[1], (std::vector<int>{-1, -1, -1, 6, -1, -1, -1, 10, -1, -1, -1, 12}));
  // forward-only: nothing comes back, so only the window frees a send before the end
  const Schedule f = make_forward_only(2, 3);
  EXPECT_EQ(send_release(f)[0], (std::vector<int>{-1, 2, -1, 4, -1, 6}));
}

// The window costs no bubble where every rank keeps pace: a wait it makes is for a send whose
// receive strict commit would already have waited for.
TEST(Simulator, SendWindowCostsNoTime) {
  for (const auto& kind : kKinds)
    for (int P : {2, 4, 8})
      for (int C : counts_for(kind, P))
        for (const Costs& c : {Costs{1, 2, 1, 3, 0}, Costs{1, 3, 1.5, 3.5, 0.3}}) {
          Schedule s = make_schedule(kind, P, C);
          const SimResult with = simulate(s, c);
          s.send_window = 0;
          EXPECT_NEAR(with.makespan, simulate(s, c).makespan, 1e-9)
              << kind << " P=" << P << " C=" << C;
        }
}

// The generated op lists are frozen: a refactor of the generators must give the same lists op
// for op (issue #12 checked 585 schedules against the generators before it). FNV-1a of every
// rank's format_rank (messages included) and bounds, over a grid; a deliberate change to a
// schedule updates the constant, with the reason in the commit.
uint64_t fingerprint(const std::string& kind) {
  uint64_t h = 1469598103934665603ull;
  auto mix = [&](const std::string& text) {
    for (unsigned char ch : text) h = (h ^ ch) * 1099511628211ull;
  };
  for (int P = 1; P <= 8; ++P)
    for (int C : counts_for(kind, P)) {
      if (kind == "dualpipe" && P % 2 != 0) continue;
      const Schedule s = make_schedule(kind, P, C);
      mix(kind + " " + std::to_string(P) + " " + std::to_string(C) + "\n");
      for (int r = 0; r < P; ++r)
        mix(format_rank(s, r, true) + " | " + std::to_string(s.in_flight_bound[r]) + "\n");
    }
  return h;
}

TEST(Schedule, GeneratedOpListsAreFrozen) {
  EXPECT_EQ(fingerprint("1f1b"), 1019429788742372519ull);
  EXPECT_EQ(fingerprint("zb1p"), 5267755714012393350ull);
  EXPECT_EQ(fingerprint("dualpipe"), 12218824486074287879ull);
  EXPECT_EQ(fingerprint("dualpipev"), 3093668684952321491ull);
}

// One rank (DualPipeV's V turns on rank 0: no messages at all), odd rank counts, minimum counts.
TEST(Schedule, SingleRankAndSmallestCases) {
  struct Case {
    std::string kind;
    int P, C;
  };
  for (const Case& c :
       {Case{"1f1b", 1, 1}, Case{"zb1p", 1, 3}, Case{"dualpipev", 1, 2}, Case{"dualpipev", 1, 5},
        Case{"dualpipe", 2, 4}, Case{"1f1b", 3, 3}, Case{"zb1p", 5, 7}, Case{"dualpipev", 3, 7}}) {
    SCOPED_TRACE(c.kind + " P=" + std::to_string(c.P) + " C=" + std::to_string(c.C));
    const Schedule s = make_schedule(c.kind, c.P, c.C);
    EXPECT_NO_THROW(validate(s));
    if (c.P == 1) {
      for (const Op& op : s.per_rank[0]) EXPECT_FALSE(op.is_message());
    }
  }
}

// The documented in-flight bounds are the measured peaks (tight, on every rank).
TEST(Schedule, ForwardOnlyPassesEveryMicroBatchDownThePipe) {
  // (F<chunk>.<micro-batch>: every rank holds one chunk, its stage)
  const Schedule s = make_forward_only(3, 2);
  EXPECT_EQ(format_rank(s, 0, true), "F0.0 sendA(m0,s0)>1 F0.1 sendA(m1,s0)>1");
  EXPECT_EQ(format_rank(s, 1, true),
            "recvA(m0,s0)<0 F0.0 sendA(m0,s1)>2 recvA(m1,s0)<0 F0.1 sendA(m1,s1)>2");
  EXPECT_EQ(format_rank(s, 2, true), "recvA(m0,s1)<1 F0.0 recvA(m1,s1)<1 F0.1");
  EXPECT_EQ(format_rank(make_forward_only(1, 1), 0, true), "F0.0");
  expect_error([] { make_forward_only(2, 0); }, {"forward-only", "micro-batch"});
}

TEST(Schedule, PeakInFlightIsTheDocumentedBound) {
  for (const auto& kind : kKinds)
    for (int P : {2, 4, 8})
      for (int C : counts_for(kind, P)) {
        SCOPED_TRACE(kind + " P=" + std::to_string(P) + " C=" + std::to_string(C));
        const Schedule s = make_schedule(kind, P, C);
        const std::vector<int> peak = peak_in_flight(s);
        for (int r = 0; r < P; ++r) {
          const int want = kind == "1f1b"       ? P - r
                           : kind == "zb1p"     ? P
                           : kind == "dualpipe" ? P + 1
                                                : 2 * P + 1;
          EXPECT_EQ(s.in_flight_bound[r], want) << "rank " << r;
          EXPECT_EQ(peak[r], want) << "rank " << r;
        }
      }
}

TEST(Schedule, PlacementOfStagesOnRanks) {
  const Schedule d = make_dualpipe(4, 8);
  ASSERT_EQ(d.chunks_of_rank[1].size(), 2u);
  EXPECT_EQ(d.chunks_of_rank[1][0].direction, 0);
  EXPECT_EQ(d.chunks_of_rank[1][0].stage, 1);
  EXPECT_EQ(d.chunks_of_rank[1][1].direction, 1);
  EXPECT_EQ(d.chunks_of_rank[1][1].stage, 2);  // P-1-r
  EXPECT_EQ(d.rank_of(0, 3), 3);               // direction 0 enters at rank 0
  EXPECT_EQ(d.rank_of(4, 0), 3);               // direction 1 enters at rank P-1
  EXPECT_EQ(d.local_mb(5), 1);
  const Schedule v = make_dualpipev(4, 8);
  EXPECT_EQ(v.rank_of(0, 5), 2);  // rank r holds stages r and 2N-1-r
  EXPECT_EQ(v.rank_of(0, 7), 0);  // the loss is on rank 0
  EXPECT_EQ(v.chunks_of_rank[3][0].stage, 3);
  EXPECT_EQ(v.chunks_of_rank[3][1].stage, 4);
}

// ---- the worked examples of SPEC §4.6 -----------------------------------------------------

TEST(Schedule, DualPipeP4C8MatchesSpecExample) {
  const Schedule s = make_dualpipe(4, 8);
  const std::vector<std::string> want = {
      "F0.0 F0.1 F0.2 F1.0 Bi1.0 W1.0 F1.1 F0.3&B1.1 F1.2&B0.0 B1.2 F1.3&B0.1 B1.3 Bi0.2 W0.2 "
      "Bi0.3 W0.3",
      "F0.0 F1.0 F0.1 F1.1 F0.2 B1.0 F1.2&B0.0 F0.3&B1.1 F1.3&B0.1 B1.2 B0.2 Bi1.3 Bi0.3 W1.3 "
      "W0.3",
      "F1.0 F0.0 F1.1 F0.1 F1.2 B0.0 F0.2&B1.0 F1.3&B0.1 F0.3&B1.1 B0.2 B1.2 Bi0.3 Bi1.3 W0.3 "
      "W1.3",
      "F1.0 F1.1 F1.2 F0.0 Bi0.0 W0.0 F0.1 F1.3&B0.1 F0.2&B1.0 B0.2 F0.3&B1.1 B0.3 Bi1.2 W1.2 "
      "Bi1.3 W1.3",
  };
  for (int r = 0; r < 4; ++r) EXPECT_EQ(format_rank(s, r), want[r]) << "rank " << r;
}

TEST(Schedule, DualPipeVN4C10MatchesSpecExample) {
  const Schedule s = make_dualpipev(4, 10);
  EXPECT_EQ(format_rank(s, 0),
            "F0.0 F0.1 F0.2 F0.3 F0.4 F0.5 F0.6 F1.0 Bi1.0 W1.0 F1.1 Bi1.1 W1.1 F1.2 Bi1.2 W1.2 "
            "F1.3 F0.7&B1.3 F1.4&B0.0 F0.8&B1.4 F1.5&B0.1 F0.9&B1.5 F1.6&B0.2 B1.6 F1.7&B0.3 B1.7 "
            "F1.8&B0.4 B1.8 F1.9&B0.5 B1.9 Bi0.6 W0.6 Bi0.7 W0.7 Bi0.8 W0.8 Bi0.9 W0.9");
  // Rank 3: the SPEC elides the steady middle ("..."); it alternates F0.(5+k)&B1.(1+k) and
  // F1.(5+k)&B0.(1+k).
  std::string rank3 = "F0.0 F1.0 F0.1 F1.1 F0.2 F1.2 F0.3 F1.3 F0.4 B1.0 F1.4&B0.0";
  for (int k = 0; k < 5; ++k)
    rank3 += " F0." + std::to_string(5 + k) + "&B1." + std::to_string(1 + k) + " F1." +
             std::to_string(5 + k) + "&B0." + std::to_string(1 + k);
  rank3 += " B1.6 B0.6 B1.7 B0.7 Bi1.8 Bi0.8 Bi1.9 Bi0.9 W1.8 W0.8 W1.9 W0.9";
  EXPECT_EQ(format_rank(s, 3), rank3);
  const std::string r3 = format_rank(s, 3);
  EXPECT_EQ(r3.rfind("F0.0 F1.0 F0.1 F1.1 F0.2 F1.2 F0.3 F1.3 F0.4 B1.0 F1.4&B0.0 F0.5&B1.1", 0),
            0u);
  EXPECT_NE(r3.find("F1.9&B0.5 B1.6 B0.6 B1.7 B0.7 Bi1.8 Bi0.8 Bi1.9 Bi0.9 W1.8 W0.8 W1.9 W0.9"),
            std::string::npos);
}

// The messages of the example: what rank 0 of DualPipe P=4 posts around its first F&B pair.
TEST(Schedule, DualPipeMessagesFollowTheReferencePrimitives) {
  const Schedule s = make_dualpipe(4, 8);
  const std::string r0 = format_rank(s, 0, /*messages=*/true);
  // Step 1 sends each warm-up F0 to rank 1 (rank 0 starts direction 0: nothing to receive). Step
  // 2 runs F0.2 without sending it, receives direction 1's input from rank 1 for F1.0 (whose
  // output is rank 0's loss: no send) and only then sends F0.2's output.
  EXPECT_EQ(r0.rfind("F0.0 sendA(m0,s0)>1 F0.1 sendA(m1,s0)>1 F0.2 recvA(m4,s2)<1 F1.0 "
                     "sendA(m2,s0)>1",
                     0),
            0u)
      << r0;
  // fb_chunk(0, 1) sends both results to rank 1; fb_chunk(1, 0) = recv_fwd(1), recv_bwd(0), the
  // pair, and no sends (rank 0 ends direction 1 and starts direction 0); step 5's bwd_chunk(1)
  // needs no receive (B1.2 starts from rank 0's loss) and sends its input gradient.
  EXPECT_NE(r0.find("F0.3&B1.1 sendA(m3,s0)>1 sendG(m5,s3)>1 recvA(m6,s2)<1 recvG(m0,s1)<1 "
                    "F1.2&B0.0 B1.2 sendG(m6,s3)>1"),
            std::string::npos)
      << r0;
}

// Below the 8 steps' minimum (DualPipe C < 2P or C odd, DualPipeV C < 2N: a batch-size ramp's
// first steps, e.g. DeepSeek-V3's 24 micro-batches at PP16): the schedule of enough micro-batches
// without the extra ones' ops still runs (validate()), every rank runs each of its chunks' micro-
// batches once, direction 0 takes the odd one, and no rank holds more activations than the full
// schedule's bound. C = 2P is the 8 steps themselves.
TEST(Schedule, DualPipeWithFewerOrOddMicroBatches) {
  for (int P : {2, 4, 6, 8, 16})
    for (int C = 2; C <= 2 * P + 3; ++C) {
      SCOPED_TRACE("dualpipe P=" + std::to_string(P) + " C=" + std::to_string(C));
      const Schedule s = make_schedule("dualpipe", P, C);
      ASSERT_NO_THROW(validate(s));
      for (int m = 0; m < C; ++m) EXPECT_EQ(s.direction_of_mb[m], m < (C + 1) / 2 ? 0 : 1);
      const std::vector<int> peak = peak_in_flight(s);
      for (int r = 0; r < P; ++r) {
        const auto [f, b] = compute_counts(s, r);
        EXPECT_EQ(f, C) << "rank " << r;
        EXPECT_EQ(b, C) << "rank " << r;
        EXPECT_LE(peak[r], P + 1) << "rank " << r;
      }
    }
  for (int N : {1, 2, 4, 8})
    for (int C = 1; C < 2 * N; ++C) {
      SCOPED_TRACE("dualpipev N=" + std::to_string(N) + " C=" + std::to_string(C));
      const Schedule s = make_schedule("dualpipev", N, C);
      ASSERT_NO_THROW(validate(s));
      const std::vector<int> peak = peak_in_flight(s);
      for (int r = 0; r < N; ++r) EXPECT_LE(peak[r], 2 * N + 1) << "rank " << r;
    }
  // DeepSeek-V3's ramp at PP16 x DP128: 24 micro-batches, and an odd count mid-ramp
  for (int C : {24, 25, 119}) EXPECT_NO_THROW(validate(make_schedule("dualpipe", 16, C))) << C;
}

// ---- errors from the generators ------------------------------------------------------------

TEST(Schedule, TooFewMicroBatchesAndParity) {
  expect_error([] { make_schedule("1f1b", 4, 3); },
               {"schedule 1f1b: 3 micro-batches are too few for 4 pipeline ranks (need >= 4)"});
  expect_error([] { make_schedule("zb1p", 8, 5); },
               {"schedule zb1p: 5 micro-batches are too few for 8 pipeline ranks (need >= 8)"});
  expect_error([] { make_schedule("dualpipe", 4, 1); },
               {"schedule dualpipe: 1 micro-batches are too few for 4 pipeline ranks (need >= 2)"});
  expect_error([] { make_schedule("dualpipe", 3, 8); },
               {"schedule dualpipe: needs an even number of pipeline ranks", "got 3"});
  expect_error(
      [] { make_schedule("dualpipev", 4, 0); },
      {"schedule dualpipev: 0 micro-batches are too few for 4 pipeline ranks (need >= 1)"});
  expect_error([] { make_schedule("1f1b", 0, 4); }, {"schedule 1f1b: needs at least 1"});
  expect_error([] { make_schedule("gpipe", 4, 8); }, {"schedule gpipe: unknown kind"});
}

// ---- the validator rejects broken schedules -------------------------------------------------

TEST(Validator, MissingBackward) {
  // The last micro-batch's backward (and its gradient send) on rank 1.
  Schedule s = make_1f1b(4, 6);
  auto& ops = s.per_rank[1];
  ops.erase(ops.begin() + find_op(s, 1, bwd(5, 1)));
  ops.erase(ops.begin() + find_op(s, 1, msg(OpKind::SendGrad, 5, 1, 0)));
  expect_error([&] { validate(s); }, {"schedule 1f1b: rank 1, end of list: complete:",
                                      "micro-batch 5 stage 1", "has no backward"});
  // An earlier one: the activation is never freed, so the next forward breaks the bound first.
  Schedule t = make_1f1b(4, 6);
  auto& ops2 = t.per_rank[1];
  ops2.erase(ops2.begin() + find_op(t, 1, bwd(2, 1)));
  ops2.erase(ops2.begin() + find_op(t, 1, msg(OpKind::SendGrad, 2, 1, 0)));
  expect_error([&] { validate(t); }, {"rank 1", "in-flight:", "4 activations in flight"});
}

TEST(Validator, MissingForwardIsCaughtAtItsFirstUse) {
  Schedule s = make_1f1b(4, 6);
  auto& ops = s.per_rank[2];
  const int i = find_op(s, 2, fwd(3, 2));
  ops.erase(ops.begin() + i);
  // The next op is the send of its activation.
  expect_error([&] { validate(s); },
               {"rank 2, op " + std::to_string(i),
                "order:", "activation of micro-batch 3 stage 2 sent before its forward"});
}

TEST(Validator, ForwardBeforeItsInputArrives) {
  Schedule s = make_1f1b(4, 6);
  auto& ops = s.per_rank[2];
  const int i = find_op(s, 2, msg(OpKind::RecvActivation, 1, 1, 1));
  std::swap(ops[i], ops[i + 1]);  // F(1,2) now precedes its receive
  expect_error([&] { validate(s); },
               {"rank 2, op " + std::to_string(i) + " (F0.1)",
                "order:", "forward of micro-batch 1 stage 2 before its input is received",
                "RecvActivation(mb 1, stage 1) from rank 1"});
}

TEST(Validator, BackwardBeforeTheDownstreamGradientOrItsForward) {
  Schedule s = make_1f1b(4, 6);
  auto& ops = s.per_rank[1];
  const int i = find_op(s, 1, msg(OpKind::RecvGrad, 0, 2, 2));
  std::swap(ops[i], ops[i + 1]);
  expect_error([&] { validate(s); }, {"rank 1, op " + std::to_string(i),
                                      "order:", "before its output gradient is received",
                                      "RecvGrad(mb 0, stage 2) from rank 2"});

  Schedule t = make_1f1b(2, 2);  // last stage: backward straight after its forward
  auto& last = t.per_rank[1];
  const int f = find_op(t, 1, fwd(0, 1));
  std::swap(last[f], last[f + 1]);
  expect_error([&] { validate(t); },
               {"rank 1", "backward of micro-batch 0 stage 1 before its forward"});
}

TEST(Validator, WeightBeforeItsInputBackward) {
  Schedule s = make_zb1p(4, 8);
  auto& ops = s.per_rank[2];
  const int w = find_op(s, 2, wgt(3, 2));
  const int b = find_op(s, 2, bi(3, 2));
  ASSERT_LT(b, w);
  const Op moved = ops[w];
  ops.erase(ops.begin() + w);
  ops.insert(ops.begin() + b, moved);
  expect_error([&] { validate(s); },
               {"rank 2, op " + std::to_string(b) + " (W0.3)", "order:",
                "weight gradient of micro-batch 3 stage 2 before its input-backward (Bi)"});
}

TEST(Validator, WeightNeverRunOrRunTwice) {
  Schedule s = make_zb1p(4, 8);
  auto& ops = s.per_rank[0];
  ops.erase(ops.begin() + find_op(s, 0, wgt(7, 0)));
  expect_error([&] { validate(s); }, {"rank 0, end of list: complete:", "micro-batch 7 stage 0",
                                      "weight gradient (W) never runs"});
  Schedule t = make_zb1p(4, 8);
  t.per_rank[3].push_back(wgt(0, 3));
  expect_error([&] { validate(t); }, {"rank 3", "after a full backward or a previous W"});
}

TEST(Validator, DuplicateForward) {
  Schedule s = make_1f1b(2, 4);
  auto& ops = s.per_rank[0];
  ops.insert(ops.begin() + find_op(s, 0, fwd(1, 0)) + 1, fwd(1, 0));
  expect_error([&] { validate(s); }, {"rank 0", "once:", "second forward of micro-batch 1"});
}

TEST(Validator, OpOnTheWrongRankOrWrongPeer) {
  Schedule s = make_1f1b(4, 4);
  s.per_rank[0].insert(s.per_rank[0].begin(), fwd(0, 1));
  expect_error([&] { validate(s); },
               {"rank 0, op 0", "placement:", "stage 1 belongs on rank 1, not rank 0"});
  Schedule t = make_1f1b(4, 4);
  const int i = find_op(t, 1, msg(OpKind::SendActivation, 0, 1, 2));
  t.per_rank[1][i].peer = 3;
  expect_error([&] { validate(t); }, {"rank 1, op " + std::to_string(i),
                                      "placement:", "peer is rank 3, should be rank 2"});
}

TEST(Validator, ReceiveWithNoSend) {
  Schedule s = make_1f1b(4, 6);
  auto& ops = s.per_rank[0];
  ops.erase(ops.begin() + find_op(s, 0, msg(OpKind::SendActivation, 5, 0, 1)));
  expect_error([&] { validate(s); },
               {"rank 1, op", "matching:", "the 6th message from rank 0 to rank 1 is never sent",
                "rank 0 posts only 5 send(s) to rank 1"});
}

TEST(Validator, SendsOutOfOrder) {
  // Rank 0 sends m1 before m0 (each after its forward, so the local order rule is happy), but
  // rank 1 receives m0 first: with one tag (or NCCL), it would get the wrong tensor.
  Schedule s = make_1f1b(2, 4);
  auto& ops = s.per_rank[0];
  ASSERT_EQ(format_rank(s, 0, true).rfind("F0.0 sendA(m0,s0)>1 F0.1 sendA(m1,s0)>1", 0), 0u);
  std::swap(ops[1], ops[2]);  // F0.0 F0.1 sendA(m0) sendA(m1)
  std::swap(ops[2], ops[3]);  // F0.0 F0.1 sendA(m1) sendA(m0)
  expect_error([&] { validate(s); },
               {"rank 0, op 2", "matching:",
                "the 1st message from rank 0 to rank 1 is SendActivation(mb 1, stage 0)",
                "rank 1's 1st receive from rank 0 (op 0) is RecvActivation(mb 0, stage 0)"});
}

TEST(Validator, ExceedingTheInFlightBound) {
  Schedule s = make_1f1b(4, 8);
  s.in_flight_bound[0] = 3;
  expect_error([&] { validate(s); }, {"rank 0, op 6 (F0.3)", "in-flight:",
                                      "4 activations in flight, more than this rank's bound 3"});

  // GPipe ordering (all forwards, then all backwards) under 1F1B's bounds.
  Schedule g = linear_schedule("gpipe", 2, 4);
  RankEmitter e0{g, 0}, e1{g, 1};
  for (int m = 0; m < 4; ++m) e0.forward(m, 0), e0.send_activation(m, 0);
  for (int m = 0; m < 4; ++m) e0.recv_grad(m, 1), e0.backward(m, 0);
  for (int m = 0; m < 4; ++m) e1.recv_activation(m, 0), e1.forward(m, 1);
  for (int m = 0; m < 4; ++m) e1.backward(m, 1), e1.send_grad(m, 1);
  expect_error([&] { validate(g); },
               {"schedule gpipe: rank 0, op 4 (F0.2)", "3 activations in flight", "bound 2"});
  g.in_flight_bound = {4, 4};
  EXPECT_NO_THROW(validate(g));
}

TEST(Validator, PairHalvesMayNotDependOnEachOther) {
  // One rank, one stage: F(0)&B(0) in one pair — the backward would need the pair's own forward.
  Schedule s = empty_schedule("pair", 1, 1, 1, {{0}}, {0});
  s.in_flight_bound = {1};
  s.per_rank[0].push_back(
      {.kind = OpKind::ForwardBackward, .mb = 0, .stage = 0, .mb2 = 0, .stage2 = 0});
  expect_error([&] { validate(s); }, {"rank 0, op 0 (F0.0&B0.0)", "order:",
                                      "backward of micro-batch 0 stage 0 before "
                                      "its forward"});
}

// A receive posted before the compute that its sender is waiting for: a cycle.
TEST(Validator, DeadlockFromReceiveOrder) {
  Schedule s = empty_schedule("cycle", 2, 2, 1, {{0, 1}}, {0});
  s.in_flight_bound = {1, 1};
  RankEmitter e0{s, 0}, e1{s, 1};
  e0.recv_grad(0, 1);  // posted first, so F0.0 waits for it (commit before compute)
  e0.forward(0, 0);
  e0.send_activation(0, 0);
  e0.backward(0, 0);
  e1.recv_activation(0, 0);
  e1.forward(0, 1);
  e1.backward(0, 1);
  e1.send_grad(0, 1);
  expect_error([&] { validate(s); },
               {"schedule cycle: rank 0, op 1 (F0.0): deadlock:",
                "rank 0 is stuck at op 1 (F0.0) waiting for its op 0 (recvG(m0,s1)<1)",
                "rank 1 is stuck at op 1 (F0.0) waiting for its op 0 (recvA(m0,s0)<0)"});
}

// A zero-bubble-style list that only deadlocks when sends are rendezvous (NCCL, large MPI
// messages): rank 0's F(2) waits for its send of m1, which rank 1 only receives after a W that
// waits for its gradient send, which rank 0 only receives after F(2).
TEST(Validator, DeadlockOnlyWithRendezvousSends) {
  Schedule s = empty_schedule("rendezvous", 2, 2, 3, {{0, 1}}, {0, 0, 0});
  s.in_flight_bound = {3, 3};
  RankEmitter e0{s, 0}, e1{s, 1};
  for (int m = 0; m < 3; ++m) e0.forward(m, 0), e0.send_activation(m, 0);
  for (int m = 0; m < 3; ++m) e0.recv_grad(m, 1), e0.backward(m, 0);
  for (int m = 0; m < 3; ++m) {
    e1.recv_activation(m, 0);
    e1.forward(m, 1);
    e1.backward_input(m, 1);
    e1.send_grad(m, 1);
    e1.weight(m, 1);
  }
  expect_error([&] { validate(s); },
               {"deadlock:", "rank 0 is stuck at op 4 (F0.2) waiting for its op 3 (sendA(m1,s0)>1)",
                "rank 1 is stuck at op 4 (W0.0) waiting for its op 3 (sendG(m0,s1)>0)"});
}

// Both neighbours post "receive, then send" between the same computes: fine when receives are
// only posted (the strict replay passes), a deadlock when a receive blocks where it stands.
TEST(Validator, DeadlockOnlyWithBlockingReceives) {
  Schedule s = empty_schedule("blocking", 2, 2, 2, {{0, 1}}, {0, 0});
  s.in_flight_bound = {2, 2};
  RankEmitter e0{s, 0}, e1{s, 1};
  e0.forward(0, 0);
  e0.forward(1, 0);
  e0.recv_grad(0, 1);  // blocks: rank 1 sends it only after receiving m0's activation
  e0.send_activation(0, 0);
  e0.send_activation(1, 0);
  e0.backward(0, 0);
  e0.recv_grad(1, 1);
  e0.backward(1, 0);
  for (int m = 0; m < 2; ++m) {
    e1.recv_activation(m, 0);
    e1.forward(m, 1);
    e1.backward(m, 1);
    e1.send_grad(m, 1);
  }
  expect_error([&] { validate(s); },
               {"schedule blocking: rank 0, op 2 (recvG(m0,s1)<1): deadlock: with blocking "
                "receives and buffered sends",
                "rank 0 blocks in op 2 (recvG(m0,s1)<1) until rank 1 reaches op 3 "
                "(sendG(m0,s1)>0)",
                "rank 1 blocks in op 0 (recvA(m0,s0)<0) until rank 0 reaches op 3"});
  // Sending first makes it valid under both models.
  std::swap(s.per_rank[0][2], s.per_rank[0][4]);
  std::swap(s.per_rank[0][2], s.per_rank[0][3]);
  EXPECT_NO_THROW(validate(s)) << format_rank(s, 0, true);
}

// Two ranks each run two forwards of their own direction, then post both sends: under a window of
// one each waits, at its second send, for a receive the other posts only after its own second
// send. Strict commit waits only before compute ops (the sends all posted by then): valid, as it
// is with the generators' window of two.
TEST(Validator, DeadlockOnlyWithATooSmallSendWindow) {
  Schedule s = empty_schedule("window", 2, 2, 4, {{0, 1}, {1, 0}}, {0, 0, 1, 1});
  s.in_flight_bound = {4, 4};
  for (int r = 0; r < 2; ++r) {
    RankEmitter e{s, r};
    const int mine = 2 * r, theirs = 2 - 2 * r;  // the first micro-batch of each direction
    e.forward(mine, 0), e.forward(mine + 1, 0);
    e.send_activation(mine, 0), e.send_activation(mine + 1, 0);
    e.recv_activation(theirs, 0), e.recv_activation(theirs + 1, 0);
    e.forward(theirs, 1), e.forward(theirs + 1, 1);
    e.backward(theirs, 1), e.backward(theirs + 1, 1);
    e.send_grad(theirs, 1), e.send_grad(theirs + 1, 1);
    e.recv_grad(mine, 1), e.recv_grad(mine + 1, 1);
    e.backward(mine, 0), e.backward(mine + 1, 0);
  }
  EXPECT_EQ(default_send_window(s), 2);
  EXPECT_NO_THROW(validate(s));
  s.send_window = 2;
  EXPECT_NO_THROW(validate(s));
  s.send_window = 1;
  expect_error([&] { validate(s); },
               {"schedule window: rank 0, op 3 (sendA(m1,s0)>1): deadlock: with 1 send(s) in "
                "flight at most",
                "rank 0 is stuck at op 3 (sendA(m1,s0)>1) waiting for its op 2 (sendA(m0,s0)>1)",
                "rank 1 is stuck at op 3"});
}

TEST(Validator, ShapeErrors) {
  Schedule s = make_1f1b(2, 2);
  s.in_flight_bound.pop_back();
  expect_error([&] { validate(s); }, {"schedule 1f1b: shape:", "one entry per rank"});
  Schedule t = make_1f1b(2, 2);
  t.route[0][1] = 0;
  expect_error([&] { validate(t); },
               {"shape:", "chunks_of_rank[0] does not follow from the route"});
}

// ---- simulator: the bubble table of SPEC §4.7 --------------------------------------------

TEST(Simulator, OneF1BBubbleIsPMinus1TimesFPlusB) {
  for (const Costs c : {Costs{1, 2, 1, 3, 0}, Costs{1, 2.5, 1, 3, 0}, Costs{2, 2, 1, 3, 0}})
    for (int P : {2, 4, 8})
      for (int C : {P, 2 * P + 1, 4 * P}) {
        const SimResult r = simulate(make_1f1b(P, C), c);
        EXPECT_DOUBLE_EQ(r.bubble, (P - 1) * (c.F + c.B)) << "P=" << P << " C=" << C;
        EXPECT_DOUBLE_EQ(r.makespan, C * (c.F + c.B) + r.bubble);
        for (int q = 0; q < P; ++q) EXPECT_DOUBLE_EQ(r.idle[q], r.bubble);
      }
}

// ZB-H1's (P-1)(F + B - 2W) holds while a W fits in the gaps it fills (W <= F and W <= B - W);
// beyond that our list gives (P-1) max(F, B - W).
TEST(Simulator, ZB1PBubble) {
  for (const Costs c : {Costs{1, 2, 1, 3, 0}, Costs{1, 2, 0.5, 3, 0}, Costs{1, 2.5, 1, 3, 0},
                        Costs{2, 2, 1, 3, 0}, Costs{1, 1.6, 0.4, 3, 0}})
    for (int P : {2, 4, 8})
      for (int C : {P, 2 * P + 1, 4 * P}) {
        SCOPED_TRACE("P=" + std::to_string(P) + " C=" + std::to_string(C));
        const SimResult z = simulate(make_zb1p(P, C), c);
        EXPECT_NEAR(z.bubble, (P - 1) * (c.F + c.B - 2 * c.W), 1e-9);
        EXPECT_LT(z.bubble, simulate(make_1f1b(P, C), c).bubble);
      }
  for (const Costs c : {Costs{1, 2, 1.5, 3, 0}, Costs{0.5, 2, 1, 3, 0}})
    EXPECT_NEAR(simulate(make_zb1p(4, 12), c).bubble, 3 * std::max(c.F, c.B - c.W), 1e-9);
}

// Under the strict commit rule a W waits for the gradient it just sent, so ZB1P loses part of
// its gain; 1F1B and DualPipe are placed so that it costs them nothing.
TEST(Simulator, StrictCommit) {
  const Costs c{1, 2, 1, 3, 0};
  EXPECT_DOUBLE_EQ(simulate(make_1f1b(4, 12), c, true).bubble, 9);
  EXPECT_DOUBLE_EQ(simulate(make_dualpipe(4, 12), c, true).bubble, 2);
  EXPECT_DOUBLE_EQ(simulate(make_dualpipev(4, 12), c, true).bubble, 6);
  EXPECT_GT(simulate(make_zb1p(4, 12), c, true).bubble, simulate(make_zb1p(4, 12), c).bubble);
}

// (PP/2 - 1)(F&B + B - 3W), PP = stages (P for DualPipe, 2N for DualPipeV), as the maximum
// idle time over ranks. Our replay of the step rules gives it exactly when F = W = B/2 (chunks of
// unit forward, input-backward and weight-backward time), for any F&B time.
TEST(Simulator, DualPipeBubbleMatchesSpecFormula) {
  for (const Costs c : {Costs{1, 2, 1, 3, 0}, Costs{1, 2, 1, 2, 0}, Costs{1, 2, 1, 2.5, 0},
                        Costs{1.5, 3, 1.5, 3.5, 0}})
    for (int P : {2, 4, 8}) {
      for (int C : counts_for("dualpipe", P)) {
        SCOPED_TRACE("dualpipe P=" + std::to_string(P) + " C=" + std::to_string(C));
        const SimResult r = simulate(make_dualpipe(P, C), c);
        EXPECT_NEAR(r.bubble, (P / 2.0 - 1) * (c.FB + c.B - 3 * c.W), 1e-9);
      }
      for (int C : counts_for("dualpipev", P)) {
        SCOPED_TRACE("dualpipev N=" + std::to_string(P) + " C=" + std::to_string(C));
        const SimResult r = simulate(make_dualpipev(P, C), c);
        EXPECT_NEAR(r.bubble, (2 * P / 2.0 - 1) * (c.FB + c.B - 3 * c.W), 1e-9);
      }
    }
}

// Away from F = W = B/2 the formula is an estimate: the step rules' critical path comes out
// below it when W < B/2 and above it when F > W. Pinned here so a change is noticed.
TEST(Simulator, DualPipeBubbleAwayFromUnitChunks) {
  EXPECT_NEAR(simulate(make_dualpipe(4, 16), Costs{1, 2, 0.5, 2.5, 0}).bubble, 2.5, 1e-9);  // 3
  EXPECT_NEAR(simulate(make_dualpipe(4, 16), Costs{2, 2, 1, 3, 0}).bubble, 4, 1e-9);        // 2
  EXPECT_NEAR(simulate(make_dualpipe(8, 32), Costs{1, 2.5, 1, 2.8, 0}).bubble, 5.9, 1e-9);  // 6.9
}

TEST(Simulator, BubbleDoesNotGrowWithMicroBatches) {
  const Costs c{1, 2, 1, 2.5, 0};
  for (const auto& kind : kKinds) {
    const std::vector<int> counts = counts_for(kind, 4);
    const double b0 = simulate(make_schedule(kind, 4, counts.front()), c).bubble;
    for (int C : counts) EXPECT_NEAR(simulate(make_schedule(kind, 4, C), c).bubble, b0, 1e-9);
  }
}

TEST(Simulator, CommLatencyOnlyAddsTime) {
  for (const auto& kind : kKinds) {
    const Schedule s = make_schedule(kind, 4, 16);
    const SimResult a = simulate(s, Costs{1, 2, 1, 3, 0});
    const SimResult b = simulate(s, Costs{1, 2, 1, 3, 0.25});
    EXPECT_GT(b.makespan, a.makespan) << kind;
    EXPECT_EQ(a.busy, b.busy) << kind;
    EXPECT_GT(b.bubble_fraction, a.bubble_fraction) << kind;
  }
}

// simulate_shared: with a core per process it is simulate() with cost = work + wait; on one core
// a node that is never idle (no latency: a waiting rank always waits for one that computes)
// finishes after exactly the sum of every process's work; and a DualPipe step on 2 cores for 4
// ranks is never shorter than either bound (critical path, work over cores).
TEST(Simulator, SharedCores) {
  const Costs c{1, 2, 1, 2.5, 0};
  const auto work = [&](int, const Op& op) { return 0.8 * op_cost(op, c); };
  const auto wait = [&](int, const Op& op) { return 0.2 * op_cost(op, c); };
  const auto whole = [&](int, const Op& op) { return op_cost(op, c); };
  for (const auto& kind : kKinds) {
    const Schedule s = make_schedule(kind, 4, counts_for(kind, 4).back());
    const SimResult plain = simulate(s, whole, 0.1);
    const SimResult roomy = simulate_shared(s, work, wait, 0.1, 8, 2);  // 8 processes, 8 cores
    EXPECT_NEAR(roomy.makespan, plain.makespan, 1e-9) << kind;
    for (int r = 0; r < s.ranks; ++r) EXPECT_NEAR(roomy.busy[r], plain.busy[r], 1e-9) << kind;
    const auto none = [](int, const Op&) { return 0.0; };
    double total = 0;
    for (int r = 0; r < s.ranks; ++r)
      for (const Op& op : s.per_rank[r]) total += work(r, op);
    EXPECT_NEAR(simulate_shared(s, work, none, 0, 1, 1).makespan, total, 1e-9) << kind;
    EXPECT_NEAR(simulate_shared(s, work, none, 0, 2, 2).makespan, total, 1e-9) << kind;
    const SimResult two = simulate_shared(s, work, wait, 0.1, 2, 1);
    EXPECT_GE(two.makespan, plain.makespan - 1e-9) << kind;
    EXPECT_GE(two.makespan, total / 2 - 1e-9) << kind;
    for (int r = 0; r < s.ranks; ++r)
      for (size_t i = 0; i < s.per_rank[r].size(); ++i)
        if (!s.per_rank[r][i].is_message()) {
          EXPECT_GE(two.end[r][i], two.start[r][i]) << kind;
        }
  }
}

TEST(Simulator, RefusesAnInvalidSchedule) {
  Schedule s = make_1f1b(2, 2);
  s.per_rank[1].pop_back();
  expect_error([&] { simulate(s, Costs{}); }, {"schedule 1f1b"});
}

}  // namespace
}  // namespace moetron::pipeline
