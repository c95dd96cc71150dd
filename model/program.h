// Program: a layer's (or a model chunk's) forward or backward as a sequence of resumable pieces.
//
// DualPipe hides the MoE all-to-all by running the forward of one micro-batch and the backward
// of another interleaved: while one stream's exchange is in flight, the other stream computes.
// For that, a forward or backward must be able to stop right after it has POSTED an exchange and
// resume later where it stopped. A Program is a C++20 coroutine: its body is the plain layer
// code, with a `co_yield` after each exchange it posts (the dispatch and the combine in forward;
// the combine's and the dispatch's backward), so
//   * the blocking calls (Block::forward, Model::forward, ...) are "run the program to its end"
//     (drain): the math is written once and every existing test keeps testing it;
//   * an executor can run two programs alternately, piece by piece (parallel/overlap.h).
// A piece (segment) runs from one yield to the next. The yield says what was just posted, for
// the interleaver's bookkeeping and traces. Programs nest: a model chunk's program steps its
// blocks' programs and re-yields their yields. Exceptions thrown in a body surface from step().
//
// Lifetime rules for bodies: arguments are captured as the coroutine frame's parameters, so
// pass pointers and references to objects that outlive the program (states, buffers); weight-
// gradient closures queued for later must not capture the frame's locals by reference.
#pragma once

#include <coroutine>
#include <cstdint>
#include <exception>
#include <functional>
#include <utility>
#include <vector>

namespace moetron {

// What the piece that just ended posted.
// DispatchPlan: nothing posted yet, the dispatch's plan is being read back (model/dispatch.h:
// plans_ahead); the piece ends there so that other work is enqueued before the host waits for it.
enum class Posted : uint8_t { DispatchPlan, Dispatch, Combine, CombineBackward, DispatchBackward };

struct Yield {
  int layer = -1;  // the block's global layer index (MTP blocks: after the main layers)
  Posted posted = Posted::Dispatch;
};

class Program {
 public:
  struct promise_type {
    Yield last{};
    std::exception_ptr error;
    Program get_return_object() {
      return Program(std::coroutine_handle<promise_type>::from_promise(*this));
    }
    std::suspend_always initial_suspend() noexcept { return {}; }
    std::suspend_always final_suspend() noexcept { return {}; }
    std::suspend_always yield_value(Yield y) noexcept {
      last = y;
      return {};
    }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { error = std::current_exception(); }
  };

  Program() = default;
  Program(Program&& o) noexcept : h_(std::exchange(o.h_, nullptr)) {}
  Program& operator=(Program&& o) noexcept {
    if (this != &o) {
      destroy();
      h_ = std::exchange(o.h_, nullptr);
    }
    return *this;
  }
  Program(const Program&) = delete;
  Program& operator=(const Program&) = delete;
  ~Program() { destroy(); }

  // Runs the next piece. Returns true when the program stopped at a yield (more to run), false
  // when it has finished (or had finished, or is empty). Rethrows what the body threw.
  bool step() {
    if (!h_ || h_.done()) return false;
    h_.resume();
    if (h_.promise().error) {
      std::exception_ptr e = std::exchange(h_.promise().error, nullptr);
      std::rethrow_exception(e);
    }
    return !h_.done();
  }
  bool done() const { return !h_ || h_.done(); }
  // The yield the last step() stopped at.
  Yield last() const { return h_ ? h_.promise().last : Yield{}; }

 private:
  explicit Program(std::coroutine_handle<promise_type> h) : h_(h) {}
  void destroy() {
    if (h_) h_.destroy();
    h_ = nullptr;
  }
  std::coroutine_handle<promise_type> h_;
};

// Runs a program to its end (the blocking form of every layer call).
inline void drain(Program p) {
  while (p.step()) {
  }
}

// Weight-gradient work of a backward: run now (queue == null) or queued for a later
// backward_weight (zero-bubble schedules split the backward into input and weight parts).
using WeightQueue = std::vector<std::function<void()>>;
template <class F>
void weight_now_or_later(WeightQueue* queue, F&& fn) {
  if (queue)
    queue->push_back(std::forward<F>(fn));
  else
    fn();
}

}  // namespace moetron
