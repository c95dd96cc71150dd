// ZB1P: ZB-H1 of "Zero Bubble Pipeline Parallelism" (Qi et al., 2023) — 1F1B with the backward
// split into Bi (input gradient, on the critical path) and W (weight gradient, filler).
//
// P ranks, stage r on rank r, C >= P micro-batches. Rank r runs the 1F1B order of forwards and
// input-backwards (warm-up P-1-r forwards, steady F/Bi pairs, cool-down Bi's) and places the
// weight gradient of micro-batch j right after Bi(j + r): rank r holds r weight gradients back,
// which fill its cool-down bubbles (rank P-1 ends its Bi chain earliest and has the most to
// fill), and all remaining W's close the list. With F = Bi = W this packs the cool-down exactly:
// bubble (P-1)(F + B - 2W) in SPEC §4.7 terms (B = Bi + W), vs (P-1)(F + B) for 1F1B.
//
// Memory: forwards run at 1F1B's pace (at most P-r ahead of the Bi's), and with the r held-back
// W's every rank holds up to P micro-batches until their W — the peak of 1F1B's rank 0, which is
// the "same activation memory as 1F1B" of the paper and SPEC §4.7 (bound P on every rank). The
// part a W still needs (the GEMM inputs and output gradients) is smaller than a forward's saved
// activations, so this count is conservative.
//
// The W is placed before the next receive is posted, so that with an executor that waits only
// for the receives a compute consumes, W never waits for a message; under the strict commit
// rule (DualPipe reference style) it waits for the gradient it just sent, which is deadlock-free
// but slower — bench_schedules prints both.
#include "parallel/schedule.h"

namespace moetron::pipeline {

Schedule make_zb1p(int P, int C) {
  Schedule s = linear_schedule("zb1p", P, C);
  for (int r = 0; r < P; ++r) {
    s.in_flight_bound[r] = P;
    RankEmitter e{s, r};
    int next_w = 0;  // W's run in micro-batch order
    auto weights_upto = [&](int j) {
      for (; next_w <= j; ++next_w) e.weight(next_w, r);
    };
    const int warm = P - 1 - r, steady = C - warm;
    for (int m = 0; m < warm; ++m) {
      e.recv_activation(m, r - 1);
      e.forward(m, r);
      e.send_activation(m, r);
    }
    e.recv_activation(warm, r - 1);
    for (int i = 0; i < steady; ++i) {
      const int f = warm + i;  // forward f, then input-backward i
      e.forward(f, r);
      e.send_activation(f, r);
      e.recv_grad(i, r + 1);
      e.backward_input(i, r);
      e.send_grad(i, r);
      weights_upto(i - r);
      if (i + 1 < steady) e.recv_activation(f + 1, r - 1);
    }
    for (int m = steady; m < C; ++m) {
      e.recv_grad(m, r + 1);
      e.backward_input(m, r);
      e.send_grad(m, r);
      weights_upto(m - r);
    }
    weights_upto(C - 1);
  }
  return s;
}

}  // namespace moetron::pipeline
