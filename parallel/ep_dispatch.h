// Expert-parallel token dispatch over the EP group (the MoE layer's dispatch/combine phases).
//
// The routed experts of every MoE layer are split evenly over the EP ranks: rank p holds global
// experts [p E/EP, (p+1) E/EP). Dispatch sends each token ONCE to every rank that holds one of
// its top-k experts, with its k local expert ids (-1 for slots served elsewhere) and weights.
// Each rank computes its experts on what it received and returns, per received token, the sum of
// its experts' weighted outputs; combine adds the returned rows into the origin tokens (a plain
// sum, in rank order, so the result is deterministic). Backward: the gradient of combine is a
// dispatch of dy along the same plan; the gradient of dispatch returns d x rows and per-slot d
// weights along the reverse. Every phase has start (post the non-blocking exchange) and wait, so
// compute can run between.
//
// Exchanges (DESIGN-NOTES Part B 1.4.4): per-peer non-blocking point-to-point messages on a
// private split of the EP communicator, so several exchanges of one dispatcher can be in flight
// at once (an overlapped executor runs one micro-batch's forward against another's backward) and
// be started and waited in any order that is the same on every EP peer. No call blocks but a
// wait. dispatch_start sends its per-peer row counts (with its post time and the pairs per
// expert, below) and its rows at once and posts the count receives; the row receives are posted
// as soon as the counts are in, by progress() or at the latest by dispatch_wait. The other three
// phases reverse or repeat the dispatch's plan, so both sides' counts are known and they post
// everything at start. Each exchange has a unique tag: the dispatch's sequence number (every peer
// runs the same sequence of MoE calls, so it agrees everywhere) modulo a window (kTagWindow), times
// 5 (counts + the 4 phases); a start whose tag is still in flight (a plan kTagWindow dispatches
// old, in the same phase) throws std::logic_error instead of mismatching. Communicators whose
// point-to-point ignores tags (NCCL: Communicator::tags_match() is false; the k-th send matches the
// k-th receive) keep the collective path: a blocking count all-to-all, then one all-to-all-v per
// phase, posted in program order.
//
// Wire precision (SPEC §3.6): the token rows can travel as computed (Native: exact, what fp32
// runs use), all in BF16, or as DeepSeek-V3 moves them (FP8): the two dispatches (forward, and
// the combine's backward, which sends dy) in E4M3 with one power-of-two fp32 scale per 128
// channels, i.e. (1 + 4/128) bytes per channel instead of BF16's 2; the two combines (forward,
// and the dispatch's backward) in BF16, summed in fp32 at the origin. Expert ids and gate
// weights (2K values a row) always travel exactly, as T. The quantiser is kernels/fp8.h's, with
// the experts' own 1x128 tiling, so an FP8 expert GEMM re-quantises a received row to the same
// codes.
//
// Device memory (ARCHITECTURE contract 8): every touch of the activations and of the wire
// buffers is an op (the ep_* ops of kernels/ops.h) run on the model's execution context; the
// plan (slots, send order) is built by an op on the device, and only its per-peer counts come to
// the host (the messages' sizes), with the (token, slot) pairs per global expert (an
// expert_histogram of idx). The count message to peer p carries, besides the rows and the post
// time, the pairs for each of p's experts, so a rank learns the rows per local expert of what it
// receives from the counts (expert_offsets, model/dispatch.h) and its MoE layer reads nothing
// back from the device (DeepEP's notify does the same). On device memory (a GPU, the guard device)
// that read is started by dispatch_plan and awaited by dispatch_start, with a piece of other work
// in between (plans_ahead, model/dispatch.h): the host waits for the plan, not for the compute
// enqueued after it. The wire buffers are on the activation device. So the rows travel on the EP
// group of device data and the counts, host memory, on the EP group of host data when the two
// differ (a GPU run: NCCL and MPI; process_groups.h).
//
// Wire pool: a micro-batch's plan lives from its forward dispatch to its backward (in its
// DispatchState), but it needs the wires (a send and a receive buffer, the rows as they travel)
// only while one of its exchanges is in flight, and a rank has few of those at once (one per
// program the executor runs: two in an overlapped forward+backward pair). So the dispatcher owns
// the wires: an exchange takes a pair from the pool when its start packs and gives it back once
// its wait has decoded the received rows; the plan keeps only its routing. The pool holds as many
// pairs as exchanges were ever in flight at once, each grown to what it carried.
//
// Timing, on std::chrono::steady_clock: seconds blocked in waits (counts and rows), seconds each
// exchange was in flight (completion, as first seen by progress() or a wait, minus post), the
// number of completed exchanges, and the dispatches' skew to the latest same-node peer (from the
// post times in the count messages; CLOCK_MONOTONIC is one clock per node).
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <vector>

#include "kernels/buffer.h"
#include "kernels/exec.h"
#include "kernels/op_types.h"
#include "kernels/pinned.h"
#include "model/dispatch.h"
#include "parallel/comm.h"

