// The op profile: where a step's device time goes, op by op (what torch.profiler's key_averages
// table tells a PyTorch user, for the ops of kernels/ops.h). The trace (parallel/trace.h) times
// the host: on a GPU that is when work was enqueued, not when it ran. This times the device.
//
// Off by default: the dispatcher (kernels/dispatch.cpp) then pays one relaxed load per op. While
// on, every op the dispatcher runs is timed on its device:
//   CPU, Guard  the host clock around the call (the op runs inside it);
//   CUDA        two events on the op's stream around its launches, read when the profile is
//               collected: the time between the op's start and end on the GPU (which includes any
//               time the stream spent waiting inside the op, e.g. for the communication stream).
// Only the outermost op of a thread is timed: an op made of ops counts once, under its own name.
// Each op's GEMM FLOPs are the FLOP counter's (kernels/flop_counter.h) for the calls the thread
// made inside it, so the table gives TFLOP/s per GEMM op; the counter must be counting (the
// trainer turns it on for profiled steps). Ops on the Meta device run nothing and are not timed.
// Thread safe: ops may be issued from several threads; records are merged under a mutex.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "kernels/exec.h"

namespace moetron::kernels::op_profile {

struct Row {
  std::string op;
  int64_t calls = 0;
  double seconds = 0;  // device time, summed over the calls
  int64_t flops = 0;   // GEMM FLOPs, summed (0 for ops that are not GEMMs)
};

void set_enabled(bool on);
bool enabled();
// The totals per op since the last reset, the largest time first (ties: by name). Waits for the
// GPU work timed so far to finish.
std::vector<Row> collect();
// Forgets everything recorded (waiting for timed GPU work first).
void reset();

// Off while alive, then as it was (what validation inside a profiled step holds).
class Paused {
 public:
  Paused() : was_(enabled()) { set_enabled(false); }
  ~Paused() { set_enabled(was_); }
  Paused(const Paused&) = delete;
  Paused& operator=(const Paused&) = delete;

 private:
  bool was_;
};

// Times one op call while the profile is on (what the dispatcher opens around each op). `op` must
// be a string literal (kept by pointer).
class Scope {
 public:
  Scope(const Exec& ex, const char* op);
  ~Scope();
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  const char* op_ = nullptr;  // null: not timed (off, Meta, or inside another op)
  Exec ex_;
  int64_t start_ns_ = 0;
  void* start_event_ = nullptr;  // CUDA: the start event
  int64_t flops0_ = 0;
  int uncaught_ = 0;
  bool counted_ = false;  // this scope raised the thread's op depth
};

}  // namespace moetron::kernels::op_profile
