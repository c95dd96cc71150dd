// Pipeline schedules: the shared parts — building blocks for generators, the one validator, and
// the cost-model simulator (the generators live in schedule_linear.cpp (1f1b, zb1p) and
// schedule_dualpipe.cpp).
//
// validate() works in four passes: (1) per rank, walk the list in order and check placement,
// exactly-once and local dependencies, counting activations in flight; (2) every (m, s) is
// complete; (3) sends and receives pair up per rank pair in posting order; (4) replay all ranks
// under the strict execution contract (schedule.h) and report a stall. The replay engine is also
// simulate()'s: a rank advances through its list, posting messages at its current time; a compute
// op starts when the rank is free and the messages it waits for have both ends posted (+ comm).
// Every event time is a max over already-known times, so the order in which ranks are advanced
// does not change the result; "no rank can advance" is exactly a deadlock.
#include "parallel/schedule.h"

#include <algorithm>
#include <deque>
#include <limits>
#include <sstream>
#include <stdexcept>
#include <utility>

namespace moetron::pipeline {

// ---- schedule data ------------------------------------------------------------------------

bool Op::is_message() const {
  switch (kind) {
    case OpKind::SendActivation:
    case OpKind::RecvActivation:
    case OpKind::SendGrad:
    case OpKind::RecvGrad:
      return true;
    case OpKind::Forward:
    case OpKind::BackwardInput:
    case OpKind::BackwardWeight:
    case OpKind::Backward:
    case OpKind::ForwardBackward:
      return false;
  }
  return false;
}

InFlightChange in_flight_change(const Op& op) {
  switch (op.kind) {
    case OpKind::Forward:
      return {.opened = 1};
    case OpKind::Backward:
    case OpKind::BackwardWeight:
      return {.released = 1};
    case OpKind::ForwardBackward:
      return {.opened = 1, .released = op.defer_weight ? 0 : 1};
    default:  // BackwardInput (its W releases) and messages
      return {};
  }
}

int Schedule::chunk_of(int rank, int mb, int stage) const {
  if (rank < 0 || rank >= static_cast<int>(chunks_of_rank.size()) || mb < 0 ||
      mb >= static_cast<int>(direction_of_mb.size()))
    return -1;
  const auto& ch = chunks_of_rank[rank];
  for (size_t i = 0; i < ch.size(); ++i)
    if (ch[i].direction == direction_of_mb[mb] && ch[i].stage == stage) return static_cast<int>(i);
  return -1;
}

int Schedule::local_mb(int mb) const {
  if (mb < 0 || mb >= static_cast<int>(direction_of_mb.size())) return mb;
  int n = 0;
  for (int i = 0; i < mb; ++i) n += direction_of_mb[i] == direction_of_mb[mb];
  return n;
}

Schedule empty_schedule(const std::string& kind, int ranks, int stages, int microbatches,
                        std::vector<std::vector<int>> route, std::vector<int> direction_of_mb) {
  Schedule s;
  s.kind = kind;
  s.ranks = ranks;
  s.stages = stages;
  s.microbatches = microbatches;
  s.route = std::move(route);
  s.direction_of_mb = std::move(direction_of_mb);
  s.chunks_of_rank.assign(ranks, {});
  for (int d = 0; d < static_cast<int>(s.route.size()); ++d)
    for (int st = 0; st < static_cast<int>(s.route[d].size()); ++st) {
      const int r = s.route[d][st];
      if (r >= 0 && r < ranks) s.chunks_of_rank[r].push_back({d, st});
    }
  s.per_rank.assign(ranks, {});
  s.in_flight_bound.assign(ranks, 0);
  return s;
}

std::string too_few_microbatches(const std::string& kind, int C, int P, int need) {
  return "schedule " + kind + ": " + std::to_string(C) + " micro-batches are too few for " +
         std::to_string(P) + " pipeline ranks (need >= " + std::to_string(need) + ")";
}

Schedule make_schedule(const std::string& kind, int pp_ranks, int microbatches) {
  if (kind == "1f1b") return make_1f1b(pp_ranks, microbatches);
  if (kind == "zb1p") return make_zb1p(pp_ranks, microbatches);
  if (kind == "dualpipe") return make_dualpipe(pp_ranks, microbatches);
  if (kind == "dualpipev") return make_dualpipev(pp_ranks, microbatches);
  throw std::invalid_argument("schedule " + kind +
                              ": unknown kind (expected 1f1b, zb1p, dualpipe or dualpipev)");
}

Schedule make_forward_only(int pp_ranks, int microbatches, std::vector<int> route) {
  if (pp_ranks < 1 || microbatches < 1)
    throw std::invalid_argument("forward-only schedule: needs >= 1 rank and >= 1 micro-batch");
  if (route.empty())
    for (int r = 0; r < pp_ranks; ++r) route.push_back(r);
  for (int r : route)
    if (r < 0 || r >= pp_ranks)
      throw std::invalid_argument("forward-only schedule: route names rank " + std::to_string(r));
  const int S = static_cast<int>(route.size());
  Schedule s = empty_schedule("forward", pp_ranks, S, microbatches, {route},
                              std::vector<int>(microbatches, 0));
  for (int r = 0; r < pp_ranks; ++r) {
    RankEmitter e{s, r};
    for (int st = 0; st < S; ++st) {
      if (route[st] != r) continue;
      for (int m = 0; m < microbatches; ++m) {
        e.recv_activation(m, st - 1);
        e.forward(m, st);
        e.send_activation(m, st);
      }
      s.in_flight_bound[r] += microbatches;
    }
  }
  // one send in flight a rank: a stage runs at most about a micro-batch ahead of the next
  s.send_window = 1;
  return s;
}

// ---- generator helper ---------------------------------------------------------------------

void RankEmitter::forward(int mb, int stage) {
  s.per_rank[rank].push_back({.kind = OpKind::Forward, .mb = mb, .stage = stage});
}
void RankEmitter::backward(int mb, int stage) {
  s.per_rank[rank].push_back({.kind = OpKind::Backward, .mb = mb, .stage = stage});
}
void RankEmitter::backward_input(int mb, int stage) {
  s.per_rank[rank].push_back({.kind = OpKind::BackwardInput, .mb = mb, .stage = stage});
}
void RankEmitter::weight(int mb, int stage) {
  s.per_rank[rank].push_back({.kind = OpKind::BackwardWeight, .mb = mb, .stage = stage});
}
void RankEmitter::forward_backward(int mb, int stage, int mb2, int stage2, bool defer_weight) {
  s.per_rank[rank].push_back({.kind = OpKind::ForwardBackward,
                              .mb = mb,
                              .stage = stage,
                              .mb2 = mb2,
                              .stage2 = stage2,
                              .defer_weight = defer_weight});
}

namespace {
// Emits a message of `kind` about (mb, stage) to/from the rank of `other_stage`, unless that
// stage is off the path or on this rank.
bool emit_message(RankEmitter& e, OpKind kind, int mb, int stage, int other_stage) {
  if (stage < 0 || stage >= e.s.stages || other_stage < 0 || other_stage >= e.s.stages)
    return false;
  const int peer = e.s.rank_of(mb, other_stage);
  if (peer == e.rank) return false;
  e.s.per_rank[e.rank].push_back({.kind = kind, .mb = mb, .stage = stage, .peer = peer});
  return true;
}
}  // namespace

bool RankEmitter::send_activation(int mb, int stage) {
  return emit_message(*this, OpKind::SendActivation, mb, stage, stage + 1);
}
bool RankEmitter::recv_activation(int mb, int stage) {
  return emit_message(*this, OpKind::RecvActivation, mb, stage, stage);
}
bool RankEmitter::send_grad(int mb, int stage) {
  return emit_message(*this, OpKind::SendGrad, mb, stage, stage - 1);
}
bool RankEmitter::recv_grad(int mb, int stage) {
  return emit_message(*this, OpKind::RecvGrad, mb, stage, stage);
}

// ---- text ---------------------------------------------------------------------------------

const char* kind_name(OpKind k) {
  switch (k) {
    case OpKind::Forward:
      return "Forward";
    case OpKind::BackwardInput:
      return "BackwardInput";
    case OpKind::BackwardWeight:
      return "BackwardWeight";
    case OpKind::Backward:
      return "Backward";
    case OpKind::ForwardBackward:
      return "ForwardBackward";
    case OpKind::SendActivation:
      return "SendActivation";
    case OpKind::RecvActivation:
      return "RecvActivation";
    case OpKind::SendGrad:
      return "SendGrad";
    case OpKind::RecvGrad:
      return "RecvGrad";
  }
  return "?";
}

namespace {
// "1.3": chunk index on `rank` . micro-batch within its direction; "?m7s2" when (m, s) is not
// on this rank (only hand-broken schedules).
std::string chunk_mb(const Schedule& s, int rank, int mb, int stage) {
  const int c = s.chunk_of(rank, mb, stage);
  if (c < 0) return "?m" + std::to_string(mb) + "s" + std::to_string(stage);
  return std::to_string(c) + "." + std::to_string(s.local_mb(mb));
}
}  // namespace

std::string to_string(const Schedule& s, int rank, const Op& op) {
  const std::string ms = "(m" + std::to_string(op.mb) + ",s" + std::to_string(op.stage) + ")";
  switch (op.kind) {
    case OpKind::Forward:
      return "F" + chunk_mb(s, rank, op.mb, op.stage);
    case OpKind::BackwardInput:
      return "Bi" + chunk_mb(s, rank, op.mb, op.stage);
    case OpKind::BackwardWeight:
      return "W" + chunk_mb(s, rank, op.mb, op.stage);
    case OpKind::Backward:
      return "B" + chunk_mb(s, rank, op.mb, op.stage);
    case OpKind::ForwardBackward:
      return "F" + chunk_mb(s, rank, op.mb, op.stage) + (op.defer_weight ? "&Bi" : "&B") +
             chunk_mb(s, rank, op.mb2, op.stage2);
    case OpKind::SendActivation:
      return "sendA" + ms + ">" + std::to_string(op.peer);
    case OpKind::RecvActivation:
      return "recvA" + ms + "<" + std::to_string(op.peer);
    case OpKind::SendGrad:
      return "sendG" + ms + ">" + std::to_string(op.peer);
    case OpKind::RecvGrad:
      return "recvG" + ms + "<" + std::to_string(op.peer);
  }
  return "?";
}

std::string format_rank(const Schedule& s, int rank, bool messages) {
  std::string out;
  for (const Op& op : s.per_rank.at(rank)) {
    if (op.is_message() && !messages) continue;
    if (!out.empty()) out += ' ';
    out += to_string(s, rank, op);
  }
  return out;
}

// ---- message matching ---------------------------------------------------------------------

namespace {

struct Ref {
  int rank = -1, index = -1;
};

bool is_send(OpKind k) { return k == OpKind::SendActivation || k == OpKind::SendGrad; }
bool is_recv(OpKind k) { return k == OpKind::RecvActivation || k == OpKind::RecvGrad; }
OpKind recv_kind_of(OpKind send) {
  return send == OpKind::SendActivation ? OpKind::RecvActivation : OpKind::RecvGrad;
}

std::string ordinal(size_t i) {
  const size_t n = i + 1;
  const char* suf = (n % 100 >= 11 && n % 100 <= 13) ? "th"
                    : n % 10 == 1                    ? "st"
                    : n % 10 == 2                    ? "nd"
                    : n % 10 == 3                    ? "rd"
                                                     : "th";
  return std::to_string(n) + suf;
}

[[noreturn]] void fail(const Schedule& s, int rank, int index, const std::string& rule,
                       const std::string& what) {
  std::ostringstream o;
  o << "schedule " << s.kind << ": rank " << rank << ", ";
  const auto& ops = s.per_rank[rank];
  if (index >= 0 && index < static_cast<int>(ops.size()))
    o << "op " << index << " (" << to_string(s, rank, ops[index]) << ")";
  else
    o << "end of list";
  o << ": " << rule << ": " << what;
  throw std::invalid_argument(o.str());
}

std::string describe(const Op& op) {
  return std::string(kind_name(op.kind)) + "(mb " + std::to_string(op.mb) + ", stage " +
         std::to_string(op.stage) + ")";
}

// partner[r][i]: the other end of message op i on rank r. Throws (rule "matching") when sends
// and receives of a rank pair do not pair up in order.
std::vector<std::vector<Ref>> match_messages(const Schedule& s) {
  const int P = s.ranks;
  std::vector<std::vector<Ref>> partner(P);
  // sends[a][b] / recvs[b][a]: op indices on a (to b) / on b (from a), in list order.
  std::vector<std::vector<std::vector<int>>> sends(P, std::vector<std::vector<int>>(P)),
      recvs(P, std::vector<std::vector<int>>(P));
  for (int r = 0; r < P; ++r) {
    partner[r].assign(s.per_rank[r].size(), Ref{});
    for (int i = 0; i < static_cast<int>(s.per_rank[r].size()); ++i) {
      const Op& op = s.per_rank[r][i];
      if (is_send(op.kind)) sends[r][op.peer].push_back(i);
      if (is_recv(op.kind)) recvs[op.peer][r].push_back(i);
    }
  }
  for (int a = 0; a < P; ++a)
    for (int b = 0; b < P; ++b) {
      const auto& sd = sends[a][b];
      const auto& rv = recvs[a][b];
      for (size_t k = 0; k < std::max(sd.size(), rv.size()); ++k) {
        const std::string nth = "the " + ordinal(k) + " message from rank " + std::to_string(a) +
                                " to rank " + std::to_string(b);
        if (k >= rv.size())
          fail(s, a, sd[k], "matching",
               nth + " is never received: rank " + std::to_string(b) + " posts only " +
                   std::to_string(rv.size()) + " receive(s) from rank " + std::to_string(a));
        if (k >= sd.size())
          fail(s, b, rv[k], "matching",
               nth + " is never sent: rank " + std::to_string(a) + " posts only " +
                   std::to_string(sd.size()) + " send(s) to rank " + std::to_string(b));
        const Op& so = s.per_rank[a][sd[k]];
        const Op& ro = s.per_rank[b][rv[k]];
        if (recv_kind_of(so.kind) != ro.kind || so.mb != ro.mb || so.stage != ro.stage)
          fail(s, a, sd[k], "matching",
               nth + " is " + describe(so) + " but rank " + std::to_string(b) + "'s " + ordinal(k) +
                   " receive from rank " + std::to_string(a) + " (op " + std::to_string(rv[k]) +
                   ") is " + describe(ro) +
                   " (messages between two ranks must be posted in the same order on both ends)");
        partner[a][sd[k]] = {b, rv[k]};
        partner[b][rv[k]] = {a, sd[k]};
      }
    }
  return partner;
}

}  // namespace

// ---- the replay engine --------------------------------------------------------------------

// Schedule::send_window in a replay: when a rank whose sends `in_flight` (op indices, oldest
// first) are not known complete may post another at time t. Drops those complete by then; while
// the window is full, waits for the oldest (complete at max(post, partner's post) + comm). -1
// (blocked = that send) while the oldest's partner is not posted.
double send_window_free(const Schedule& s, const std::vector<std::vector<Ref>>& partner,
                        const std::vector<std::vector<double>>& start, double comm, int r, double t,
                        std::deque<int>& in_flight, int& blocked) {
  if (s.send_window <= 0) return t;
  auto done_at = [&](int i) {  // -1: its partner is not posted yet
    const Ref p = partner[r][i];
    const double posted = start[p.rank][p.index];
    return posted < 0 ? -1.0 : std::max(start[r][i], posted) + comm;
  };
  std::erase_if(in_flight, [&](int i) {
    const double d = done_at(i);
    return d >= 0 && d <= t;
  });
  while (static_cast<int>(in_flight.size()) >= s.send_window) {
    const double d = done_at(in_flight.front());
    if (d < 0) {
      blocked = in_flight.front();
      return -1;
    }
    t = std::max(t, d);
    in_flight.pop_front();
  }
  return t;
}

double op_cost(const Op& op, const Costs& c) {
  switch (op.kind) {
    case OpKind::Forward:
      return c.F;
    case OpKind::BackwardInput:
      return c.B - c.W;
    case OpKind::BackwardWeight:
      return c.W;
    case OpKind::Backward:
      return c.B;
    case OpKind::ForwardBackward:
      return op.defer_weight ? c.FB - c.W : c.FB;
    default:
      return 0;
  }
}

namespace {

// Makespan, idle times and bubble of a replay that finished (finish and busy filled in).
void summarise(SimResult& sim) {
  const int P = static_cast<int>(sim.finish.size());
  sim.makespan = *std::max_element(sim.finish.begin(), sim.finish.end());
  sim.idle.resize(P);
  double idle_sum = 0;
  for (int r = 0; r < P; ++r) {
    sim.idle[r] = sim.makespan - sim.busy[r];
    sim.bubble = std::max(sim.bubble, sim.idle[r]);
    idle_sum += sim.idle[r];
  }
  sim.bubble_fraction = sim.makespan > 0 ? idle_sum / (P * sim.makespan) : 0;
}

struct Replay {
  SimResult sim;
  std::string stall;  // empty when every rank finished
  int stall_rank = -1, stall_index = -1;
};

// One replay: every rank's position in its list, clock and start times.
class Replayer {
 public:
  Replayer(const Schedule& s, const std::vector<std::vector<Ref>>& partner, OpCost cost,
           double comm, bool strict)
      : s_(s), partner_(partner), cost_(std::move(cost)), comm_(comm), strict_(strict) {
    const int P = s.ranks;
    pc_.assign(P, 0), waited_.assign(P, 0), blocked_on_.assign(P, -1);
    in_flight_.assign(P, {});
    t_.assign(P, 0.0);
    done_.assign(P, false);
    out_.sim.start.resize(P), out_.sim.end.resize(P);
    for (int r = 0; r < P; ++r) {
      out_.sim.start[r].assign(s.per_rank[r].size(), -1.0);
      out_.sim.end[r].assign(s.per_rank[r].size(), -1.0);
    }
    out_.sim.busy.assign(P, 0.0);
    out_.sim.finish.assign(P, 0.0);
  }

