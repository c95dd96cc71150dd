// The pipeline executor: runs one rank's list of a Schedule (schedule.h) on the model chunks the
// rank holds — one for 1F1B and ZB1P, two for DualPipe (stages r and P-1-r) and DualPipeV
// (stages r and 2N-1-r).
//
// It interprets the list in order and owns nothing but buffers, all reused from step to step:
//   slots     micro-batch states (Model::MicroBatch), taken at Forward(m, s) and given back after
//             the last op that reads (m, s) — so the pool grows only to the schedule's peak in
//             flight (in_flight_bound), not to the step's micro-batch count. A state is keyed by
//             (micro-batch, stage): a DualPipeV rank forwards micro-batch m twice;
//   grads     the buffers a backward writes and keeps until its weight gradient and the send of
//             d(input): lent to (m, s) from its first backward op to its last use, then returned;
//             where the two pools peak at different times (DualPipe: slots in the steady state,
//             gradient sets in the cooldown), each frees its idle entries down to what the rest
//             of the step needs, so the memory a rank holds peaks at the most of the two at once,
//             not the sum of their peaks (pool_plan);
//   messages  one buffer per message in flight: a receive's buffer is given back when its
//             consumer (Forward / Backward) has read it; a sent activation is the forward's
//             output itself, taken from the state (the backward of a non-last stage does not
//             read it), a sent gradient a copy; either's buffer is given back when the send
//             completes (polled after every op).
// The model chunks do the math; the schedule decides the order.
//   RecvActivation(m, s)  post a receive of stage s's output (input of s+1) from its rank
//   Forward(m, s)         forward of chunk s (last stage: the loss); its input is the embedding
//                         (s = 0), a received activation, or — DualPipeV's turn, both stages on
//                         this rank — the output of (m, s-1) handed over in the process
//   SendActivation(m, s)  post a send of stage s's output to the next stage's rank (the output
//                         moves from the state into the message)
//   RecvGrad(m, s)        post a receive of d(input of s) (d output of s-1) from its rank
//   Backward(m, s)        input and weight gradients; BackwardInput: input only (weight gradients
//                         queued); BackwardWeight: run the queued weight gradients. d(output) is
//                         the loss (last stage), a received gradient, or (the turn) d(input) of
//                         (m, s+1), moved into a message buffer when that backward finished
//   ForwardBackward       F(m, s) and the backward of (m2, s2) on the rank's other chunk, as two
//                         programs (model/program.h) run piece by piece, alternately — backward
//                         first: each piece ends by posting an expert exchange, so one stream's
//                         exchange is in flight while the other computes (DeepSeek-V3's order:
//                         combine(B) | attn(F) | mlp(B) | dispatch(F) | ... ). With interleave off
//                         the pair runs forward then backward: the same arithmetic (tested).
//   SendGrad(m, s)        non-blocking send of d(input) to the previous stage's rank
// Between pieces and after every op the executor calls ExecOptions::progress (the expert
// dispatcher's MPI progress, and the DP reduction's) and polls its sends. The rank's last op that
// accumulates weight gradients into a stage reports each layer it finishes
// (ExecOptions::layer_grads_final), so the DP reduction of those layers overlaps the rest of the
// backward. While the trace recorder is on (run.trace_steps, parallel/trace.h) it records its
// compute ops, pair pieces, PP waits and messages, and the time between ops (posts, progress).
#pragma once

#include <algorithm>
#include <chrono>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/exec.h"
#include "kernels/pinned.h"
#include "model/model.h"
#include "model/pool.h"
#include "parallel/comm.h"
#include "parallel/schedule.h"
#include "parallel/trace.h"
#include "parallel/watchdog.h"

namespace moetron {

struct ExecOptions {
  bool interleave = true;          // run ForwardBackward pairs piece by piece (parallel.overlap)
  std::function<void()> progress;  // between pieces: let the expert exchanges progress
  std::function<double()> ep_blocked;  // cumulative seconds blocked in expert-exchange waits
  // after each piece of a pair: which stream ran it and what it posted (tests, traces)
  std::function<void(bool forward, const Yield&)> on_piece;
  // a layer's weight gradients are final for the step on this rank: the rank's last op that
  // accumulates into its stage (a backward, a weight-gradient op, or a pair's backward) has
  // passed it (the DP reduction may start; trainer/optimizer.h)
  std::function<void(int layer)> layer_grads_final;
  // where pool_plan chooses it, the pools of micro-batch states and gradient sets trim their idle
  // entries after each op (false: they keep them; tests compare the two)
  bool share_pools = true;
};

// Where one rank's time in run() went (seconds), and the measured op costs.
struct ExecStats {
  double compute = 0;         // in compute ops, EP waits excluded
  double pp_idle = 0;         // blocked on pipeline receives (before compute) and sends (end)
  double ep_wait_pair = 0;    // blocked in expert-exchange waits inside ForwardBackward pairs
  double ep_wait_single = 0;  // ... in every other compute op
  // mean seconds of this rank's F, full B, W (BackwardWeight) and FB ops (0 where none ran)
  double cost_F = 0, cost_B = 0, cost_Bi = 0, cost_W = 0, cost_FB = 0;
};

template <class T>
class PipelineExecutor {
 public:
  // tokens(m): micro-batch m's tokens [B, S+1] (host; every stage reads them).
  using TokenSource = std::function<const int32_t*(int)>;

