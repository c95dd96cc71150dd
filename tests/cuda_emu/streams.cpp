// The CUDA emulator's streams and events: when the emulated GPU runs the work the host enqueues
// (kernel launches, copies, fills, stream-ordered frees, event records and waits; runtime.cpp).
//
// A stream is a queue, and enqueuing runs nothing. Work runs when the host needs it — at a
// synchronisation (cudaStreamSynchronize, cudaEventSynchronize, a query that finds work pending,
// cudaDeviceSynchronize, a synchronous copy or free, a copy into pageable host memory) — and then
// only what that needs: the stream up to the point waited for and, for each event wait met on the
// way, the recording stream up to the record. So the emulated GPU is as late as CUDA allows, and
// work whose order no event fixes runs in the order the host least expects: a stream that reads
// another's results without waiting for its event reads them before they are written; a block
// freed (cudaFreeAsync) on one stream while another still has work using it is gone when that
// work runs (ASan reports the use); a host read of a copy it did not wait for finds old bytes.
//
// Schedules (CUDA_EMU_SCHEDULE):
//   lazy            the default, as above
//   eager           each operation runs when enqueued (program order: the emulator's first model)
//   shuffle:<seed>  lazy, and at each enqueue and synchronisation a random stream runs a random
//                   few of its operations (not its last); a grid's blocks, and a block's threads
//                   between two barriers, run in a random order (runtime.cpp): a race between
//                   threads that the fixed order hides changes the results.
//
// CUDA's rules kept: a stream runs its operations in order; a wait runs after the record it names
// (the event's last record when the wait was enqueued; an event never recorded is complete); the
// legacy default stream (null) waits for the work enqueued before it on every blocking stream
// (created without cudaStreamNonBlocking), and they for its; a query answers "not ready" while
// work is pending (and the work then runs: the next query finds it done; only records and waits
// pending, as on an idle GPU, it answers done). Events' times are the host's clock when their
// record runs.
#include "tests/cuda_emu/streams.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <deque>
#include <memory>
#include <mutex>
#include <random>
#include <string>
#include <vector>