  Replay run() {
    for (bool progress = true; progress;) {
      progress = false;
      for (int r = 0; r < s_.ranks; ++r) progress |= advance(r);
    }
    for (int r = 0; r < s_.ranks; ++r)
      if (!done_[r]) report_stall(r);
    if (out_.stall.empty()) summarise(out_.sim);
    return out_;
  }

 private:
  // Waits for message ops [from, to) of rank r (all, or receives only). Returns the completion
  // time, or -1 (and the op in blocked_on_) if one's partner is not posted yet.
  double wait(int r, int from, int to, bool all) {
    auto& start = out_.sim.start;
    double ready = t_[r];
    for (int j = from; j < to; ++j) {
      const Op& op = s_.per_rank[r][j];
      if (!op.is_message() || !(all || is_recv(op.kind))) continue;
      const Ref p = partner_[r][j];
      if (start[p.rank][p.index] < 0) {
        blocked_on_[r] = j;
        return -1;
      }
      ready = std::max(ready, std::max(start[r][j], start[p.rank][p.index]) + comm_);
    }
    return ready;
  }

  // When rank r, at time t, may post a send under Schedule::send_window (it waits for its oldest
  // sends in flight until fewer than the window are); -1 (and the op in blocked_on_) if that
  // send's partner is not posted yet.
  double window_free(int r, double t) {
    return send_window_free(s_, partner_, out_.sim.start, comm_, r, t, in_flight_[r],
                            blocked_on_[r]);
  }

