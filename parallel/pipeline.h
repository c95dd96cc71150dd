// The pipeline executor: runs one rank's list of a Schedule (schedule.h) on its model stage.
//
// It interprets the list in order and owns nothing but buffers, all reused from step to step:
//   slots     micro-batch states (Model::MicroBatch), taken at Forward(m) and given back after
//             the last op of m — so the pool grows only to the schedule's peak in flight
//             (in_flight_bound, e.g. P - r for 1F1B), not to the step's micro-batch count;
//   grads     the buffers a backward writes and keeps until its weight gradient and the send of
//             d(input): lent to m from its first backward op to its last op, then returned — a
//             rank holds in-flight-bound slots of forward activations, but only as many
//             gradient sets as backwards overlap (1 for 1F1B; 1 + held-back W for ZB1P);
//   messages  one buffer per message in flight: a receive's buffer is given back when its
//             consumer (Forward / Backward) has read it, a send travels as a copy whose buffer
//             is given back when the send completes (polled after every op).
// The model stage does the math; the schedule decides the order. 1F1B and ZB1P run through this
// one loop; unsupported_reason() says which schedules it cannot run yet (DualPipe and DualPipeV:
// two model chunks per rank and overlapped forward/backward pairs), and the constructor and
// set_schedule() refuse them.
//   RecvActivation(m)  post a receive of stage input m from the previous stage's rank
//   Forward(m)         model forward on micro-batch m (last stage: the loss)
//   SendActivation(m)  post a send of the stage output to the next stage's rank
//   RecvGrad(m)        post a receive of d(output) from the next stage's rank
//   Backward(m)        input and weight gradients; BackwardInput(m): input only (weight
//                      gradients queued); BackwardWeight(m): run the queued weight gradients
//   SendGrad(m)        non-blocking send of d(input) to the previous stage's rank
#pragma once

#include <algorithm>
#include <chrono>
#include <deque>
#include <functional>
#include <stdexcept>
#include <string>
#include <vector>

#include "model/model.h"
#include "parallel/comm.h"
#include "parallel/schedule.h"

namespace moetron {

template <class T>
class PipelineExecutor {
 public:
  // tokens(m): micro-batch m's tokens [B, S+1] (host; every stage reads them).
  using TokenSource = std::function<const int32_t*(int)>;

  // Throws std::invalid_argument when this executor cannot run `schedule` (unsupported_reason).
  PipelineExecutor(const Model<T>& stage, Communicator& pp, pipeline::Schedule schedule,
                   int pp_rank)
      : model_(stage), pp_(pp), sched_(require_supported(std::move(schedule))), rank_(pp_rank) {}

  // Why this executor cannot run `s`, or "" when it can. It holds one model chunk per rank and
  // keeps a micro-batch's state by micro-batch alone, so no rank may hold two stages (DualPipe's
  // two directions, DualPipeV's V); and it does not overlap a forward with a backward
  // (ForwardBackward). The trainer asks before it builds anything.
  static std::string unsupported_reason(const pipeline::Schedule& s) {
    const std::string head = "schedule " + s.kind + ": ";
    const std::string runs = ", which the pipeline executor does not run yet (use 1f1b or zb1p)";
    for (size_t r = 0; r < s.chunks_of_rank.size(); ++r)
      if (s.chunks_of_rank[r].size() > 1)
        return head + "rank " + std::to_string(r) + " holds " +
               std::to_string(s.chunks_of_rank[r].size()) + " model chunks" + runs;
    for (const auto& ops : s.per_rank)
      for (const pipeline::Op& op : ops)
        if (op.kind == pipeline::OpKind::ForwardBackward)
          return head + "overlaps forward and backward chunks" + runs;
    return "";
  }

  // Runs this rank's ops for one optimizer step; adds this stage's losses into `sum`.
  // Message ops post non-blocking sends/receives; a compute op first waits for every receive
  // posted before it (the schedule's execution contract); sends complete by the end of the step.
  void run(const TokenSource& tokens, int64_t B, int64_t S, double mtp_weight, double grad_scale,
           Losses& sum) {
    const Step step{tokens, B, S, mtp_weight, grad_scale};
    const std::vector<pipeline::Op>& ops = sched_.per_rank[rank_];
    const std::vector<int> last_use = begin_step(ops);
    for (size_t i = 0; i < ops.size(); ++i) {
      const pipeline::Op& op = ops[i];
      if (op.is_message())
        post(op, step);
      else
        compute(op, step);
      if (static_cast<int>(i) == last_use[op.mb]) retire(op.mb);
      poll_sends();
    }
    wait_receives();
    wait_sends();
    for (const Losses& l : losses_) {
      sum.loss += l.loss, sum.lm += l.lm, sum.mtp += l.mtp, sum.balance += l.balance;
    }
  }

