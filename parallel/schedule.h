// Pipeline schedules as plain data (ARCHITECTURE contract 4; SPEC-deepseek-v3 §4).
//
// A generator turns (kind, PP ranks, micro-batches) into a Schedule: for every pipeline rank, the
// ordered list of operations it performs in one training step — compute (forward, input-backward,
// weight-backward, full backward, an overlapped forward+backward pair) and point-to-point messages
// (send/receive of an activation or of an activation gradient, with the peer rank). Nothing else
// knows a schedule's logic: validate() checks any schedule, the executor runs the lists, and
// simulate() replays the same lists under a cost model (the estimator and bench_schedules use it).
//
// Stages, directions and placement. A micro-batch m flows through the model stages 0..S-1 (each a
// contiguous piece of the layer list, model/model.h StageSpec) forward, then S-1..0 backward.
// Stage s of micro-batch m runs on rank route[direction_of_mb[m]][s]:
//   1f1b, zb1p  S = P, one direction, stage s on rank s.
//   dualpipe    S = P, two directions: micro-batches 0..C/2-1 enter at rank 0 (stage s on rank s),
//               C/2..C-1 enter at rank P-1 (stage s on rank P-1-s). Rank r thus holds two copies:
//               stage r (direction 0) and stage P-1-r (direction 1); the two copies of a stage must
//               have their gradients summed before the optimizer step (SPEC §4.2).
//   dualpipev   S = 2N on N ranks, one direction: stage s on rank s for s < N, on 2N-1-s otherwise
//               (a V: down to rank N-1, turn around locally, back up to rank 0, loss on rank 0).
// chunks_of_rank[r] lists the (direction, stage) pairs rank r holds, in "module" order: chunk 0 is
// DualPipe's module[0] / DualPipeV's phase 0.
//
// Execution contract:
//   * Ops run in list order. A message op only POSTS a non-blocking send/receive; it never waits
//     (but a send under send_window, below).
//   * Messages between a pair of ranks match in posting order: the i-th send a->b is the i-th
//     receive on b from a, with the same (kind, micro-batch, stage). So MPI with one tag, or NCCL
//     grouped p2p, delivers the right tensor; an executor may still tag by (kind, mb, stage).
//   * A compute op waits at most for every message op earlier in the rank's list to complete
//     ("commit" before each compute, as in the DualPipe reference), where a send completes only
//     once its receive is posted (rendezvous: no eager buffering assumed) and a receive once its
//     send is posted. validate() proves the schedule runs to the end under exactly this strictest
//     rule. An executor that waits for less — parallel/pipeline.h waits only for the earlier
//     receives, and for its sends at the end of the step — can only reach every post sooner, so
//     it cannot deadlock either. Under send_window it also waits, at a send's post, for its
//     oldest send in flight: with the window at least the sends a rank posts between two compute
//     ops (default_send_window), that send was posted before its last compute op, where strict
//     commit waited for it already; validate() replays this rule too, whatever the window.
//   * validate() also proves the other simple executor safe: each receive BLOCKS where it stands
//     in the list until its send is posted, and sends are buffered (never block). Neither model
//     implies the other (two ranks that each "receive, then send" pass the first only; the
//     rendezvous deadlock test in tests/test_parallel_schedule.cpp passes the second only).
//
// Messages name the PRODUCER stage: SendActivation{m, s} carries stage s's forward output (input
// of stage s+1); SendGrad{m, s} carries the gradient of stage s's input (output-gradient of s-1).
#pragma once

#include <functional>
#include <string>
#include <vector>