  // Runs rank r as far as it can go; true if it moved.
  bool advance(int r) {
    const auto& ops = s_.per_rank[r];
    bool progress = false;
    while (!done_[r]) {
      const int i = pc_[r];
      if (i == static_cast<int>(ops.size())) {  // final commit: every message completes
        const double end = wait(r, 0, i, true);
        if (end < 0) break;
        out_.sim.finish[r] = end;
        done_[r] = progress = true;
        break;
      }
      const Op& op = ops[i];
      if (op.is_message()) {
        if (is_send(op.kind) && !strict_) {  // (strict commit: the reference's, no window)
          const double free = window_free(r, t_[r]);
          if (free < 0) break;
          t_[r] = free;
          if (s_.send_window > 0) in_flight_[r].push_back(i);
        }
        out_.sim.start[r][i] = t_[r];
        ++pc_[r];
        progress = true;
        continue;
      }
      const double begin = wait(r, waited_[r], i, strict_);
      if (begin < 0) break;
      const double d = cost_(r, op);
      out_.sim.start[r][i] = begin;
      out_.sim.end[r][i] = begin + d;
      t_[r] = begin + d;
      out_.sim.busy[r] += d;
      waited_[r] = ++pc_[r];
      progress = true;
    }
    return progress;
  }

  // Appends what stuck rank r waits for to the stall report.
  void report_stall(int r) {
    if (out_.stall_rank < 0) {
      out_.stall_rank = r;
      out_.stall_index = pc_[r];
    }
    const Op& need = s_.per_rank[r][blocked_on_[r]];
    const Ref p = partner_[r][blocked_on_[r]];
    std::ostringstream o;
    if (!out_.stall.empty()) o << "; ";
    o << "rank " << r << " is stuck at ";
    if (pc_[r] < static_cast<int>(s_.per_rank[r].size()))
      o << "op " << pc_[r] << " (" << to_string(s_, r, s_.per_rank[r][pc_[r]]) << ")";
    else
      o << "the end of its list";
    o << " waiting for its op " << blocked_on_[r] << " (" << to_string(s_, r, need)
      << "), whose partner is rank " << p.rank << "'s op " << p.index << " ("
      << to_string(s_, p.rank, s_.per_rank[p.rank][p.index]) << ")";
    out_.stall += o.str();
  }