  // The schedule of the next run() (the batch-size ramp changes the micro-batch count; an
  // evaluation runs a forward-only schedule). Slots and message buffers are kept and reused.
  // Throws std::invalid_argument when this executor cannot run `s` (unsupported_reason).
  void set_schedule(pipeline::Schedule s) { sched_ = require_supported(std::move(s)); }
  const pipeline::Schedule& schedule() const { return sched_; }

  // Seconds of the last run: in compute ops (forward/backward, including any expert all-to-all
  // they wait on), and blocked on pipeline messages.
  double compute_seconds() const { return compute_seconds_; }
  double idle_seconds() const { return idle_seconds_; }

  // Micro-batch states held (the pool only grows to the schedule's peak in flight) and message
  // buffers (one per message in flight).
  int slots() const { return static_cast<int>(slots_.size()); }
  // Gradient sets: the backward's buffers, lent to a micro-batch from its backward to its last op
  // (1F1B: 1; ZB1P: 1 + the weight gradients held back).
  int grad_sets() const { return static_cast<int>(grads_.size()); }
  // The gradient sets a rank of `s` needs: the most micro-batches between their first backward op
  // and their last op at once (what grad_sets() reaches after a step; for schedules this executor
  // does not run yet, the backward half of a ForwardBackward pair counts as a backward: planning).
  static int peak_grad_sets(const pipeline::Schedule& s, int rank) {
    using pipeline::OpKind;
    const std::vector<pipeline::Op>& ops = s.per_rank[rank];
    std::vector<int> first(s.microbatches, -1), last(s.microbatches, -1);
    for (size_t i = 0; i < ops.size(); ++i) {
      const pipeline::Op& op = ops[i];
      last[op.mb] = static_cast<int>(i);
      const bool bwd = op.kind == OpKind::Backward || op.kind == OpKind::BackwardInput;
      if (bwd && first[op.mb] < 0) first[op.mb] = static_cast<int>(i);
      if (op.kind != OpKind::ForwardBackward) continue;
      last[op.mb2] = static_cast<int>(i);
      if (first[op.mb2] < 0) first[op.mb2] = static_cast<int>(i);
    }
    int peak = 0;
    for (size_t i = 0; i < ops.size(); ++i) {
      int open = 0;
      for (int m = 0; m < s.microbatches; ++m)
        open += first[m] >= 0 && first[m] <= static_cast<int>(i) && static_cast<int>(i) <= last[m];
      peak = std::max(peak, open);
    }
    return peak;
  }
  int message_buffers() const { return static_cast<int>(msgs_.size()); }
  // The message buffers a rank of `s` holds at most, as planned (trainer/plan.h): a received
  // activation or gradient from its receive's post to the compute op that reads it; a sent one (a
  // copy) from its post to the end of the next compute op — an estimate: a send completes once its
  // receive is posted, which in a running pipeline is about then.
  static int peak_message_buffers(const pipeline::Schedule& s, int rank) {
    const std::vector<pipeline::Op>& ops = s.per_rank[rank];
    std::vector<int> delta(ops.size() + 1, 0);
    for (size_t i = 0; i < ops.size(); ++i) {
      if (!ops[i].is_message()) continue;
      size_t j = i + 1;
      while (j < ops.size() && (ops[j].is_message() || !reads(ops[j], ops[i]))) ++j;
      ++delta[i];
      --delta[std::min(j, ops.size() - 1) + 1];
    }
    int open = 0, peak = 0;
    for (int d : delta) peak = std::max(peak, open += d);
    return peak;
  }

 private:
  struct PendingSend {
    Request req;
    int buf;
  };
  // One run()'s arguments.
  struct Step {
    const TokenSource& tokens;
    int64_t B, S;
    double mtp_weight, grad_scale;
  };
  using clock = std::chrono::steady_clock;
  static double seconds_since(clock::time_point t0) {
    return std::chrono::duration<double>(clock::now() - t0).count();
  }