namespace cuda_emu {

namespace {

using Clock = std::chrono::steady_clock;
struct Queue;

// A record's point in its stream: done once the stream has run up to it.
struct Mark {
  Queue* q = nullptr;
  bool done = false;
  Clock::time_point at;
};

struct Queue {
  struct Op {
    std::shared_ptr<Mark> wait;    // run after this mark is done
    std::function<void()> work;    // then this
    std::shared_ptr<Mark> record;  // then mark this done
  };
  std::deque<Op> ops;
  bool blocking = false;
};

enum class Kind { Lazy, Eager, Shuffle };

struct State {
  std::recursive_mutex mu;                     // every queue; held while work runs
  std::vector<std::unique_ptr<Queue>> queues;  // [0]: the legacy default stream; never freed
  Kind kind = Kind::Lazy;
  std::mt19937_64 rng;
  State() {
    queues.push_back(std::make_unique<Queue>());
    queues[0]->blocking = true;
    const char* spec = std::getenv("CUDA_EMU_SCHEDULE");
    if (spec && !parse(spec)) {
      std::fprintf(
          stderr, "cuda_emu: CUDA_EMU_SCHEDULE=%s: expected lazy, eager or shuffle:<seed>\n", spec);
      std::exit(2);
    }
  }
  bool parse(const char* spec) {
    const std::string s = spec;
    if (s == "lazy" || s == "eager") {
      kind = s == "lazy" ? Kind::Lazy : Kind::Eager;
      return true;
    }
    if (s.rfind("shuffle:", 0) != 0 || s.size() == 8) return false;
    char* end = nullptr;
    const unsigned long long seed = std::strtoull(s.c_str() + 8, &end, 10);
    if (*end) return false;
    kind = Kind::Shuffle;
    rng.seed(seed);
    return true;
  }
};
State& state() {
  static auto& s = *new State;  // never destroyed: work may be enqueued from static destructors
  return s;
}

Queue& queue_of(cudaStream_t s) {
  if (s == nullptr || s == cudaStreamLegacy || s == cudaStreamPerThread) return *state().queues[0];
  return *reinterpret_cast<Queue*>(s);
}

bool complete(Mark& m);

// Runs q's first operation, or first what its wait needs (then q's first is still to run).
// Whether that ran work (not only records and waits).
bool run_one(Queue& q) {
  Queue::Op& head = q.ops.front();
  if (head.wait && !head.wait->done) return complete(*head.wait);
  Queue::Op op = std::move(head);
  q.ops.pop_front();
  if (op.work) op.work();
  if (op.record) op.record->done = true, op.record->at = Clock::now();
  return static_cast<bool>(op.work);
}

// Runs the mark's stream up to it; whether that ran work. (No cycle: a wait names a record
// enqueued before it, so the order of enqueuing is one that satisfies every wait.)
bool complete(Mark& m) {
  bool ran = false;
  while (!m.done) ran = run_one(*m.q) || ran;
  return ran;
}

bool drain(Queue& q) {
  bool ran = false;
  while (!q.ops.empty()) ran = run_one(q) || ran;
  return ran;
}

// Shuffle: with probability 1/2, a random stream with work runs up to four operations, never its
// last (a stream the host left work on stays busy until the host waits: queries keep meaning).
void wander() {
  State& st = state();
  if (st.kind != Kind::Shuffle || st.rng() % 2) return;
  std::vector<Queue*> busy;
  for (const auto& q : st.queues)
    if (q->ops.size() > 1) busy.push_back(q.get());
  if (busy.empty()) return;
  Queue& q = *busy[st.rng() % busy.size()];
  for (uint64_t n = 1 + st.rng() % 4; n && q.ops.size() > 1; --n) run_one(q);
}

// A record at q's end.
std::shared_ptr<Mark> tail(Queue& q) {
  auto m = std::make_shared<Mark>();
  m->q = &q;
  q.ops.push_back(Queue::Op{nullptr, nullptr, m});
  return m;
}

// Appends op to q, after the legacy stream's implicit waits (CUDA's blocking streams).
void push(Queue& q, Queue::Op op) {
  State& st = state();
  Queue& legacy = *st.queues[0];
  if (&q == &legacy) {
    for (const auto& other : st.queues)
      if (other.get() != &q && other->blocking && !other->ops.empty())
        q.ops.push_back(Queue::Op{tail(*other), nullptr, nullptr});
  } else if (q.blocking && !legacy.ops.empty()) {
    q.ops.push_back(Queue::Op{tail(legacy), nullptr, nullptr});
  }
  q.ops.push_back(std::move(op));
  if (st.kind == Kind::Eager) {
    drain(q);
    return;
  }
  wander();
}

struct Event {
  std::shared_ptr<Mark> last;  // its latest record; null: never recorded (complete)
};

}  // namespace

void enqueue(cudaStream_t s, std::function<void()> work) {
  std::lock_guard<std::recursive_mutex> lk(state().mu);
  push(queue_of(s), Queue::Op{nullptr, std::move(work), nullptr});
}

void synchronize(cudaStream_t s) {
  std::lock_guard<std::recursive_mutex> lk(state().mu);
  wander();
  drain(queue_of(s));
}

void synchronize_all() {
  State& st = state();
  std::lock_guard<std::recursive_mutex> lk(st.mu);
  wander();
  for (const auto& q : st.queues) drain(*q);
}

bool shuffling() { return state().kind == Kind::Shuffle; }

uint64_t draw(uint64_t n) {
  State& st = state();
  std::lock_guard<std::recursive_mutex> lk(st.mu);
  return st.rng() % n;
}

bool set_schedule(const char* spec) {
  State& st = state();
  std::lock_guard<std::recursive_mutex> lk(st.mu);
  for (const auto& q : st.queues) drain(*q);
  return st.parse(spec);
}

}  // namespace cuda_emu