  const Schedule& s_;
  const std::vector<std::vector<Ref>>& partner_;
  const OpCost cost_;
  const double comm_;
  const bool strict_;
  std::vector<int> pc_, waited_;
  std::vector<std::deque<int>> in_flight_;  // per rank, under send_window: its sends not known done
  std::vector<int> blocked_on_;             // message op a blocked rank waits for
  std::vector<double> t_;                   // when the rank is free
  std::vector<bool> done_;
  Replay out_;  // out_.sim.start[r][i]: when op i of rank r started (compute) or was posted
                // (message); < 0: not yet
};

// A replay on shared cores, in time order: every rank of the schedule stands for `replicas`
// processes that run alike (its DP copies), and the processes computing at a moment share
// `cores` fairly (each at min(1, cores / computing) of a core). An op computes its `work` at that
// rate, then waits its `wait` (exchanges in flight) without a core; a rank blocked on a message
// takes no core either. Receives complete at max(post, partner's post) + comm, as in Replayer
// with strict = false.
class SharedReplayer {
 public:
  SharedReplayer(const Schedule& s, const std::vector<std::vector<Ref>>& partner, OpCost work,
                 OpCost wait, double comm, double cores, double replicas)
      : s_(s),
        partner_(partner),
        work_(std::move(work)),
        wait_(std::move(wait)),
        comm_(comm),
        cores_(cores),
        replicas_(replicas) {
    const int P = s.ranks;
    pc_.assign(P, 0), waited_.assign(P, 0), phase_.assign(P, Phase::Idle);
    in_flight_.assign(P, {});
    left_.assign(P, 0.0), until_.assign(P, 0.0), began_.assign(P, 0.0);
    sim_.start.resize(P), sim_.end.resize(P);
    for (int r = 0; r < P; ++r) {
      sim_.start[r].assign(s.per_rank[r].size(), -1.0);
      sim_.end[r].assign(s.per_rank[r].size(), -1.0);
    }
    sim_.busy.assign(P, 0.0), sim_.finish.assign(P, 0.0);
  }

