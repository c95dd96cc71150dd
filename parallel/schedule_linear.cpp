// The one-direction schedules, 1F1B and ZB1P: one generator, the weight-gradient placement its
// only difference.
//
// P ranks, stage r on rank r, C >= P micro-batches. Rank r runs one skeleton:
//   warm-up    P-1-r forwards
//   steady     C-(P-1-r) times: forward of the next micro-batch, backward of the oldest
//   cool-down  the remaining P-1-r backwards
// Messages are placed as Megatron batches them: after a steady forward, "send activation +
// receive gradient"; after a steady backward, "send gradient + receive next activation" — each
// neighbour posts the complementary pair before its next compute, which is what makes the strict
// commit rule deadlock-free.
//
// 1F1B (one forward, one backward; PipeDream-Flush / Megatron's non-interleaved schedule): each
// backward is a full backward B, so at most P-r micro-batches are in flight on rank r. Bubble
// with comm = 0: (P-1)(F+B) per rank.
//
// ZB1P: ZB-H1 of "Zero Bubble Pipeline Parallelism" (Qi et al., 2023) — the backward split into
// Bi (input gradient, on the critical path) and W (weight gradient, filler). The forwards and
// Bi's keep the 1F1B order, and the weight gradient of micro-batch j runs right after Bi(j + r):
// rank r holds r weight gradients back, which fill its cool-down bubbles (rank P-1 ends its Bi
// chain earliest and has the most to fill), and all remaining W's close the list. With F = Bi = W
// this packs the cool-down exactly: bubble (P-1)(F + B - 2W) in SPEC §4.7 terms (B = Bi + W), vs
// (P-1)(F + B) for 1F1B.
//   Memory: forwards run at 1F1B's pace (at most P-r ahead of the Bi's), and with the r held-back
// W's every rank holds up to P micro-batches until their W — the peak of 1F1B's rank 0, which is
// the "same activation memory as 1F1B" of the paper and SPEC §4.7 (bound P on every rank). The
// part a W still needs (the GEMM inputs and output gradients) is smaller than a forward's saved
// activations, so this count is conservative.
//   The W is placed before the next receive is posted, so that with an executor that waits only
// for the receives a compute consumes, W never waits for a message; under the strict commit
// rule (DualPipe reference style) it waits for the gradient it just sent, which is deadlock-free
// but slower — bench_schedules prints both.
#include <stdexcept>

#include "parallel/schedule.h"

namespace moetron::pipeline {

// Shared by the one-direction generators: checks and the linear route.
Schedule linear_schedule(const std::string& kind, int P, int C) {
  if (P < 1)
    throw std::invalid_argument("schedule " + kind + ": needs at least 1 pipeline rank, got " +
                                std::to_string(P));
  if (C < P) throw std::invalid_argument(too_few_microbatches(kind, C, P, P));
  std::vector<int> route(P);
  for (int s = 0; s < P; ++s) route[s] = s;
  Schedule s = empty_schedule(kind, P, P, C, {route}, std::vector<int>(C, 0));
  for (int r = 0; r < P; ++r) s.in_flight_bound[r] = P - r;
  return s;
}

namespace {

// The skeleton on rank r. split_backward: ZB1P (Bi, and W(j) after Bi(j + r)); else 1F1B (B).
void one_direction_rank(Schedule& s, int r, bool split_backward) {
  const int P = s.ranks, C = s.microbatches;
  RankEmitter e{s, r};
  int next_w = 0;  // W's run in micro-batch order
  auto weights_upto = [&](int j) {
    for (; next_w <= j; ++next_w) e.weight(next_w, r);
  };
  auto backward = [&](int m) {  // receive d output, backward, send d input, then W's due
    e.recv_grad(m, r + 1);
    if (split_backward)
      e.backward_input(m, r);
    else
      e.backward(m, r);
    e.send_grad(m, r);
    if (split_backward) weights_upto(m - r);
  };
  const int warm = P - 1 - r, steady = C - warm;  // steady >= 1 since C >= P
  for (int m = 0; m < warm; ++m) {
    e.recv_activation(m, r - 1);
    e.forward(m, r);
    e.send_activation(m, r);
  }
  e.recv_activation(warm, r - 1);
  for (int i = 0; i < steady; ++i) {
    const int f = warm + i;  // forward f, then backward i
    e.forward(f, r);
    e.send_activation(f, r);
    backward(i);
    if (i + 1 < steady) e.recv_activation(f + 1, r - 1);
  }
  for (int m = steady; m < C; ++m) backward(m);
  if (split_backward) weights_upto(C - 1);
}

Schedule make_one_direction(const std::string& kind, int P, int C, bool split_backward) {
  Schedule s = linear_schedule(kind, P, C);
  for (int r = 0; r < P; ++r) {
    if (split_backward) s.in_flight_bound[r] = P;
    one_direction_rank(s, r, split_backward);
  }
  s.send_window = default_send_window(s);
  return s;
}

}  // namespace

Schedule make_1f1b(int P, int C) { return make_one_direction("1f1b", P, C, false); }
Schedule make_zb1p(int P, int C) { return make_one_direction("zb1p", P, C, true); }

}  // namespace moetron::pipeline