namespace moetron {

struct EpPlan;  // one (layer, micro-batch)'s plan and exchange in flight (ep_dispatch.cpp)
struct EpWire;  // a send and a receive wire, lent by the dispatcher's pool to one exchange

// How the token rows travel: the encoding of the dispatched rows (the forward dispatch and the
// combine's backward, which sends dy) — the kernels' RowEncoding, one enum for both. The combines
// (forward, and the dispatch's backward) use the same encoding but never one below BF16: FP8
// dispatches in E4M3 and combines in BF16 (DeepSeek-V3's recipe).
using WirePrecision = kernels::RowEncoding;

// The four exchanges of a MoE layer, for byte counts.
enum class EpPhase { Dispatch, Combine, CombineBackward, DispatchBackward };

template <class T>
class EpDispatcher final : public TokenDispatcher<T> {
 public:
  // ex: the model's execution context (where the activations live and the ops run).
  // node_of_peer[p]: the node of EP rank p (for the nodes-per-token measurement), one per EP
  // rank. BF16 and FP8 wires need T = float (std::invalid_argument otherwise).
  // Collective over the EP group (splits a private communicator when tags_match()). ep carries
  // the rows (device memory); counts, when given, the per-peer row counts and post times (host
  // memory: a GPU run's MPI group beside NCCL's, the same members and ranks), else ep does.
  EpDispatcher(const Exec& ex, Communicator& ep, std::vector<int> node_of_peer,
               WirePrecision wire = WirePrecision::Native, Communicator* counts = nullptr);
  // Completes (waits for) every exchange still in flight, e.g. of a DispatchState dropped before
  // its wait: every peer must be destroying its dispatcher too, or have completed its side. The
  // wires die with the dispatcher: a plan that outlives it holds none, unless its exchange
  // failed to complete (a failed peer), whose wire stays with the requests that use it.
  ~EpDispatcher() override;
  EpDispatcher(const EpDispatcher&) = delete;
  EpDispatcher& operator=(const EpDispatcher&) = delete;
  int64_t first_expert(int64_t n_experts) const override {
    return ep_.rank() * (n_experts / ep_.size());
  }
  int64_t local_experts(int64_t n_experts) const override { return n_experts / ep_.size(); }

  // Device activations (not host memory: CUDA, Guard): the plan's counts come back from the
  // device, so dispatch_plan runs ahead (model/dispatch.h).
  bool plans_ahead() const override { return ex_.device != Device::CPU; }
  void dispatch_plan(DispatchState<T>& st, const int32_t* idx, int64_t N, int64_t K,
                     int64_t n_experts) override;
  void dispatch_start(DispatchState<T>& st, const T* x, const int32_t* idx, const T* w, int64_t N,
                      int64_t K, int64_t D, int64_t n_experts) override;
  void dispatch_wait(DispatchState<T>& st) override;
  const int64_t* expert_offsets(const DispatchState<T>& st) const override;
  void combine_start(DispatchState<T>& st) override;
  void combine_wait(DispatchState<T>& st, T* y) override;
  void combine_backward_start(DispatchState<T>& st, const T* dy) override;
  void combine_backward_wait(DispatchState<T>& st) override;
  void dispatch_backward_start(DispatchState<T>& st) override;
  void dispatch_backward_wait(DispatchState<T>& st, T* dx, T* dw) override;
  // Tests every exchange in flight without blocking (MPI moves rendezvous data only inside MPI
  // calls), posts the row receives of dispatches whose counts have arrived, and notes completion
  // times. Call it between pieces of work while exchanges are in flight.
  void progress() override;
  // Whether st's exchange has been seen complete (by progress() or a wait), or none was started:
  // its wait then returns without blocking. Does not itself make progress.
  bool done(const DispatchState<T>& st) const;
  // Exchanges started and not yet waited for (less those of dropped states seen complete).
  size_t in_flight() const { return live_.size(); }
  // The wire pairs that exist — free in the pool or lent to an exchange in flight — and their
  // bytes (capacities): the wire memory of this dispatcher.
  size_t wire_pairs() const;
  int64_t wire_bytes() const;
  // Dispatches get consecutive sequence numbers; tag = (seq % kTagWindow) * 5 + slot (0 counts,
  // 1 + phase rows) stays within 32767, the least MPI_TAG_UB the standard allows.
  static constexpr uint32_t kTagWindow = 6553;