// ---------------------------------------------------------------- the CUDA runtime API

using cuda_emu::Event;
using cuda_emu::Queue;
using cuda_emu::state;

extern "C" {

cudaError_t cudaStreamCreateWithFlags(cudaStream_t* s, unsigned flags) {
  std::lock_guard<std::recursive_mutex> lk(state().mu);
  auto q = std::make_unique<Queue>();
  q->blocking = !(flags & cudaStreamNonBlocking);
  *s = reinterpret_cast<cudaStream_t>(q.get());
  state().queues.push_back(std::move(q));
  return cudaSuccess;
}
// Its work still runs (as CUDA's does); the queue itself is kept, empty.
cudaError_t cudaStreamDestroy(cudaStream_t s) {
  cuda_emu::synchronize(s);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  cuda_emu::synchronize(s);
  return cudaSuccess;
}
cudaError_t cudaStreamQuery(cudaStream_t s) {
  std::lock_guard<std::recursive_mutex> lk(state().mu);
  cuda_emu::wander();
  return cuda_emu::drain(cuda_emu::queue_of(s)) ? cuda_emu::set_error(cudaErrorNotReady)
                                                : cudaSuccess;
}
cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned) {
  std::lock_guard<std::recursive_mutex> lk(state().mu);
  const std::shared_ptr<cuda_emu::Mark>& m = reinterpret_cast<Event*>(e)->last;
  if (m && !m->done) cuda_emu::push(cuda_emu::queue_of(s), Queue::Op{m, nullptr, nullptr});
  return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize() {
  cuda_emu::synchronize_all();
  return cudaSuccess;
}

cudaError_t cudaEventCreate(cudaEvent_t* e) {
  *e = reinterpret_cast<cudaEvent_t>(new Event);
  return cudaSuccess;
}
cudaError_t cudaEventCreateWithFlags(cudaEvent_t* e, unsigned) { return cudaEventCreate(e); }
// Waits already enqueued keep the record they name.
cudaError_t cudaEventDestroy(cudaEvent_t e) {
  std::lock_guard<std::recursive_mutex> lk(state().mu);
  delete reinterpret_cast<Event*>(e);
  return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  std::lock_guard<std::recursive_mutex> lk(state().mu);
  auto m = std::make_shared<cuda_emu::Mark>();
  Queue& q = cuda_emu::queue_of(s);
  m->q = &q;
  reinterpret_cast<Event*>(e)->last = m;
  cuda_emu::push(q, Queue::Op{nullptr, nullptr, m});
  return cudaSuccess;
}
cudaError_t cudaEventQuery(cudaEvent_t e) {
  std::lock_guard<std::recursive_mutex> lk(state().mu);
  const std::shared_ptr<cuda_emu::Mark> m = reinterpret_cast<Event*>(e)->last;
  if (!m || m->done) return cudaSuccess;
  cuda_emu::wander();
  return cuda_emu::complete(*m) ? cuda_emu::set_error(cudaErrorNotReady) : cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  std::lock_guard<std::recursive_mutex> lk(state().mu);
  const std::shared_ptr<cuda_emu::Mark> m = reinterpret_cast<Event*>(e)->last;
  if (m && !m->done) cuda_emu::wander(), cuda_emu::complete(*m);
  return cudaSuccess;
}
cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) {
  std::lock_guard<std::recursive_mutex> lk(state().mu);
  const auto& ma = reinterpret_cast<Event*>(a)->last;
  const auto& mb = reinterpret_cast<Event*>(b)->last;
  if (!ma || !mb) return cuda_emu::set_error(cudaErrorInvalidResourceHandle);
  if (!ma->done || !mb->done) return cuda_emu::set_error(cudaErrorNotReady);
  *ms = std::chrono::duration<float, std::milli>(mb->at - ma->at).count();
  return cudaSuccess;
}

}  // extern "C"
