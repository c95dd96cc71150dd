// Traces (run.trace_steps): the timeline of chosen steps on every rank, merged into one Chrome
// Trace Event file that Perfetto (ui.perfetto.dev) and chrome://tracing open (DESIGN-NOTES Part B
// §3.4).
//
// Recording: one process-wide Recorder holds a fixed-capacity array of plain events, allocated
// once (reserve) before the first traced step. record() is one branch while off and a store while
// on; an event beyond the capacity is counted (dropped), never allocated. An event holds pointers
// to string literals (its name and its argument keys), up to four integer arguments and two
// steady-clock times in nanoseconds (CLOCK_MONOTONIC: one clock per node).
//
// Tracks (a "thread" of the rank's process in the file):
//   step       one slice per traced step: from the previous step's end to this one's (StepClock)
//   compute    compute ops (F, B, BI, W, F&B) with, nested, the pieces of overlapped pairs and the
//              waits for expert exchanges
//   pp wait    blocked on pipeline messages (receives before a compute op, sends at the end)
//   progress   the executor between ops: posting PP messages (a send's copy), returning
//              buffers, and the MPI progress of PP sends and EP exchanges after each op
//   data       the loader's next batch
//   optimizer  ZeRO-1 reduce (reduce-scatter, norm) and update (AdamW, all-gather)
//   host       the rest: the tied embedding's all-reduce, the expert-bias update, the step's
//              reductions, validation, checkpoint, metrics, the wait for the slowest rank
//   pp send, pp recv   pipeline messages from post to completion (as first observed: a send's
//              test or wait, a receive's wait), with a flow arrow from each send to its receive
//   ep         expert exchanges from post to completion (as first observed by progress() or a
//              wait)
//   dp         ZeRO-1 bucket collectives (reduce-scatter, all-gather)
// Compute to host tile the step: on one rank their top-level slices do not overlap and cover the
// step but for a few microseconds of bookkeeping between them, so their sum is the step's time
// (tests/e2e_trace.sh checks 5 %). The last four are in flight beside them; overlapping
// events of one kind get lanes ("ep 2", ...), since a track's slices must nest.
//
// Writing (write_merged, collective over the world): each rank puts its events on rank 0's clock
// (offset 0 for ranks on rank 0's host; else Cristian's method: the minimum-round-trip sample of
// 8 ping-pongs), formats them as JSON, and rank 0 writes them all into one file:
//   {"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {...}}
// with "X" complete events (ts, dur in microseconds from the earliest event), pid = rank
// (process_name "rank R (pp p, dp d, ep e)"), tid = track (thread_name), cat "part" on the
// top-level slices of the tiling tracks (nested: "detail"), "step" and "comm" on the others, and
// flow events "s" (in the send) / "f" (in the receive, binding to the enclosing slice) with one
// id per PP message. `moetron estimate --trace` is meant to write its predicted timeline through
// the same format_process / write_chrome_trace.
#pragma once

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moetron {
class Communicator;
}

namespace moetron::trace {

enum class Track : uint8_t {
  Step,
  Compute,
  PpWait,
  Progress,
  Data,
  Optimizer,
  Host,
  PpSend,
  PpRecv,
  Ep,
  Dp
};
inline constexpr int kTracks = 11;
const char* track_name(Track t);
// Whether a track's top-level slices tile the step (compute to host), or run beside them.
inline bool tiles(Track t) { return t != Track::Step && t < Track::PpSend; }

struct Event {
  int64_t t0 = 0, t1 = 0;      // steady-clock nanoseconds
  const char* name = nullptr;  // a string literal
  const char* keys = nullptr;  // the arguments' names, comma-separated ("mb,stage"): a literal
  int64_t arg[4] = {0, 0, 0, 0};
  Track track = Track::Host;
};

class Recorder {
 public:
  // Allocates room for `capacity` events (the one allocation; again only to change it) and
  // forgets the events recorded so far.
  void reserve(size_t capacity);
  void set_active(bool on) { active_ = on && cap_ > 0; }
  bool active() const { return active_; }
  void record(const Event& e) {
    if (!active_) return;
    if (n_ == cap_) {
      ++dropped_;
      return;
    }
    buf_[n_++] = e;
  }
  const Event* begin() const { return buf_.get(); }
  const Event* end() const { return buf_.get() + n_; }
  size_t size() const { return n_; }
  size_t capacity() const { return cap_; }
  int64_t dropped() const { return dropped_; }
  // Forgets the events and the dropped count; keeps the capacity.
  void clear() { n_ = 0, dropped_ = 0; }