  // chunks: the model chunks this rank holds (their stage() is the schedule's stage): those of
  // schedule.chunks_of_rank[rank]. Throws std::invalid_argument when the schedule runs a stage
  // on this rank that no chunk is (set_schedule: the same check).
  PipelineExecutor(std::vector<const Model<T>*> chunks, Communicator& pp,
                   pipeline::Schedule schedule, int pp_rank, ExecOptions opt = {})
      : chunks_(std::move(chunks)), pp_(pp), rank_(pp_rank), opt_(std::move(opt)) {
    set_schedule(std::move(schedule));
  }
  PipelineExecutor(const Model<T>& stage, Communicator& pp, pipeline::Schedule schedule,
                   int pp_rank, ExecOptions opt = {})
      : PipelineExecutor(std::vector<const Model<T>*>{&stage}, pp, std::move(schedule), pp_rank,
                         std::move(opt)) {}

  // Runs this rank's ops for one optimizer step; adds this rank's losses (every chunk's) into
  // `sum`. Message ops post non-blocking sends/receives; a compute op first waits for every
  // receive posted before it (the schedule's execution contract); sends complete by the end, and
  // a send's post first waits for the oldest beyond the schedule's send_window (wait_window).
  // On a communicator that matches in order (NCCL: !tags_match()), adjacent message ops are
  // posted as one batch_isend_irecv (one NCCL group, as Megatron's send_forward_recv_backward):
  // NCCL runs operations in posting order, so a stage that posted its send and its receive apart
  // could wait in the receive for a peer that waits in its own receive for that send
  // (parallel/comm_stream.h proves the order on the CPU). On MPI each message is posted alone:
  // a batch completes as a whole, and a send tied to a receive would hold its buffer, and the
  // compute op waiting for the receive, until the peer posts the send's receive.
  void run(const TokenSource& tokens, int64_t B, int64_t S, double mtp_weight, double grad_scale,
           Losses& sum) {
    const Step step{tokens, B, S, mtp_weight, grad_scale};
    const std::vector<pipeline::Op>& ops = sched_.per_rank[rank_];
    begin_step(ops);
    for (size_t i = 0; i < ops.size(); ++i) {
      const pipeline::Op& op = ops[i];
      op_index_ = i;
      watchdog::set_microbatch(op.mb, op.stage);  // what a hang report names (watchdog.h)
      progress_t_ = trace::stamp();  // (wait_window may end the span early and restart it)
      if (op.is_message()) {
        post(op, step);
        const bool next_message = i + 1 < ops.size() && ops[i + 1].is_message();
        if (pp_.tags_match() || !next_message) post_batch();
      } else
        compute(op, step), progress_t_ = trace::stamp();
      for (int k : pools_.ops[i].retire) retire(k);
      if (pools_.share && opt_.share_pools)
        slots_.trim(pools_.ops[i].keep_slots), grads_.trim(pools_.ops[i].keep_sets);
      poll();
      trace::span_since(trace::Track::Progress, op.is_message() ? "post" : "progress", progress_t_);
    }
    wait_receives();
    wait_sends();
    read_losses(step);
    for (const Losses& l : losses_) {
      sum.loss += l.loss, sum.lm += l.lm, sum.mtp += l.mtp, sum.balance += l.balance;
    }
    finish_stats();
  }