  // Whether compute op `c` ends the life of message `m`'s buffer: the op that reads a received
  // activation (the forward of the next stage) or gradient (the backward of the previous stage);
  // for a send, any compute op.
  static bool reads(const pipeline::Op& c, const pipeline::Op& m) {
    using pipeline::OpKind;
    const bool fwd = c.kind == OpKind::Forward || c.kind == OpKind::ForwardBackward;
    const bool bwd = c.kind == OpKind::Backward || c.kind == OpKind::BackwardInput;
    const bool pair = c.kind == OpKind::ForwardBackward;
    if (m.kind == OpKind::RecvActivation) return fwd && c.mb == m.mb && c.stage == m.stage + 1;
    if (m.kind == OpKind::RecvGrad)
      return (bwd && c.mb == m.mb && c.stage == m.stage - 1) ||
             (pair && c.mb2 == m.mb && c.stage2 == m.stage - 1);
    return true;
  }

  static pipeline::Schedule require_supported(pipeline::Schedule s) {
    const std::string why = unsupported_reason(s);
    if (!why.empty()) throw std::invalid_argument("pipeline executor: " + why);
    return s;
  }

  // Resets the per-step tables; returns, per micro-batch, the op after which its state is no
  // longer needed.
  std::vector<int> begin_step(const std::vector<pipeline::Op>& ops) {
    const int M = sched_.microbatches;
    std::vector<int> last_use(M, -1);
    for (size_t i = 0; i < ops.size(); ++i) last_use[ops[i].mb] = static_cast<int>(i);
    slot_of_.assign(M, -1), grads_of_.assign(M, -1);
    act_of_.assign(M, -1), grad_of_.assign(M, -1);
    recvs_.clear();
    losses_.assign(M, Losses{});
    idle_seconds_ = compute_seconds_ = 0;
    return last_use;
  }

  int64_t message_elements(const Step& st) const {
    return st.B * st.S * model_.config().hidden_size;
  }
  // (micro-batch, producing stage, activation or gradient)
  int tag(const pipeline::Op& op, int grad) const {
    return (op.mb * sched_.stages + op.stage) * 2 + grad;
  }

  // A message op: posts a non-blocking receive into a fresh buffer, or a send of a copy.
  void post(const pipeline::Op& op, const Step& st) {
    using pipeline::OpKind;
    const int m = op.mb;
    const int64_t n = message_elements(st);
    const size_t bytes = sizeof(T) * n;
    switch (op.kind) {
      case OpKind::RecvActivation:
        act_of_[m] = msg_acquire(n);
        recvs_.push_back(pp_.irecv(msgs_[act_of_[m]].data(), bytes, op.peer, tag(op, 0)));
        break;
      case OpKind::SendActivation:
        send_copy(model_.output(state(m)), bytes, op.peer, tag(op, 0), n);
        break;
      case OpKind::RecvGrad:
        grad_of_[m] = msg_acquire(n);
        recvs_.push_back(pp_.irecv(msgs_[grad_of_[m]].data(), bytes, op.peer, tag(op, 1)));
        break;
      case OpKind::SendGrad:
        send_copy(state(m).dh.data(), bytes, op.peer, tag(op, 1), n);
        break;
      default:
        throw std::logic_error("pipeline executor: post() of a compute op");
    }
  }

  // A compute op: waits for the receives posted before it, then runs the model stage.
  void compute(const pipeline::Op& op, const Step& st) {
    using pipeline::OpKind;
    wait_receives();
    const auto t0 = clock::now();
    const int m = op.mb;
    switch (op.kind) {
      case OpKind::Forward:
        slot_of_[m] = slot_acquire();
        losses_[m] = model_.forward(state(m), st.tokens(m), st.B, st.S, st.mtp_weight,
                                    model_.stage().first() ? nullptr : msgs_[act_of_[m]].data());
        if (act_of_[m] >= 0) msg_release(act_of_[m]), act_of_[m] = -1;
        break;
      case OpKind::Backward:
      case OpKind::BackwardInput:
        lend_grads(m);
        model_.backward_input(state(m), st.grad_scale,
                              model_.stage().last() ? nullptr : msgs_[grad_of_[m]].data(),
                              op.kind == OpKind::BackwardInput);
        if (grad_of_[m] >= 0) msg_release(grad_of_[m]), grad_of_[m] = -1;
        break;
      case OpKind::BackwardWeight:
        model_.backward_weight(state(m));
        break;
      default:  // ForwardBackward: refused by require_supported
        throw std::logic_error("pipeline executor: unsupported op " +
                               std::string(pipeline::kind_name(op.kind)));
    }
    compute_seconds_ += seconds_since(t0);
  }