 private:
  std::unique_ptr<Event[]> buf_;
  size_t cap_ = 0, n_ = 0;
  int64_t dropped_ = 0;
  bool active_ = false;
};

// The process's recorder.
inline Recorder g_recorder;
inline Recorder& recorder() { return g_recorder; }

inline int64_t ns(std::chrono::steady_clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}
inline int64_t now_ns() { return ns(std::chrono::steady_clock::now()); }
// A span's start: now while recording, else 0 — a span is recorded only if it began while
// recording (span() ignores a start of 0).
inline int64_t stamp() { return g_recorder.active() ? now_ns() : 0; }

// Records [t0, t1] on `track` (nothing while off, or when t0 is 0).
inline void span(Track track, const char* name, int64_t t0, int64_t t1, const char* keys = nullptr,
                 int64_t a0 = 0, int64_t a1 = 0, int64_t a2 = 0, int64_t a3 = 0) {
  if (!g_recorder.active() || t0 == 0) return;
  g_recorder.record(Event{t0, t1, name, keys, {a0, a1, a2, a3}, track});
}
// [t0, now].
inline void span_since(Track track, const char* name, int64_t t0, const char* keys = nullptr,
                       int64_t a0 = 0, int64_t a1 = 0, int64_t a2 = 0, int64_t a3 = 0) {
  if (!g_recorder.active() || t0 == 0) return;
  span(track, name, t0, now_ns(), keys, a0, a1, a2, a3);
}

// A slice of a block: from construction to destruction.
class Scope {
 public:
  Scope(Track track, const char* name) : track_(track), name_(name), t0_(stamp()) {}
  ~Scope() { span_since(track_, name_, t0_); }
  Scope(const Scope&) = delete;
  Scope& operator=(const Scope&) = delete;

 private:
  Track track_;
  const char* name_;
  int64_t t0_;
};

// Off within a block whose work is one slice of the caller's (validation).
class Paused {
 public:
  Paused() : was_(g_recorder.active()) { g_recorder.set_active(false); }
  ~Paused() { g_recorder.set_active(was_); }
  Paused(const Paused&) = delete;
  Paused& operator=(const Paused&) = delete;

 private:
  bool was_;
};

// Something in flight (a PP message): started now (t0 = stamp()), recorded by complete().
inline Event pending(Track track, const char* name, const char* keys, int64_t a0 = 0,
                     int64_t a1 = 0, int64_t a2 = 0, int64_t a3 = 0) {
  return Event{stamp(), 0, name, keys, {a0, a1, a2, a3}, track};
}
inline void complete(Event& e) {
  if (e.t0 == 0 || !g_recorder.active()) return;
  e.t1 = now_ns();
  g_recorder.record(e);
  e.t0 = 0;
}

// ---- the file ----

// One process of a trace file.
struct Process {
  int pid = 0;                // the rank
  std::string label;          // process_name
  std::vector<Event> events;  // on the file's clock (ns)
  int64_t dropped = 0;
  // PP events (pp send / pp recv, arguments mb, stage, peer, bytes; peer a rank of the pipeline
  // group): the world rank of each pipeline-group rank, for the peer and the flows' ids; empty:
  // the peer is a world rank already.
  std::vector<int> pp_world;
};

// The JSON events of one process (metadata, slices, flows), each preceded by ",\n"; times in
// microseconds from `origin_ns`.
std::string format_process(const Process& p, int64_t origin_ns);
// Writes {"traceEvents": [the fragments' events], ...} to `path`; `other` is the otherData
// object's members (JSON text, may be empty). Throws std::runtime_error when writing fails.
void write_chrome_trace(const std::string& path, const std::vector<std::string>& fragments,
                        const std::string& other);

// Collective over `world`: every rank's recorded events into one file at `path` (written by
// rank 0), then the recorder is cleared. `label`: this rank's process name; `pp_world`: as
// Process::pp_world. Returns, on rank 0, the events written per rank and dropped per rank.
struct Written {
  std::vector<int64_t> events, dropped;
};
Written write_merged(Communicator& world, const std::string& path, const std::string& label,
                     const std::vector<int>& pp_world);

}  // namespace moetron::trace
