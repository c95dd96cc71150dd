// The GEMM FLOP counter: a process-wide count of the floating-point operations the GEMM-type ops
// execute (2 per multiply-accumulate), kept by the op dispatcher (kernels/dispatch.cpp) so that
// every backend is counted the same way. Off by default: normal runs pay one relaxed atomic load
// per GEMM op and nothing else.
//
// What counts, per op (shapes as in kernels/ops.h):
//   gemm                            2 M N K
//   grouped_gemm, grouped_fp8_fprop, grouped_fp8_linear_dgrad     2 rows N K
//   grouped_gemm_wgrad              2 rows M N
//   grouped_fp8_linear_wgrad(_f32)  2 rows N K
//   fp8_fprop, fp8_linear_dgrad, fp8_linear_wgrad(_f32)            2 M N K
//   lm_head_ce_forward              2 N D V            (the logits, chunk by chunk)
//   lm_head_ce_backward             2 N D V recompute  (the logits again) + 4 N D V (dh and dW)
// where rows = off[G] - off[0], the rows of all groups (off is host memory: kernels/ops.h).
// Attention is not a GEMM op (its core is counted by the formula, model/flops.h, not here);
// neither is anything on the Meta device, which runs nothing.
//
// Executed vs model FLOPs: `executed` is everything the GEMM ops ran; `recompute` the part of it
// that computes again what a forward already computed — the head's logits in its chunked backward,
// and whatever runs inside a RecomputeScope (model layers open one around a recomputed forward:
// MLA's up-projections under activations.recompute_mla_up). executed - recompute is the model's
// GEMM FLOPs, which model/flops.h predicts exactly (tests/test_trainer_flops_count.cpp).
//
// Thread safety: the counts are atomics (ops may be issued from several threads, e.g. pipeline
// stages); a RecomputeScope marks only the thread that opened it, which is the thread that issues
// the layer's ops.
#pragma once

#include <cstdint>

namespace moetron::kernels {

struct GemmFlops {
  int64_t executed = 0;   // every GEMM op run while counting, recompute included
  int64_t recompute = 0;  // the part of `executed` that recomputes a forward GEMM
  int64_t model() const { return executed - recompute; }
};

namespace flop_counter {

void set_counting(bool on);  // off by default
bool counting();
void reset();  // both counts to 0
GemmFlops read();
// Adds `flops` to executed, and to recompute as well inside a RecomputeScope on this thread or
// when `recompute` is set. No-op while counting is off.
void add(int64_t flops, bool recompute = false);
// What add() has counted on the calling thread since it started (recompute included): the op
// profile's FLOPs per op (kernels/op_profile.h) are differences of it.
int64_t thread_executed();

// While alive, the GEMMs this thread issues count as recompute. Nests.
class RecomputeScope {
 public:
  RecomputeScope();
  ~RecomputeScope();
  RecomputeScope(const RecomputeScope&) = delete;
  RecomputeScope& operator=(const RecomputeScope&) = delete;
};

}  // namespace flop_counter

}  // namespace moetron::kernels
