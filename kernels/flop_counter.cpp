// The GEMM FLOP counter (see flop_counter.h): two relaxed atomics, a per-thread recompute depth
// and a per-thread running total.
#include "kernels/flop_counter.h"

#include <atomic>

namespace moetron::kernels::flop_counter {

namespace {
std::atomic<bool> g_on{false};
std::atomic<int64_t> g_executed{0}, g_recompute{0};
thread_local int t_recompute_depth = 0;
thread_local int64_t t_executed = 0;
}  // namespace

void set_counting(bool on) { g_on.store(on, std::memory_order_relaxed); }
bool counting() { return g_on.load(std::memory_order_relaxed); }

void reset() {
  g_executed.store(0, std::memory_order_relaxed);
  g_recompute.store(0, std::memory_order_relaxed);
}

GemmFlops read() {
  return {g_executed.load(std::memory_order_relaxed), g_recompute.load(std::memory_order_relaxed)};
}

void add(int64_t flops, bool recompute) {
  if (!counting()) return;
  g_executed.fetch_add(flops, std::memory_order_relaxed);
  t_executed += flops;
  if (recompute || t_recompute_depth > 0) g_recompute.fetch_add(flops, std::memory_order_relaxed);
}

int64_t thread_executed() { return t_executed; }

RecomputeScope::RecomputeScope() { ++t_recompute_depth; }
RecomputeScope::~RecomputeScope() { --t_recompute_depth; }

}  // namespace moetron::kernels::flop_counter