  SimResult run() {
    const int P = s_.ranks;
    for (;;) {
      for (bool moved = true; moved;) {  // posts unblock other ranks: until nothing moves
        moved = false;
        for (int r = 0; r < P; ++r) moved |= try_start(r);
      }
      int finished = 0, computing = 0;
      for (int r = 0; r < P; ++r) {
        finished += phase_[r] == Phase::Done;
        computing += phase_[r] == Phase::Work;
      }
      if (finished == P) return sim_;
      const double rate = computing ? std::min(1.0, cores_ / (computing * replicas_)) : 1;
      double next = kNever;
      for (int r = 0; r < P; ++r) {
        if (phase_[r] == Phase::Work) next = std::min(next, t_ + left_[r] / rate);
        if (phase_[r] == Phase::Wait || phase_[r] == Phase::Ready || phase_[r] == Phase::Hold)
          next = std::min(next, until_[r]);
      }
      if (next == kNever) throw std::logic_error("simulate_shared: no rank can move");
      const double dt = next - t_;
      t_ = next;
      for (int r = 0; r < P; ++r) {
        if (phase_[r] == Phase::Work) {
          left_[r] -= dt * rate;
          if (left_[r] <= 1e-12 * (1 + t_)) phase_[r] = Phase::Wait, until_[r] = -1;
        }
        if (phase_[r] == Phase::Wait && until_[r] <= t_) end_op(r);
        if (phase_[r] == Phase::Ready && until_[r] <= t_) begin_op(r);
        if (phase_[r] == Phase::Hold && until_[r] <= t_) phase_[r] = Phase::Idle;
      }
    }
  }

 private:
  enum class Phase { Idle, Hold, Ready, Work, Wait, Done };  // Hold: a send waits on its window
  static constexpr double kNever = std::numeric_limits<double>::infinity();

  // When message ops [from, to) of rank r (receives only, or all) complete; -1 if a partner is
  // not posted yet.
  double ready(int r, int from, int to, bool all) const {
    double t = t_;
    for (int j = from; j < to; ++j) {
      const Op& op = s_.per_rank[r][j];
      if (!op.is_message() || !(all || is_recv(op.kind))) continue;
      const Ref p = partner_[r][j];
      if (sim_.start[p.rank][p.index] < 0) return -1;
      t = std::max(t, std::max(sim_.start[r][j], sim_.start[p.rank][p.index]) + comm_);
    }
    return t;
  }

  // An idle rank posts its messages, then waits for its next compute op's receives (Ready) or,
  // at the end of its list, for every message (then Done at the last one's completion).
  bool try_start(int r) {
    if (phase_[r] != Phase::Idle) return false;
    const auto& ops = s_.per_rank[r];
    bool moved = false;
    for (; pc_[r] < static_cast<int>(ops.size()) && ops[pc_[r]].is_message(); moved = true) {
      if (is_send(ops[pc_[r]].kind)) {  // under send_window: may have to wait first
        int blocked = -1;
        const double free =
            send_window_free(s_, partner_, sim_.start, comm_, r, t_, in_flight_[r], blocked);
        if (free < 0) return moved;  // (tried again when another rank moves)
        if (free > t_) {
          phase_[r] = Phase::Hold, until_[r] = free;
          return true;
        }
        if (s_.send_window > 0) in_flight_[r].push_back(pc_[r]);
      }
      sim_.start[r][pc_[r]++] = t_;
    }
    const int i = pc_[r];
    const bool last = i == static_cast<int>(ops.size());
    const double at = last ? ready(r, 0, i, true) : ready(r, waited_[r], i, false);
    if (at < 0) return moved;
    until_[r] = at;
    phase_[r] = Phase::Ready;
    if (at <= t_) begin_op(r);
    return true;
  }

  void begin_op(int r) {
    const int i = pc_[r];
    if (i == static_cast<int>(s_.per_rank[r].size())) {
      phase_[r] = Phase::Done;
      sim_.finish[r] = t_;
      return;
    }
    const Op& op = s_.per_rank[r][i];
    sim_.start[r][i] = began_[r] = t_;
    left_[r] = work_(r, op);
    phase_[r] = left_[r] > 0 ? Phase::Work : Phase::Wait;
    until_[r] = phase_[r] == Phase::Wait ? t_ + wait_(r, op) : -1;
  }

  void end_op(int r) {
    if (until_[r] < 0) {  // its work just ended: now its exchanges
      until_[r] = t_ + wait_(r, s_.per_rank[r][pc_[r]]);
      if (until_[r] > t_) return;
    }
    const int i = pc_[r];
    sim_.end[r][i] = t_;
    sim_.busy[r] += t_ - began_[r];
    waited_[r] = ++pc_[r];
    phase_[r] = Phase::Idle;
  }