namespace moetron::pipeline {

enum class OpKind {
  Forward,          // F(m, s); on the last stage it also computes the loss
  BackwardInput,    // Bi(m, s): input gradient only; weight-gradient work queued for a later W
  BackwardWeight,   // W(m, s): the deferred weight gradient of an earlier Bi(m, s)
  Backward,         // B(m, s): input and weight gradient together
  ForwardBackward,  // F(m, s) overlapped with a backward of (mb2, stage2): full, or Bi when
                    // defer_weight (the pair DualPipe overlaps, SPEC §4.1)
  SendActivation,   // post send of stage s's output for m to `peer`
  RecvActivation,   // post receive of stage s's output for m from `peer` (input of stage s+1)
  SendGrad,         // post send of d(input of stage s) for m to `peer`
  RecvGrad,         // post receive of d(input of stage s) for m from `peer` (d output of s-1)
};

struct Op {
  OpKind kind = OpKind::Forward;
  int mb = -1;                // micro-batch, 0..C-1
  int stage = -1;             // model stage run (compute) or that produced the payload (messages)
  int peer = -1;              // messages only: the other rank
  int mb2 = -1, stage2 = -1;  // ForwardBackward only: the backward half
  bool defer_weight = false;  // ForwardBackward only: the backward half is input-only (Bi)

  bool is_message() const;  // a send or receive (every OpKind is listed: no order assumed)
  bool operator==(const Op&) const = default;
};

// The in-flight rule, the one place that counts activations in flight (validate()'s in-flight
// check and peak_in_flight() both use it): an op first OPENS the chunk of activations of its
// forward half (Forward, the F of a ForwardBackward pair), which counts towards the peak, then
// RELEASES the chunk of a backward that completes (Backward, BackwardWeight, or a pair's full
// backward half; BackwardInput keeps it until its W).
struct InFlightChange {
  int opened = 0, released = 0;
};
InFlightChange in_flight_change(const Op& op);

struct Chunk {
  int direction = 0, stage = 0;
};

struct Schedule {
  std::string kind;  // "1f1b" | "zb1p" | "dualpipe" | "dualpipev" | anything a test builds
  int ranks = 0;
  int stages = 0;                                  // S: stages on every micro-batch's path
  int microbatches = 0;                            // C
  std::vector<int> direction_of_mb;                // [C]
  std::vector<std::vector<int>> route;             // [directions][S] -> rank
  std::vector<std::vector<Chunk>> chunks_of_rank;  // [ranks] (derived from route)
  std::vector<std::vector<Op>> per_rank;           // [ranks] the op lists
  // Activations in flight on a rank: (m, s) pairs whose forward has started and whose backward
  // has not fully finished (B, or Bi and its W) — each one chunk of saved activations. validate()
  // requires the peak on rank r to be <= in_flight_bound[r]. Documented bounds:
  //   1f1b: P - r (its warm-up depth)
  //   zb1p: P on every rank (P - r until Bi, plus the r weight gradients rank r holds back: the
  //         peak of 1F1B's rank 0, SPEC §4.7 "PP")
  //   dualpipe: P + 1, dualpipev: 2N + 1 (S + 1 chunks, SPEC §4.7 "PP+1")
  // All are tight: the generated schedules reach them on every rank (tests).
  std::vector<int> in_flight_bound;  // [ranks]
  // > 0: before posting a send, a rank with this many of its sends still in flight waits for the
  // oldest (back-pressure: a rank ahead of its receiver would otherwise pile up sends, an [N, D]
  // buffer each — in the forward-only schedule, whose receivers never answer, one a micro-batch).
  // The generators set default_send_window(s), make_forward_only 1; 0: sends never wait.
  int send_window = 0;