  // Payload bytes this process sent so far in one phase.
  int64_t bytes_sent(EpPhase phase) const { return bytes_sent_[static_cast<int>(phase)]; }
  // Rows this process sent in st's dispatch (each token once per destination process).
  static int64_t rows_sent(const DispatchState<T>& st);
  WirePrecision wire() const { return wire_; }
  // Planning (trainer/plan.h), for N tokens over P ranks. state_bytes: what one MoE layer's
  // dispatch keeps per micro-batch (its plan lives in the micro-batch's DispatchState): the
  // routing only (slot and send_token, [N, P] int64 each, and the counts with the bad-id flag and
  // the pairs per expert, of E experts; the wires are pooled).
  // exchange_bytes: the pooled wires of one exchange in flight for tokens of width D and top-K
  // routing, each token sent to `dest` ranks on average: a send and a receive wire each grown to
  // the widest of the four phases' rows (N x dest rows either way: a rank receives as many rows
  // as it sends on average).
  static int64_t state_bytes(int64_t N, int64_t P, int64_t E);
  static int64_t exchange_bytes(WirePrecision wire, int64_t N, int64_t D, int64_t K, double dest);
  // The most expert rows this rank received in one dispatch since the last call, over the mean
  // (its own tokens' N x K): what its expert buffers grew to (moetron plan's ep_imbalance).
  double take_rows_peak() { return take(rows_peak_); }
  // The most nodes any one token was sent to since the last call (node-limited routing check).
  int64_t take_max_nodes_per_token() {
    const int64_t m = max_nodes_;
    max_nodes_ = 0;
    return m;
  }
  // Seconds spent blocked in waits (counts and rows) since the last call: the exposed
  // communication, what the overlap of a schedule must hide.
  double take_comm_seconds() { return take(comm_seconds_); }
  // Sum over the exchanges completed since the last call of (completion - post), completion as
  // first observed by progress() or a wait.
  double take_inflight_seconds() { return take(inflight_seconds_); }
  // Exchanges (any phase) completed since the last call.
  int64_t take_exchanges() {
    const int64_t n = exchanges_;
    exchanges_ = 0;
    return n;
  }
  // Sum over the dispatches whose counts arrived since the last call of max(0, latest post time
  // of a peer on this node - this rank's post time): how late the slowest local peer was.
  double take_skew_seconds() { return take(skew_seconds_); }

 private:
  // How one row of D activations is encoded in a phase: as T, bf16, or e4m3 codes + scales.
  kernels::RowEncoding encoding(EpPhase phase) const { return encoding(wire_, phase); }
  static kernels::RowEncoding encoding(WirePrecision wire, EpPhase phase);
  // rows of `row_bytes` bytes, already packed in the plan's send buffer: sent (grouped by peer,
  // send_counts) -> received (recv_counts), or the reverse; wait returns the received rows
  void exchange_start(DispatchState<T>& st, int64_t row_bytes, EpPhase phase);
  const uint8_t* exchange_wait(DispatchState<T>& st);
  // st's plan, its previous exchange completed and its wire back in the pool, holding a wire
  // from the pool for its next exchange (lend) or none; mark a new exchange started and register
  EpPlan& idle(DispatchState<T>& st, bool lend = true);
  void begin(DispatchState<T>& st, EpPhase phase);
  // the count exchange of a dispatch (after its plan is built)
  void counts_start(EpPlan& pl, const int64_t* pairs);
  void counts_in(EpPlan& pl);  // the peers' counts arrived: rows, skew, pairs per local expert
  // one exchange's life: post the row receives once the counts are known; advance it (block:
  // until complete); complete a plan's exchange and drop it from the registry
  void post_receives(EpPlan& pl);
  bool advance(EpPlan& pl, bool block);
  void finish(EpPlan& pl);
  // the pool: lend pl the largest free pair (a new, empty one when none is free); take its pair
  // back (its exchange complete, the received rows decoded or dropped)
  void lend_wire(EpPlan& pl);
  void return_wire(EpPlan& pl);
  static double take(double& v) {
    const double s = v;
    v = 0;
    return s;
  }
  Exec ex_;
  Communicator& ep_;
  std::unique_ptr<Communicator> own_;         // the private split (tags_match()), else null
  Communicator& net_;                         // what the exchanges use: *own_, or ep_
  bool p2p_;                                  // per-peer messages with tags (else collectives)
  std::unique_ptr<Communicator> own_counts_;  // the counts' private split (p2p, separate group)
  Communicator& counts_net_;                  // what the counts use: net_ unless given apart
  Buffer<int32_t> node_of_peer_;              // [P] on ex_.device
  std::vector<int> node_host_;                // [P] the same, on the host
  WirePrecision wire_;
  uint32_t next_seq_ = 0;                      // the next dispatch's sequence number
  std::vector<std::shared_ptr<EpPlan>> live_;  // plans with an exchange started, not waited
  std::vector<EpWire> pool_;                   // the free wire pairs
  int64_t max_nodes_ = 0;
  double rows_peak_ = 0;
  std::array<int64_t, 4> bytes_sent_{};
  double comm_seconds_ = 0, inflight_seconds_ = 0, skew_seconds_ = 0;
  int64_t exchanges_ = 0;
};

}  // namespace moetron