  // The schedule of the next run() (the batch-size ramp changes the micro-batch count; an
  // evaluation runs a forward-only schedule). Slots and message buffers are kept and reused.
  // Throws std::invalid_argument when a stage it runs here is not a chunk of this executor.
  void set_schedule(pipeline::Schedule s) {
    for (const pipeline::Chunk& c : s.chunks_of_rank.at(rank_)) {
      bool held = false;
      for (const Model<T>* m : chunks_)
        held |= m->stage().stage == c.stage && m->stage().n_stages == s.stages;
      if (!held)
        throw std::invalid_argument("pipeline executor: schedule " + s.kind + " runs stage " +
                                    std::to_string(c.stage) + " of " + std::to_string(s.stages) +
                                    " on rank " + std::to_string(rank_) +
                                    ", which holds no such model chunk");
    }
    sched_ = std::move(s);
    pools_ = pool_plan(sched_, rank_);
  }
  const pipeline::Schedule& schedule() const { return sched_; }
  int rank() const { return rank_; }

  // The last run's time split and op costs.
  const ExecStats& stats() const { return stats_; }
  // The losses of (m, stage)'s forward in the last run (zero where it did not run here).
  const Losses& losses_of(int m, int stage) const { return losses_.at(key(m, stage)); }

  // Micro-batch states (the pool grows only to the schedule's peak in flight), gradient sets
  // (the backward's buffers, lent to (m, s) from its backward to its last use) and message
  // buffers (one per message in flight) made so far; held_*: those of them holding memory now.
  int slots() const { return static_cast<int>(slots_.items.size()); }
  int grad_sets() const { return static_cast<int>(grads_.items.size()); }
  int message_buffers() const { return static_cast<int>(msgs_.items.size()); }
  int held_slots() const { return slots_.held(); }
  int held_grad_sets() const { return grads_.held(); }
  // The bytes the pooled states hold in stage outputs: a sent output moves into its message, so
  // none on a rank whose stages all send theirs.
  int64_t output_bytes_held() const {
    int64_t n = 0;
    for (const auto& mb : slots_.items)
      if (!mb.h.empty()) n += static_cast<int64_t>(mb.h.back().capacity() * sizeof(T));
    return n;
  }

  // What the pools of micro-batch states and gradient sets do at each op of a rank's list: the
  // executor's bookkeeping, and what the plan counts (trainer/plan.cpp). Keys are m * stages + s.
  struct PoolOp {
    std::vector<int> take;    // keys whose state is taken here (their forward)
    std::vector<int> lend;    // keys lent a gradient set here (their first backward op)
    std::vector<int> retire;  // keys whose last use this is: state and set given back after it
    // the most states / sets live at once in the rest of the step (0 after the last op)
    int keep_slots = 0, keep_sets = 0;
  };
  struct PoolPlan {
    std::vector<PoolOp> ops;
    int peak_slots = 0, peak_sets = 0;  // live at once, at most: what each pool grows to
    // Share: after each op each pool frees its idle entries beyond keep_* (a state or set made
    // again later is filled again by its next use; on a GPU the caching allocator hands the
    // memory to whichever pool grows next). Chosen where it lowers the most entries held at once
    // below peak_slots + peak_sets — the pools peak at different times; elsewhere (1F1B, ZB1P,
    // a DualPipe end rank) keeping them saves the refills.
    bool share = false;
    int peak_held = 0;  // states + sets held at once, at most, under this choice
  };
  static PoolPlan pool_plan(const pipeline::Schedule& s, int rank);
  // The gradient sets a rank of `s` needs: the most (m, s) between their first backward op and
  // their last use at once (what grad_sets() reaches after a step).
  static int peak_grad_sets(const pipeline::Schedule& s, int rank) {
    return pool_plan(s, rank).peak_sets;
  }
  // Walks a pool plan as the executor runs it: visit(live_keys, held_slots, held_sets) during
  // each op, after its takes and lends (live_keys: the states live then).
  template <class F>
  static void walk_pools(const PoolPlan& p, F&& visit);
  // The message buffers a rank of `s` holds at most (trainer/plan.h): the pool's size, whose
  // entries keep their memory between uses. A received activation or gradient from its receive's
  // post to the compute op that reads it; DualPipeV's turn (a d input kept on the rank) from the
  // backward that makes it to the one that reads it; a sent gradient (a copy) or activation (the
  // forward's output itself, which the state gives up at the send: until then the state holds it)
  // from its post to the op after which it is surely complete under any timing
  // (pipeline::send_release: to the step's end when no message from the receiver says so).
  static int peak_message_buffers(const pipeline::Schedule& s, int rank);

 private:
  // A posted message: its batch's Request (complete when every message of the batch is).
  struct PendingSend {
    std::shared_ptr<Request> req;
    int buf;
    trace::Event tr;  // its trace slice, from post to completion (while tracing)
  };
  struct PendingRecv {
    std::shared_ptr<Request> req;
    trace::Event tr;
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