  const Schedule& s_;
  const std::vector<std::vector<Ref>>& partner_;
  const OpCost work_, wait_;
  const double comm_, cores_, replicas_;
  double t_ = 0;
  std::vector<int> pc_, waited_;
  std::vector<std::deque<int>> in_flight_;  // per rank, under send_window (as Replayer's)
  std::vector<Phase> phase_;
  std::vector<double> left_;   // work still to do, in seconds at a whole core
  std::vector<double> until_;  // Ready: when the receives complete; Wait: when the exchanges do
  std::vector<double> began_;
  SimResult sim_;
};

Replay replay(const Schedule& s, const std::vector<std::vector<Ref>>& partner, const Costs& c,
              bool strict) {
  return Replayer(
             s, partner, [c](int, const Op& op) { return op_cost(op, c); }, c.comm, strict)
      .run();
}

Replay replay(const Schedule& s, const std::vector<std::vector<Ref>>& partner, const OpCost& cost,
              double comm, bool strict) {
  return Replayer(s, partner, cost, comm, strict).run();
}

}  // namespace

// ---- validator ----------------------------------------------------------------------------

namespace {

[[noreturn]] void fail_shape(const Schedule& s, const std::string& what) {
  throw std::invalid_argument("schedule " + s.kind + ": shape: " + what);
}

void check_shape(const Schedule& s) {
  const int P = s.ranks, S = s.stages, C = s.microbatches;
  if (P < 1 || S < 1 || C < 1)
    fail_shape(s, "ranks, stages and micro-batches must be >= 1, got " + std::to_string(P) + ", " +
                      std::to_string(S) + ", " + std::to_string(C));
  if (static_cast<int>(s.per_rank.size()) != P || static_cast<int>(s.in_flight_bound.size()) != P ||
      static_cast<int>(s.chunks_of_rank.size()) != P)
    fail_shape(s, "per_rank, in_flight_bound and chunks_of_rank need one entry per rank (" +
                      std::to_string(P) + ")");
  if (static_cast<int>(s.direction_of_mb.size()) != C)
    fail_shape(s, "direction_of_mb needs one entry per micro-batch (" + std::to_string(C) + ")");
  if (s.route.empty()) fail_shape(s, "route is empty");
  for (size_t d = 0; d < s.route.size(); ++d) {
    if (static_cast<int>(s.route[d].size()) != S)
      fail_shape(s, "route[" + std::to_string(d) + "] needs one rank per stage");
    for (int r : s.route[d])
      if (r < 0 || r >= P) fail_shape(s, "route names rank " + std::to_string(r));
  }
  for (int m = 0; m < C; ++m)
    if (s.direction_of_mb[m] < 0 || s.direction_of_mb[m] >= static_cast<int>(s.route.size()))
      fail_shape(s, "micro-batch " + std::to_string(m) + " has no route");
  const Schedule fresh = empty_schedule(s.kind, P, S, C, s.route, s.direction_of_mb);
  for (int r = 0; r < P; ++r) {
    const auto& a = s.chunks_of_rank[r];
    const auto& b = fresh.chunks_of_rank[r];
    bool same = a.size() == b.size();
    for (size_t i = 0; same && i < a.size(); ++i)
      same = a[i].direction == b[i].direction && a[i].stage == b[i].stage;
    if (!same)
      fail_shape(s, "chunks_of_rank[" + std::to_string(r) + "] does not follow from the route");
  }
}

// Pass 1 (one rank): fields, placement, exactly-once, order, in-flight.
struct Tracker {
  const Schedule& s;
  // Per (m, s), set by the one rank that owns the entry.
  std::vector<std::vector<char>> fwd, bwd;  // bwd: 0 none, 1 Bi (W pending), 2 complete
  std::vector<std::vector<char>> sent_act, recv_act, sent_grad, recv_grad;

  explicit Tracker(const Schedule& sc) : s(sc) {
    const std::vector<char> row(sc.stages, 0);
    fwd.assign(sc.microbatches, row);
    bwd = sent_act = recv_act = sent_grad = recv_grad = fwd;
  }

  static std::string ms(int m, int st) {
    return "micro-batch " + std::to_string(m) + " stage " + std::to_string(st);
  }

  void check_range(int r, int i, int m, int st) const {
    if (m < 0 || m >= s.microbatches || st < 0 || st >= s.stages)
      fail(s, r, i, "placement",
           ms(m, st) + " is out of range (" + std::to_string(s.microbatches) + " micro-batches, " +
               std::to_string(s.stages) + " stages)");
  }
  void check_here(int r, int i, int m, int st, const char* what) const {
    check_range(r, i, m, st);
    if (s.rank_of(m, st) != r)
      fail(s, r, i, "placement",
           std::string(what) + " of " + ms(m, st) + " belongs on rank " +
               std::to_string(s.rank_of(m, st)) + ", not rank " + std::to_string(r));
  }

  void check_forward(int r, int i, int m, int st) const {
    check_here(r, i, m, st, "forward");
    if (fwd[m][st]) fail(s, r, i, "once", "second forward of " + ms(m, st));
    if (st == 0) return;
    const int up = s.rank_of(m, st - 1);
    if (up == r && !fwd[m][st - 1])
      fail(s, r, i, "order",
           "forward of " + ms(m, st) + " before the forward of stage " + std::to_string(st - 1) +
               " that produces its input (same rank)");
    if (up != r && !recv_act[m][st - 1])
      fail(s, r, i, "order",
           "forward of " + ms(m, st) + " before its input is received (no earlier " +
               "RecvActivation(mb " + std::to_string(m) + ", stage " + std::to_string(st - 1) +
               ") from rank " + std::to_string(up) + ")");
  }
  void check_backward(int r, int i, int m, int st) const {
    check_here(r, i, m, st, "backward");
    if (bwd[m][st]) fail(s, r, i, "once", "second backward of " + ms(m, st));
    if (!fwd[m][st]) fail(s, r, i, "order", "backward of " + ms(m, st) + " before its forward");
    if (st == s.stages - 1) return;  // starts from the loss
    const int down = s.rank_of(m, st + 1);
    if (down == r && !bwd[m][st + 1])
      fail(s, r, i, "order",
           "backward of " + ms(m, st) + " before the backward of stage " + std::to_string(st + 1) +
               " that produces its output gradient (same rank)");
    if (down != r && !recv_grad[m][st + 1])
      fail(s, r, i, "order",
           "backward of " + ms(m, st) + " before its output gradient is received (no earlier " +
               "RecvGrad(mb " + std::to_string(m) + ", stage " + std::to_string(st + 1) +
               ") from rank " + std::to_string(down) + ")");
  }
  void check_message(int r, int i, const Op& op) const {
    const int m = op.mb, st = op.stage;
    check_range(r, i, m, st);
    const bool act = op.kind == OpKind::SendActivation || op.kind == OpKind::RecvActivation;
    const int other = act ? st + 1 : st - 1;  // the consumer stage
    if (other < 0 || other >= s.stages)
      fail(s, r, i, "placement",
           std::string(act ? "the last stage's output" : "the first stage's input gradient") +
               " is never sent (" + ms(m, st) + ")");
    const int producer = s.rank_of(m, st), consumer = s.rank_of(m, other);
    const bool send = is_send(op.kind);
    const int self = send ? producer : consumer, peer = send ? consumer : producer;
    if (self != r)
      fail(s, r, i, "placement",
           std::string(send ? "sent from" : "received on") + " the wrong rank: " + ms(m, st) +
               (send ? " is produced on rank " : " is consumed on rank ") + std::to_string(self));
    if (peer == r)
      fail(s, r, i, "placement",
           "message to itself: stages " + std::to_string(st) + " and " + std::to_string(other) +
               " of micro-batch " + std::to_string(m) + " are both on rank " + std::to_string(r));
    if (op.peer != peer)
      fail(s, r, i, "placement",
           "peer is rank " + std::to_string(op.peer) + ", should be rank " + std::to_string(peer));
    switch (op.kind) {
      case OpKind::SendActivation:
        if (!fwd[m][st])
          fail(s, r, i, "order", "activation of " + ms(m, st) + " sent before its forward");
        if (sent_act[m][st]) fail(s, r, i, "once", "activation of " + ms(m, st) + " sent twice");
        break;
      case OpKind::RecvActivation:
        if (recv_act[m][st])
          fail(s, r, i, "once", "activation of " + ms(m, st) + " received twice");
        break;
      case OpKind::SendGrad:
        if (!bwd[m][st])
          fail(s, r, i, "order", "input gradient of " + ms(m, st) + " sent before its backward");
        if (sent_grad[m][st]) fail(s, r, i, "once", "gradient of " + ms(m, st) + " sent twice");
        break;
      default:
        if (recv_grad[m][st]) fail(s, r, i, "once", "gradient of " + ms(m, st) + " received twice");
    }
  }

