// 1F1B (one forward, one backward; PipeDream-Flush / Megatron's non-interleaved schedule).
//
// P ranks, stage r on rank r, C >= P micro-batches. Rank r:
//   warm-up    P-1-r forwards
//   steady     C-(P-1-r) times: forward of the next micro-batch, full backward of the oldest
//   cool-down  the remaining P-1-r backwards
// so at most P-r micro-batches are in flight on rank r. Messages are placed as Megatron batches
// them: after a steady forward, "send activation + receive gradient"; after a steady backward,
// "send gradient + receive next activation" — each neighbour posts the complementary pair before
// its next compute, which is what makes the strict commit rule deadlock-free. Bubble with comm =
// 0: (P-1)(F+B) per rank.
#include <stdexcept>

#include "parallel/schedule.h"

namespace moetron::pipeline {

// Shared by the single-direction generators (1f1b, zb1p): checks and the linear route.
Schedule linear_schedule(const std::string& kind, int P, int C) {
  if (P < 1)
    throw std::invalid_argument("schedule " + kind + ": needs at least 1 pipeline rank, got " +
                                std::to_string(P));
  if (C < P)
    throw std::invalid_argument("schedule " + kind + ": " + std::to_string(C) +
                                " micro-batches are too few for " + std::to_string(P) +
                                " pipeline ranks (need >= " + std::to_string(P) + ")");
  std::vector<int> route(P);
  for (int s = 0; s < P; ++s) route[s] = s;
  Schedule s = empty_schedule(kind, P, P, C, {route}, std::vector<int>(C, 0));
  for (int r = 0; r < P; ++r) s.in_flight_bound[r] = P - r;
  return s;
}

Schedule make_1f1b(int P, int C) {
  Schedule s = linear_schedule("1f1b", P, C);
  for (int r = 0; r < P; ++r) {
    RankEmitter e{s, r};
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
      e.recv_grad(i, r + 1);
      e.backward(i, r);
      e.send_grad(i, r);
      if (i + 1 < steady) e.recv_activation(f + 1, r - 1);
    }
    for (int m = steady; m < C; ++m) {
      e.recv_grad(m, r + 1);
      e.backward(m, r);
      e.send_grad(m, r);
    }
  }
  return s;
}

}  // namespace moetron::pipeline