  int key(int m, int stage) const { return m * sched_.stages + stage; }
  const Model<T>& chunk(int stage) const {
    for (const Model<T>* c : chunks_)
      if (c->stage().stage == stage) return *c;
    throw std::logic_error("pipeline executor: no chunk of stage " + std::to_string(stage));
  }
  // Whether (m, stage) runs on `rank` of `s`.
  static bool on_rank(const pipeline::Schedule& s, int rank, int m, int stage) {
    return stage >= 0 && stage < s.stages && s.rank_of(m, stage) == rank;
  }
  bool here(int m, int stage) const { return on_rank(sched_, rank_, m, stage); }
  // The (m, s) keys each op reads: its own, and (the turn) the stage it takes its input from in
  // the process.
  static void keys_read(const pipeline::Schedule& s, int rank, const pipeline::Op& op,
                        std::vector<std::pair<int, int>>& out);

  // Resets the per-step tables and finds each stage's last weight-gradient op.
  void begin_step(const std::vector<pipeline::Op>& ops);
  void finish_stats();

  // A message op: adds a receive into a fresh buffer, or a send of a copy, to the batch that
  // post_batch() posts.
  void post(const pipeline::Op& op, const Step& st);
  void post_batch() {
    auto req = std::make_shared<Request>(pp_.batch_isend_irecv(batch_));
    for (auto& r : recvs_)
      if (!r.req) r.req = req;
    for (auto& s : sends_)
      if (!s.req) s.req = req;
    batch_.clear();
  }
  // A compute op: waits for the receives posted before it, then runs the chunk(s).
  void compute(const pipeline::Op& op, const Step& st);
  Program forward_of(int m, int stage, const Step& st);
  Program backward_of(int m, int stage, const Step& st, bool defer_weight);
  void forward_done(int m, int stage);
  // The step's end: every forward's loss parts read (the one wait for the stream they need), and
  // turned into losses_.
  void read_losses(const Step& st);
  void backward_done(int m, int stage);
  void run_pair(Program& f, Program& b);
  // Op i accumulates weight gradients into `stage`: if it is the step's last to, (m, stage)'s
  // layers report to layer_grads_final as they finish (else they report nothing).
  void watch_grads(size_t i, int m, int stage);

  // After (m, s)'s last use: its slot and gradient set go back to their pools.
  void retire(int k) {
    if (slot_of_[k] < 0) return;
    take_back_grads(k);
    slots_.give(slot_of_[k]);
    slot_of_[k] = -1;
  }
  void wait_receives() {  // time blocked here is pipeline idle (bubble + p2p latency)
    const auto t0 = clock::now();
    for (auto& r : recvs_) r.req->wait(), trace::complete(r.tr);
    if (!recvs_.empty()) trace::span_since(trace::Track::PpWait, "wait receives", trace::ns(t0));
    recvs_.clear();
    stats_.pp_idle += seconds_since(t0);
  }
  void wait_sends() {
    const auto t0 = clock::now();
    for (auto& s : sends_) s.req->wait(), msg_release(s.buf), trace::complete(s.tr);
    if (!sends_.empty()) trace::span_since(trace::Track::PpWait, "wait sends", trace::ns(t0));
    sends_.clear();
    stats_.pp_idle += seconds_since(t0);
  }
  // Schedule::send_window: with that many sends in flight, waits for the oldest before posting
  // another (sends_ is in posting order). A send still in the unposted batch is not waited for.
  void wait_window() {
    const size_t window = static_cast<size_t>(sched_.send_window);
    if (window == 0 || sends_.size() < window || !sends_.front().req) return;
    // the post's span so far, then the wait's, then the post's again: the step's slices tile it
    trace::span_since(trace::Track::Progress, "post", progress_t_);
    const auto t0 = clock::now();
    while (sends_.size() >= window && sends_.front().req) {
      sends_.front().req->wait(), msg_release(sends_.front().buf);
      trace::complete(sends_.front().tr);
      sends_.erase(sends_.begin());
    }
    trace::span_since(trace::Track::PpWait, "wait send window", trace::ns(t0));
    progress_t_ = trace::stamp();
    stats_.pp_idle += seconds_since(t0);
  }
  double ep_blocked() const { return opt_.ep_blocked ? opt_.ep_blocked() : 0.0; }