  void run_rank(int r) {
    int in_flight = 0;
    const auto& ops = s.per_rank[r];
    for (int i = 0; i < static_cast<int>(ops.size()); ++i) {
      const Op& op = ops[i];
      check_fields(r, i, op);
      if (op.is_message()) {
        check_message(r, i, op);
        (op.kind == OpKind::SendActivation   ? sent_act
         : op.kind == OpKind::RecvActivation ? recv_act
         : op.kind == OpKind::SendGrad       ? sent_grad
                                             : recv_grad)[op.mb][op.stage] = 1;
        continue;
      }
      check_compute(r, i, op);
      const InFlightChange d = in_flight_change(op);
      in_flight += d.opened;
      if (d.opened > 0 && in_flight > s.in_flight_bound[r])
        fail(s, r, i, "in-flight",
             std::to_string(in_flight) + " activations in flight, more than this rank's bound " +
                 std::to_string(s.in_flight_bound[r]));
      in_flight -= d.released;
    }
  }

  void check_fields(int r, int i, const Op& op) const {
    const bool pair = op.kind == OpKind::ForwardBackward;
    if (op.is_message() != (op.peer >= 0) || pair != (op.mb2 >= 0 || op.stage2 >= 0) ||
        (!pair && op.defer_weight))
      fail(s, r, i, "placement",
           "malformed op: peer is only for messages, mb2/stage2/defer_weight only for pairs");
    if (op.is_message() && op.peer >= s.ranks)
      fail(s, r, i, "placement", "peer rank " + std::to_string(op.peer) + " does not exist");
  }

  // A compute op: its checks, then what it marks done.
  void check_compute(int r, int i, const Op& op) {
    switch (op.kind) {
      case OpKind::Forward:
        check_forward(r, i, op.mb, op.stage);
        fwd[op.mb][op.stage] = 1;
        break;
      case OpKind::Backward:
      case OpKind::BackwardInput:
        check_backward(r, i, op.mb, op.stage);
        bwd[op.mb][op.stage] = op.kind == OpKind::Backward ? 2 : 1;
        break;
      case OpKind::BackwardWeight:
        check_here(r, i, op.mb, op.stage, "weight gradient");
        if (bwd[op.mb][op.stage] != 1)
          fail(s, r, i, "order",
               "weight gradient of " + ms(op.mb, op.stage) +
                   (bwd[op.mb][op.stage] == 0 ? " before its input-backward (Bi)"
                                              : " after a full backward or a previous W"));
        bwd[op.mb][op.stage] = 2;
        break;
      default:  // ForwardBackward: both halves against the state before the pair
        check_forward(r, i, op.mb, op.stage);
        check_backward(r, i, op.mb2, op.stage2);
        fwd[op.mb][op.stage] = 1;
        bwd[op.mb2][op.stage2] = op.defer_weight ? 1 : 2;
    }
  }

