// ZB1P draft
#include <stdexcept>

#include "parallel/schedule.h"

namespace moetron::pipeline {

Schedule make_zb1p(int P, int C) {
  Schedule s = linear_schedule("zb1p", P, C);
  for (int r = 0; r < P; ++r) {
    RankEmitter e{s, r};
    const int warm = P - 1 - r, steady = C - warm;
    for (int m = 0; m < warm; ++m) {
      e.recv_activation(m, r - 1);
      e.forward(m, r);
      e.send_activation(m, r);
    }
    e.recv_activation(warm, r - 1);
    for (int i = 0; i < steady; ++i) {
      const int f = warm + i;
      e.forward(f, r);
      e.send_activation(f, r);
      e.recv_grad(i, r + 1);
      e.backward_input(i, r);
      e.send_grad(i, r);
      e.weight(i, r);
      if (i + 1 < steady) e.recv_activation(f + 1, r - 1);
    }
    for (int m = steady; m < C; ++m) {
      e.recv_grad(m, r + 1);
      e.backward_input(m, r);
      e.send_grad(m, r);
    }
    for (int m = steady; m < C; ++m) e.weight(m, r);
  }
  return s;
}

}  // namespace moetron::pipeline