  typename Model<T>::MicroBatch& state(int k) { return slots_[slot_of_[k]]; }
  int msg_acquire(int64_t n) {
    const int b = msgs_.take();
    msgs_[b].resize(static_cast<size_t>(n));
    return b;
  }
  void msg_release(int& b) {
    if (b >= 0) msgs_.give(b);
    b = -1;
  }
  // Posts a send of a copy of src (so the slot may be reused before the send completes); the
  // buffer is released when the send completes.
  void send_copy(const T* src, size_t bytes, int peer, int tag, int64_t n, trace::Event tr) {
    const int b = msg_acquire(n);
    kernels::copy(chunks_[0]->exec(), msgs_[b].data(), src, bytes);
    batch_.push_back(P2pOp::send(msgs_[b].data(), bytes, peer, tag));
    sends_.push_back({nullptr, b, tr});
  }
  // The buffers the backward writes and keeps until the weight gradient (and the send of d input)
  // are not part of a slot: they are lent from a pool, so a rank holds in-flight-bound slots of
  // forward activations but only as many gradient sets as backwards overlap.
  void lend_grads(int k, int stage) {
    if (grads_of_[k] >= 0) return;
    const int g = grads_.take_for(stage);  // (a set of another stage's buffers is emptied first)
    grads_of_[k] = g;
    swap_grads(state(k), grads_[g]);
  }
  void take_back_grads(int k) {
    if (grads_of_[k] < 0) return;
    swap_grads(state(k), grads_[grads_of_[k]]);
    grads_.give(grads_of_[k]);
    grads_of_[k] = -1;
  }
  // One gradient set: the buffers of Model::MicroBatch::for_each_grad in visiting order, by
  // element type (T values; FP8 codes and scales of the gradients kept as Wgrad tiles).
  struct GradSet {
    std::vector<Buffer<T>> t;
    std::vector<Buffer<uint8_t>> codes;
    std::vector<Buffer<float>> scales;  // (T = float: unused, t holds them in order)
  };
  static void swap_grads(typename Model<T>::MicroBatch& mb, GradSet& set) {
    size_t it = 0, ic = 0, is = 0;
    const auto swap_in = [](auto& b, auto& pool, size_t& i) {
      if (i == pool.size()) pool.emplace_back(b.device());
      std::swap(b, pool[i++]);
    };
    mb.for_each_grad([&](auto& b) {
      using B = std::decay_t<decltype(b)>;
      if constexpr (std::is_same_v<B, Buffer<T>>)
        swap_in(b, set.t, it);
      else if constexpr (std::is_same_v<B, Buffer<uint8_t>>)
        swap_in(b, set.codes, ic);
      else
        swap_in(b, set.scales, is);
    });
  }
  void poll() {  // expert exchanges progress; completed sends give their buffers back
    if (opt_.progress) opt_.progress();
    for (size_t i = 0; i < sends_.size();) {
      if (sends_[i].req && sends_[i].req->test()) {  // (null: in the batch not yet posted)
        msg_release(sends_[i].buf);
        trace::complete(sends_[i].tr);
        sends_.erase(sends_.begin() + static_cast<std::ptrdiff_t>(i));  // (kept in posting order)
      } else {
        ++i;
      }
    }
  }

  std::vector<const Model<T>*> chunks_;
  Communicator& pp_;
  pipeline::Schedule sched_;
  int rank_;
  ExecOptions opt_;
  PoolPlan pools_;                             // of sched_ on this rank
  Pool<typename Model<T>::MicroBatch> slots_;  // micro-batch states
  std::vector<int> slot_of_;                   // slot_of_[key(m, s)]: its slot or -1
  Pool<GradSet> grads_;                        // gradient sets
  std::vector<int> grads_of_;                  // grads_of_[key]: its set or -1
  Pool<Buffer<T>> msgs_;                       // message buffers
  std::vector<int> act_of_, grad_of_;          // received input / d output of key
  std::vector<PendingSend> sends_;
  std::vector<PendingRecv> recvs_;  // receives posted since the last compute op
  int64_t progress_t_ = 0;          // trace: where the current op's progress/post span began
  std::vector<P2pOp> batch_;        // the messages of adjacent message ops, until post_batch()
  std::vector<Losses> losses_;      // [key] of the current run
  // [key][parts_stride_]: each forward's loss parts, read from the device as the forward ends
  // (loss_reads_[key]) and awaited at the end of the run (pinned on a GPU)
  PinnedVector<double> loss_parts_;
  std::vector<HostRead> loss_reads_;
  std::vector<uint8_t> forwarded_;  // [key]: its forward ran here this run
  int64_t parts_stride_ = 0;
  std::vector<int> last_grad_op_;  // [stage]: the last op of this rank accumulating into it
  size_t op_index_ = 0;            // of the op being run
  ExecStats stats_;
  std::vector<double> cost_sum_;  // [F, B, Bi, W, FB] seconds, and counts
  std::vector<int> cost_n_;
};

}  // namespace moetron

#include "parallel/pipeline_impl.h"
