// The op profile (see op_profile.h): host-clock records for the host backends, event pairs for
// CUDA resolved at collect(), totals per op name under one mutex.
#include "kernels/op_profile.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <exception>
#include <map>
#include <mutex>

#include "kernels/flop_counter.h"
#if MOETRON_HAVE_CUDA
#include "kernels/cuda/runtime.h"
#endif

namespace moetron::kernels::op_profile {

namespace {

std::atomic<bool> g_on{false};
thread_local int t_depth = 0;  // ops of this thread open (timed or not)

struct Totals {
  int64_t calls = 0;
  double seconds = 0;
  int64_t flops = 0;
};
// A CUDA op whose end event the GPU may not have reached yet.
struct Pending {
  const char* op;
  void* start;
  void* end;
  int64_t flops;
};

std::mutex g_mu;
std::map<std::string, Totals>& totals() {
  static auto& t = *new std::map<std::string, Totals>;
  return t;
}
std::vector<Pending>& pending() {
  static auto& p = *new std::vector<Pending>;
  return p;
}

void add(const char* op, double seconds, int64_t flops) {
  Totals& t = totals()[op];
  ++t.calls, t.seconds += seconds, t.flops += flops;
}

// Under g_mu: the pending CUDA records into the totals (waiting for each end event). The records
// leave the list first, so a failure part-way (a failed device) never returns an event to the pool
// twice; the rest are then left to the driver.
void resolve() {
  std::vector<Pending> list;
  list.swap(pending());
#if MOETRON_HAVE_CUDA
  for (const Pending& p : list) {
    const double s = kernels::gpu::timing_seconds(p.start, p.end);
    kernels::gpu::release_timing_event(p.start);
    kernels::gpu::release_timing_event(p.end);
    add(p.op, s, p.flops);
  }
#endif
}

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

}  // namespace

void set_enabled(bool on) { g_on.store(on, std::memory_order_relaxed); }
bool enabled() { return g_on.load(std::memory_order_relaxed); }

std::vector<Row> collect() {
  const std::lock_guard<std::mutex> lk(g_mu);
  resolve();
  std::vector<Row> rows;
  for (const auto& [op, t] : totals()) rows.push_back({op, t.calls, t.seconds, t.flops});
  std::stable_sort(rows.begin(), rows.end(),
                   [](const Row& a, const Row& b) { return a.seconds > b.seconds; });
  return rows;
}

void reset() {
  const std::lock_guard<std::mutex> lk(g_mu);
  resolve();
  totals().clear();
}

Scope::Scope(const Exec& ex, const char* op) : ex_(ex) {
  if (!enabled() || ex.device == Device::Meta) return;
  if (t_depth == 0) {  // (inside another op: that one's time)
    uncaught_ = std::uncaught_exceptions();
    flops0_ = flop_counter::thread_executed();
#if MOETRON_HAVE_CUDA
    if (ex.device == Device::CUDA) start_event_ = gpu::timing_event(gpu::stream_of(ex));
#endif
    start_ns_ = now_ns();
    op_ = op;
  }
  ++t_depth, counted_ = true;  // (last: a constructor that threw runs no destructor)
}

// A failed op is not timed. Recording the end event may fail only if CUDA does, which the next op
// reports: a destructor must not throw.
Scope::~Scope() {
  if (counted_) --t_depth;
  if (!op_) return;
  const bool failed = std::uncaught_exceptions() > uncaught_;
  const int64_t flops = flop_counter::thread_executed() - flops0_;
  if (!start_event_) {
    if (failed) return;
    const double s = 1e-9 * static_cast<double>(now_ns() - start_ns_);
    const std::lock_guard<std::mutex> lk(g_mu);
    add(op_, s, flops);
    return;
  }
#if MOETRON_HAVE_CUDA
  try {
    if (failed) {
      gpu::release_timing_event(start_event_);
      return;
    }
    void* end = gpu::timing_event(gpu::stream_of(ex_));
    const std::lock_guard<std::mutex> lk(g_mu);
    pending().push_back({op_, start_event_, end, flops});
  } catch (const std::exception&) {  // the end event not recorded: the start goes back alone
    gpu::release_timing_event(start_event_);
  }
#endif
}

}  // namespace moetron::kernels::op_profile