  int rank_of(int mb, int stage) const { return route[direction_of_mb[mb]][stage]; }
  int chunk_of(int rank, int mb, int stage) const;  // index into chunks_of_rank[rank], or -1
  // m's index among the micro-batches of its direction (DualPipe counts each direction from 0).
  int local_mb(int mb) const;
};

// Builds the schedule; throws std::invalid_argument for an unknown kind or a (ranks,
// micro-batches) pair the kind cannot schedule, e.g. "schedule 1f1b: 3 micro-batches are too few
// for 4 pipeline ranks (need >= 4)". Constraints: 1f1b, zb1p: P >= 1, C >= P. dualpipe: P even,
// C >= 2 (SPEC §4.3's C even and >= 2P for the full 8 steps; fewer or odd: the schedule of enough
// micro-batches with the extra ones' ops removed, schedule_dualpipe.cpp). dualpipev: N >= 1,
// C >= 1 (likewise below 2N).
Schedule make_schedule(const std::string& kind, int pp_ranks, int microbatches);
Schedule make_1f1b(int pp_ranks, int microbatches);
Schedule make_zb1p(int pp_ranks, int microbatches);
Schedule make_dualpipe(int pp_ranks, int microbatches);
Schedule make_dualpipev(int pp_ranks, int microbatches);
// Evaluation: forward passes only, along `route` (stage s on rank route[s]; default: stage s on
// rank s, S = P — a training schedule's route[0] gives DualPipe's first direction and
// DualPipeV's V). Each rank runs its stages in stage order, and for each, receives, runs and
// passes on micro-batches 0..C-1 in order. Not a training schedule: validate() would reject it
// for the missing backwards. P >= 1, C >= 1.
Schedule make_forward_only(int pp_ranks, int microbatches, std::vector<int> route = {});

// Fills kind/ranks/stages/C/route/direction_of_mb/chunks_of_rank and empty op lists; for
// generators and for tests that build schedules by hand.
Schedule empty_schedule(const std::string& kind, int ranks, int stages, int microbatches,
                        std::vector<std::vector<int>> route, std::vector<int> direction_of_mb);

// The single-direction layout (stage s on rank s, bound P - r), after checking P >= 1, C >= P
// (schedule_linear.cpp, with the 1f1b and zb1p generators).
Schedule linear_schedule(const std::string& kind, int pp_ranks, int microbatches);

// The generators' one "too few micro-batches" message: "schedule <kind>: <C> micro-batches are
// too few for <P> pipeline ranks (need >= <need>)".
std::string too_few_microbatches(const std::string& kind, int microbatches, int pp_ranks, int need);

// Generator helper: appends ops to one rank's list, taking peers from the route. The message
// helpers emit nothing (and return false) when the message would not leave the rank or leave
// the path: producer or consumer stage outside 0..S-1, or both on this rank (DualPipeV's turn).
struct RankEmitter {
  Schedule& s;
  int rank;
  void forward(int mb, int stage);
  void backward(int mb, int stage);
  void backward_input(int mb, int stage);
  void weight(int mb, int stage);
  void forward_backward(int mb, int stage, int mb2, int stage2, bool defer_weight = false);
  bool send_activation(int mb, int stage);  // stage = producer; goes to stage + 1's rank
  bool recv_activation(int mb, int stage);  // this rank holds stage + 1
  bool send_grad(int mb, int stage);        // goes to stage - 1's rank
  bool recv_grad(int mb, int stage);        // this rank holds stage - 1
};

// Throws std::invalid_argument naming the schedule, rank, op index, op and the broken rule:
//  placement  each op's (mb, stage) runs on this rank; messages go to the right peer
//  once       every (m, s) has exactly one forward and one backward (B, Bi+W, or a pair's half);
//             each activation/gradient is sent and received at most once
//  order      F(m,s) after its input exists here (F(m,s-1) on this rank, or RecvActivation(m,s-1));
//             backward(m,s) after F(m,s) and after its output-gradient exists (loss on the last
//             stage, backward(m,s+1) here, or RecvGrad(m,s+1)); W after its Bi; sends after the
//             compute that produced their payload. The two halves of a pair may not depend on
//             each other.
//  matching   per rank pair, sends and receives pair up in posting order with equal (kind, mb,
//             stage); no send or receive is left over
//  deadlock   the ranks run to completion under the execution contract above (strict commit,
//             rendezvous sends), and again with blocking receives and buffered sends; a stall
//             is reported with what each stuck rank waits for
//  complete   at the end every (m, s) is forwarded and fully backwarded (no W left)
//  in-flight  activations in flight never exceed in_flight_bound[r]
void validate(const Schedule& s);

// The most sends a rank of `s` posts between two compute ops (at least 1): the training
// schedules' send_window. A wait it makes is then for a send posted before the rank's last compute
// op, which strict commit (validate) would have waited for before that op: back-pressure that
// costs no bubble where the receiver keeps pace, and bounds the sends a rank holds where it lags.
int default_send_window(const Schedule& s);

// When each send's buffer is free again under any timing the execution contract allows
// (parallel/pipeline.h: a rank polls its sends after every op; messages between two ranks arrive
// in posting order): release[r][i], for send op i of rank r, is the op of rank r after which it
// surely is. A send completes once its receive has been posted, and the receiver's first compute
// op after that post waits for it; rank r knows that op has started when a message the receiver
// posted after it reaches r — at the first compute op of r that waits for such a message (only
// the receiver's own messages: one through a third rank may overtake the receiver's word that
// the send completed). A send nothing tells r about is held to the step's end
// (per_rank[r].size()), or, under send_window, until the post of the send that makes one too many
// in flight. -1 for the other ops. Validates nothing beyond the messages' matching: give it a
// valid schedule (or a forward-only one).
std::vector<std::vector<int>> send_release(const Schedule& s);

// Peak activations in flight per rank (same counting as the bound above).
std::vector<int> peak_in_flight(const Schedule& s);

// Cost model, times in any unit. B is a FULL backward (input + weight), W its weight part, so an
// input-only backward costs B - W (SPEC §4.7 notation). FB is an overlapped F + full-B pair; a
// pair with a deferred weight costs FB - W. comm: latency of one p2p message (a message completes
// at max(send posted, receive posted) + comm). Posting a message costs nothing.
struct Costs {
  double F = 1, B = 2, W = 1, FB = 3, comm = 0;
};

// What op costs under c (F, B, Bi = B - W, W, FB or FB - W for a pair deferring W; 0: messages).
double op_cost(const Op& op, const Costs& c);

struct SimResult {
  double makespan = 0;         // all ranks start at 0; the step ends when the last rank finishes
  std::vector<double> busy;    // [ranks] compute time
  std::vector<double> idle;    // [ranks] makespan - busy
  std::vector<double> finish;  // [ranks] when the rank's last op ended
  std::vector<std::vector<double>> start;  // [ranks][op] compute start / message post time
                                           // (a Gantt chart of the step)
  std::vector<std::vector<double>> end;    // [ranks][op] compute end (messages: -1)
  double bubble = 0;           // max over ranks of idle: what the §4.7 "Bubble" column counts
                               // (ranks' idle times differ when FB != F + B)
  double bubble_fraction = 0;  // sum(idle) / (ranks * makespan)
};

// Validates (throwing what validate() throws), then replays the op lists. By default a compute
// op waits only for the receives posted before it (a send never delays its sender: the buffer
// is just held, up to send_window sends in flight) — what parallel/pipeline.h does;
// strict_commit = true waits for every earlier message too (and has no window), as the DualPipe
// reference's commit() and validate()'s first deadlock check do. ZB1P needs the former to keep
// its gain (bench_schedules prints both).
SimResult simulate(const Schedule& s, const Costs& c, bool strict_commit = false);
// The same with a cost per (rank, compute op) — stages differ (embedding, head and MTP, DualPipe's
// two chunks), so the estimator (trainer/estimate.h) prices each op itself — and one latency per
// message (`comm`, as Costs::comm).
using OpCost = std::function<double(int rank, const Op& op)>;
SimResult simulate(const Schedule& s, const OpCost& cost, double comm, bool strict_commit = false);
// The same on shared cores (a CPU node with more processes than cores), replayed in time order:
// every schedule rank stands for `replicas` processes on the node that run alike (its DP copies);
// the processes computing at a moment share `cores` fairly, each at min(1, cores / computing) of a
// core. An op computes its `work` (seconds at a whole core) at that rate, then waits `wait`
// (its exchanges in flight) without a core; a rank waiting for a message takes no core (MPI's
// sleeping waits). busy counts an op from its start to its end. With cores >= ranks x replicas
// it is simulate() with cost = work + wait.
SimResult simulate_shared(const Schedule& s, const OpCost& work, const OpCost& wait, double comm,
                          double cores, double replicas);

// Text: "F1.2" / "Bi0.3" / "W0.3" / "B1.1" / "F0.3&B1.1" (chunk index . micro-batch within its
// direction, the notation of SPEC §4.6); messages with the global micro-batch and the producer
// stage: "sendA(m3,s0)>1", "recvG(m6,s3)<2".
std::string to_string(const Schedule& s, int rank, const Op& op);
// One rank's compute ops (and messages when `messages`), space-separated.
std::string format_rank(const Schedule& s, int rank, bool messages = false);
const char* kind_name(OpKind k);

}  // namespace moetron::pipeline