  void check_complete(int r) const {
    const int end = static_cast<int>(s.per_rank[r].size());
    for (int m = 0; m < s.microbatches; ++m)
      for (int st = 0; st < s.stages; ++st) {
        if (s.rank_of(m, st) != r) continue;
        if (!fwd[m][st]) fail(s, r, end, "complete", ms(m, st) + " is never forwarded");
        if (bwd[m][st] == 0) fail(s, r, end, "complete", ms(m, st) + " has no backward");
        if (bwd[m][st] == 1)
          fail(s, r, end, "complete", ms(m, st) + ": its weight gradient (W) never runs");
      }
  }
};

// The second deadlock model (blocking receives): a rank stops at a receive until the peer has
// posted the matching send; sends are buffered and never block; compute never waits. Passing the
// strict model does not imply this one (two ranks that each "receive, then send" to the other
// pass the strict model), so validate() checks both.
std::string blocking_receive_stall(const Schedule& s, const std::vector<std::vector<Ref>>& partner,
                                   int& stall_rank, int& stall_index) {
  const int P = s.ranks;
  std::vector<int> pc(P, 0);
  for (bool progress = true; progress;) {
    progress = false;
    for (int r = 0; r < P; ++r) {
      const auto& ops = s.per_rank[r];
      while (pc[r] < static_cast<int>(ops.size())) {
        if (is_recv(ops[pc[r]].kind)) {
          const Ref p = partner[r][pc[r]];
          if (pc[p.rank] <= p.index) break;  // the send is not posted yet
        }
        ++pc[r];
        progress = true;
      }
    }
  }
  std::ostringstream o;
  for (int r = 0; r < P; ++r) {
    if (pc[r] == static_cast<int>(s.per_rank[r].size())) continue;
    if (stall_rank < 0) stall_rank = r, stall_index = pc[r];
    const Ref p = partner[r][pc[r]];
    if (o.tellp() > 0) o << "; ";
    o << "rank " << r << " blocks in op " << pc[r] << " (" << to_string(s, r, s.per_rank[r][pc[r]])
      << ") until rank " << p.rank << " reaches op " << p.index << " ("
      << to_string(s, p.rank, s.per_rank[p.rank][p.index]) << ")";
  }
  return o.str();
}

}  // namespace

void validate(const Schedule& s) {
  check_shape(s);
  Tracker tr(s);
  for (int r = 0; r < s.ranks; ++r) tr.run_rank(r);
  for (int r = 0; r < s.ranks; ++r) tr.check_complete(r);
  const auto partner = match_messages(s);
  const Replay rp = replay(s, partner, Costs{}, /*strict=*/true);
  if (!rp.stall.empty())
    fail(s, rp.stall_rank, rp.stall_index, "deadlock",
         "under strict commit with rendezvous sends, " + rp.stall);
  if (s.send_window > 0) {  // what the executor runs: receives before compute, the send window
    const Replay w = replay(s, partner, Costs{}, /*strict=*/false);
    if (!w.stall.empty())
      fail(s, w.stall_rank, w.stall_index, "deadlock",
           "with " + std::to_string(s.send_window) + " send(s) in flight at most, " + w.stall);
  }
  int br = -1, bi = -1;
  const std::string blocked = blocking_receive_stall(s, partner, br, bi);
  if (!blocked.empty())
    fail(s, br, bi, "deadlock", "with blocking receives and buffered sends, " + blocked);
}

int default_send_window(const Schedule& s) {
  int most = 1;
  for (const std::vector<Op>& ops : s.per_rank) {
    int run = 0;
    for (const Op& op : ops) {
      if (!op.is_message()) run = 0;
      most = std::max(most, run += is_send(op.kind));
    }
  }
  return most;
}

std::vector<std::vector<int>> send_release(const Schedule& s) {
  const auto partner = match_messages(s);
  std::vector<std::vector<int>> release(s.ranks);
  for (int r = 0; r < s.ranks; ++r) {
    const std::vector<Op>& ops = s.per_rank[r];
    const int n = static_cast<int>(ops.size());
    release[r].assign(n, -1);
    // the sends still held: (op, peer, the receiver's first compute op after the receive's post)
    struct Held {
      int op, peer, reader;
    };
    std::vector<Held> held;
    std::vector<int> sends;               // this rank's sends, in posting order
    std::vector<int> heard(s.ranks, -1);  // per peer: the last of its ops a message came from
    int waited = 0;
    for (int i = 0; i < n; ++i) {
      const Op& op = ops[i];
      if (is_send(op.kind)) {
        const auto [p, k] = partner[r][i];
        int reader = k + 1;
        while (reader < static_cast<int>(s.per_rank[p].size()) &&
               s.per_rank[p][reader].is_message())
          ++reader;
        held.push_back({i, p, reader});
        sends.push_back(i);
      }
      if (op.is_message()) continue;
      for (; waited < i; ++waited)  // the receives op i waits for
        if (is_recv(ops[waited].kind)) {
          const Ref from = partner[r][waited];
          heard[from.rank] = std::max(heard[from.rank], from.index);
        }
      waited = i + 1;
      std::erase_if(held, [&](const Held& h) {
        if (heard[h.peer] <= h.reader) return false;
        release[r][h.op] = i;
        return true;
      });
    }
    for (const Held& h : held) release[r][h.op] = n;
    // under a window, the send `send_window` posts later waits for (at most) it: held until then
    for (size_t a = 0; s.send_window > 0 && a + s.send_window < sends.size(); ++a) {
      int& rel = release[r][sends[a]];
      rel = std::min(rel, sends[a + s.send_window] - 1);
    }
  }
  return release;
}

std::vector<int> peak_in_flight(const Schedule& s) {
  std::vector<int> peak(s.per_rank.size(), 0);
  for (size_t r = 0; r < s.per_rank.size(); ++r) {
    int cur = 0;
    for (const Op& op : s.per_rank[r]) {
      const InFlightChange d = in_flight_change(op);
      cur += d.opened;
      peak[r] = std::max(peak[r], cur);
      cur -= d.released;
    }
  }
  return peak;
}

SimResult simulate(const Schedule& s, const Costs& c, bool strict_commit) {
  validate(s);
  const Replay rp = replay(s, match_messages(s), c, strict_commit);
  if (!rp.stall.empty())  // cannot happen after validate(): waiting less never stalls
    throw std::invalid_argument("schedule " + s.kind + ": simulate: " + rp.stall);
  return rp.sim;
}

SimResult simulate(const Schedule& s, const OpCost& cost, double comm, bool strict_commit) {
  validate(s);
  const Replay rp = replay(s, match_messages(s), cost, comm, strict_commit);
  if (!rp.stall.empty())
    throw std::invalid_argument("schedule " + s.kind + ": simulate: " + rp.stall);
  return rp.sim;
}

SimResult simulate_shared(const Schedule& s, const OpCost& work, const OpCost& wait, double comm,
                          double cores, double replicas) {
  validate(s);
  if (!(cores > 0) || !(replicas > 0))
    throw std::invalid_argument("simulate_shared: cores > 0 and replicas > 0 needed");
  const auto partner = match_messages(s);
  SimResult sim = SharedReplayer(s, partner, work, wait, comm, cores, replicas).run();
  summarise(sim);
  return sim;
}

}  // namespace moetron::pipeline