  // After m's last op: its slot and gradient set go back to their pools.
  void retire(int m) {
    if (slot_of_[m] < 0) return;
    take_back_grads(m);
    free_slots_.push_back(slot_of_[m]);
    slot_of_[m] = -1;
  }

  void wait_receives() {  // time blocked here is pipeline idle (bubble + p2p latency)
    const auto t0 = clock::now();
    for (auto& r : recvs_) r.wait();
    recvs_.clear();
    idle_seconds_ += seconds_since(t0);
  }
  void wait_sends() {
    const auto t0 = clock::now();
    for (auto& s : sends_) s.req.wait(), msg_release(s.buf);
    sends_.clear();
    idle_seconds_ += seconds_since(t0);
  }

  typename Model<T>::MicroBatch& state(int m) { return slots_[slot_of_[m]]; }
  // An entry of a pool: a free one, or a new one at the end (deques: entries never move).
  template <class E>
  static int take(std::deque<E>& pool, std::vector<int>& free) {
    if (free.empty()) {
      pool.emplace_back();
      return static_cast<int>(pool.size()) - 1;
    }
    const int i = free.back();
    free.pop_back();
    return i;
  }
  int slot_acquire() { return take(slots_, free_slots_); }
  int msg_acquire(int64_t n) {
    const int b = take(msgs_, free_msgs_);
    msgs_[b].resize(static_cast<size_t>(n));
    return b;
  }
  void msg_release(int b) {
    if (b >= 0) free_msgs_.push_back(b);
  }
  // Posts a send of a copy of src (so the slot may be reused before the send completes); the
  // buffer is released when the send completes.
  void send_copy(const T* src, size_t bytes, int peer, int tag, int64_t n) {
    const int b = msg_acquire(n);
    kernels::copy(model_.exec(), msgs_[b].data(), src, bytes);
    sends_.push_back({pp_.isend(msgs_[b].data(), bytes, peer, tag), b});
  }
  // The buffers the backward writes and keeps until the weight gradient (and the send of d input)
  // are not part of a slot: they are lent from a pool, so a rank holds in-flight-bound slots of
  // forward activations but only as many gradient sets as backwards overlap.
  void lend_grads(int m) {
    if (grads_of_[m] >= 0) return;  // (Backward after BackwardInput never happens; be safe)
    const int g = take(grads_, free_grads_);
    grads_of_[m] = g;
    swap_grads(state(m), grads_[g]);
  }
  void take_back_grads(int m) {
    if (grads_of_[m] < 0) return;
    swap_grads(state(m), grads_[grads_of_[m]]);
    free_grads_.push_back(grads_of_[m]);
    grads_of_[m] = -1;
  }
  static void swap_grads(typename Model<T>::MicroBatch& mb, std::vector<Buffer<T>>& set) {
    size_t i = 0;
    mb.for_each_grad([&](Buffer<T>& b) {
      if (i == set.size()) set.emplace_back(b.device());
      std::swap(b, set[i++]);
    });
  }

  void poll_sends() {  // completed sends give their buffers back (MPI progresses meanwhile)
    for (size_t i = 0; i < sends_.size();) {
      if (sends_[i].req.test()) {
        msg_release(sends_[i].buf);
        sends_[i] = std::move(sends_.back());
        sends_.pop_back();
      } else {
        ++i;
      }
    }
  }

  const Model<T>& model_;
  Communicator& pp_;
  pipeline::Schedule sched_;
  int rank_;
  std::deque<typename Model<T>::MicroBatch> slots_;  // micro-batch states (stable addresses)
  std::vector<int> free_slots_, slot_of_;            // slot_of_[m]: m's slot or -1
  std::deque<std::vector<Buffer<T>>> grads_;         // gradient sets, reused
  std::vector<int> free_grads_, grads_of_;           // grads_of_[m]: m's set or -1
  std::deque<Buffer<T>> msgs_;                       // message buffers, reused
  std::vector<int> free_msgs_, act_of_, grad_of_;    // received activation / gradient of m
  std::vector<PendingSend> sends_;
  std::vector<Request> recvs_;  // receives posted since the last compute op
  std::vector<Losses> losses_;  // [micro-batches] of the current run
  double compute_seconds_ = 0, idle_seconds_ = 0;
};

}  // namespace moetron
