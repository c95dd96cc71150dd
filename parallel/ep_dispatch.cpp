// Expert-parallel dispatch/combine over per-peer messages (see ep_dispatch.h).
//
// Payload rows (bytes), with A(D) one row of D activations in the phase's encoding (T, bf16, or
// D e4m3 codes followed by ceil(D/128) fp32 scales; kernels::row_encoding_bytes):
//   dispatch          [A(x) | K local expert ids as T | K gate weights as T]
//   combine           [A(y)]
//   combine backward  [A(dy)]
//   dispatch backward [A(dx) | K weight gradients as T]
// Ids are small integers, exact in T. Rows are packed and unpacked only by the ep_* ops
// (kernels/cpu/ep_wire.cpp on the CPU): the plan op writes, per (token, peer), the row the token
// takes to that peer (slot [N,P]) and the origin token of each sent row (send_token), both on the
// device; the host keeps only the counts per peer that size the messages.
//
// On the wire, every phase sends peer p's rows as one message (none when there are no rows: the
// receiver knows that from the counts) and receives into per-peer blocks contiguous in rank
// order, the layout an all-to-all-v gives, so the decode, and the results, are those of the
// collective path bit for bit. A dispatch's count message to each peer is two int64: the rows it
// will send there and its post time in steady-clock nanoseconds. This rank's own rows go through
// the communicator like any peer's; its own count is copied.
//
// The registry (live_) holds a shared_ptr to each plan with an exchange started and not waited
// for: progress() advances them, a wait removes its own, and a plan whose DispatchState was
// destroyed or reused before its wait stays alive (its wire included) until its exchange is
// complete (a reuse waits for it first; progress() retires a dropped one it sees complete; the
// destructor completes the rest).
//
// The wire pool (pool_): an exchange holds a pair from its start's packing (idle() lends it; a
// dispatch's, at dispatch_start, not at dispatch_plan, so no pair waits across a piece) to
// its wait's decode (return_wire after the last read of the received rows), so the pairs in use
// are the exchanges in flight. A pair moves into the plan (EpPlan::wire, declared before the
// requests that read and write it, so an exchange still in flight when its plan dies is waited
// for before its wire is freed) and only the dispatcher moves it back: a plan never reaches for
// its dispatcher, which may be gone (its destructor takes back the wires of what it completed).
// idle() lends the largest free pair: the sizes then settle on the pool's pairs growing to the
// widest phase, and a warm steady state allocates nothing.
#include "parallel/ep_dispatch.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/ops.h"
#include "parallel/trace.h"

namespace moetron {

// A send and a receive wire: the rows as they travel (grow-only, reused by every phase).
struct EpWire {
  explicit EpWire(Device d) : send(d), recv(d) {}
  Buffer<uint8_t> send, recv;
  int64_t bytes() const { return static_cast<int64_t>(send.capacity() + recv.capacity()); }
};

// The dispatch plan of one (layer, micro-batch), kept in DispatchState::plan, and its exchange
// in flight (one at a time: a plan's phases run one after another). Device buffers on the
// activation device; counts on the host.
struct EpPlan {
  explicit EpPlan(Device d) : info(d), slot(d), send_token(d), wire(d) {}
  // [P+2+E] rows per peer, max nodes per token, bad expert ids, (token, slot) pairs per expert
  Buffer<int64_t> info;
  Buffer<int64_t> slot;                           // [N,P] row of token n to peer p, or -1
  Buffer<int64_t> send_token;                     // [N*P] sent row -> origin token
  PinnedVector<int64_t> info_host;                // [P+2+E] info, read back (pinned on a GPU)
  HostRead info_read;                             // that read, until dispatch_start waits
  bool planned = false;                           // dispatch_plan ran; dispatch_start not yet
  std::vector<int64_t> send_counts, recv_counts;  // rows per peer (host)
  int64_t rows_sent = 0, rows_received = 0;
  int64_t El = 0;                   // experts per rank
  int64_t pairs = 0;                // N x K: this rank's tokens' expert rows (the mean per rank)
  std::vector<int64_t> expert_off;  // [El+1] received pairs per local expert, as offsets (host)
  EpWire wire;                      // lent by the pool while has_wire (empty otherwise)
  bool has_wire = false;
  std::vector<size_t> send_bytes, recv_bytes;
  // the exchange in flight
  uint32_t seq = 0;  // the dispatch's sequence number, the same on every EP peer (tags)
  EpPhase phase = EpPhase::Dispatch;
  int64_t row_bytes = 0;
  bool active = false;     // started, not yet waited for
  bool receiving = false;  // the row receives are posted (counts known)
  bool complete = false;   // completion observed
  int64_t posted_ns = 0;   // steady clock, at start
  // dispatch only, per peer: rows, post time, then (token, slot) pairs per the receiver's local
  // expert ([P][2+El])
  std::vector<int64_t> count_out, count_in;
  Request counts, sends, recvs;  // last: destroyed (waited for) before the wire they use
};

namespace {
template <class T>
EpPlan& plan_of(DispatchState<T>& st, Device d) {
  if (!st.plan) st.plan = std::make_shared<EpPlan>(d);
  return *static_cast<EpPlan*>(st.plan.get());
}
int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}
// rows travel back along the plan (received rows return to their origins)
bool reversed(EpPhase phase) {
  return phase == EpPhase::Combine || phase == EpPhase::DispatchBackward;
}
int tag_of(uint32_t seq, int slot) {
  return static_cast<int>(seq % EpDispatcher<float>::kTagWindow) * 5 + slot;
}
constexpr int kCountSlot = 0;
int row_slot(EpPhase phase) { return 1 + static_cast<int>(phase); }
// trace slices (parallel/trace.h): an exchange in flight, and a wait for one
const char* const kPhaseName[] = {"dispatch", "combine", "combine backward", "dispatch backward"};
const char* const kWaitName[] = {"EP wait dispatch", "EP wait combine", "EP wait combine backward",
                                 "EP wait dispatch backward"};
int64_t total(const std::vector<size_t>& v) {
  int64_t s = 0;
  for (size_t x : v) s += static_cast<int64_t>(x);
  return s;
}
}  // namespace

template <class T>
EpDispatcher<T>::EpDispatcher(const Exec& ex, Communicator& ep, std::vector<int> node_of_peer,
                              WirePrecision wire, Communicator* counts)
    : ex_(ex),
      ep_(ep),
      own_(ep.tags_match() ? ep.split(0, ep.rank()) : nullptr),
      net_(own_ ? *own_ : ep),
      p2p_(own_ != nullptr),
      own_counts_(counts && counts != &ep && p2p_ ? counts->split(0, ep.rank()) : nullptr),
      counts_net_(own_counts_               ? *own_counts_
                  : counts && counts != &ep ? *counts
                                            : net_),
      node_of_peer_(ex.device),
      node_host_(node_of_peer),
      wire_(wire) {
  if (wire != WirePrecision::Native && !std::is_same_v<T, float>)
    throw std::invalid_argument("EpDispatcher: BF16 and FP8 wires carry float activations");
  if (counts && (counts->size() != ep.size() || counts->rank() != ep.rank()))
    throw std::invalid_argument("EpDispatcher: the counts' group is not the EP group");
  if (ex.device == Device::CUDA && !ep.tags_match() && (!counts || counts == &ep))
    throw std::invalid_argument(
        "EpDispatcher: an EP group on the device (NCCL) needs a host group for the counts");
  if (static_cast<int>(node_of_peer.size()) != ep.size())
    throw std::invalid_argument("EpDispatcher: node_of_peer needs one node per EP rank");
  const std::vector<int32_t> nodes(node_of_peer.begin(), node_of_peer.end());
  node_of_peer_.resize(nodes.size());
  if (ex_.device != Device::Meta)
    kernels::copy_from_host(ex_, node_of_peer_.data(), nodes.data(),
                            sizeof(int32_t) * nodes.size());
}

template <class T>
EpDispatcher<T>::~EpDispatcher() {
  for (auto& pl : live_) {
    try {
      advance(*pl, /*block=*/true);
    } catch (...) {  // a failed peer: nothing more to do while destroying
    }
    pl->active = false;                  // its state may outlive this dispatcher
    if (pl->complete) return_wire(*pl);  // else its wire stays with the requests that use it
  }
}

template <class T>
kernels::RowEncoding EpDispatcher<T>::encoding(WirePrecision wire, EpPhase phase) {
  const bool dispatch = phase == EpPhase::Dispatch || phase == EpPhase::CombineBackward;
  if (wire == WirePrecision::FP8 && !dispatch) return kernels::RowEncoding::BF16;
  return wire;
}

namespace {
template <class T>
int64_t act_bytes(kernels::RowEncoding e, int64_t D) {
  return kernels::row_encoding_bytes(e, D, static_cast<int64_t>(sizeof(T)));
}
}  // namespace

template <class T>
int64_t EpDispatcher<T>::state_bytes(int64_t N, int64_t P, int64_t E) {
  return 8 * (2 * N * P + P + 2 + E);  // slot, send_token, info
}

template <class T>
int64_t EpDispatcher<T>::exchange_bytes(WirePrecision wire, int64_t N, int64_t D, int64_t K,
                                        double dest) {
  const int64_t t = static_cast<int64_t>(sizeof(T));
  // row bytes of each phase, as the *_start functions below pack them
  const int64_t width =
      std::max({act_bytes<T>(encoding(wire, EpPhase::Dispatch), D) + 2 * K * t,
                act_bytes<T>(encoding(wire, EpPhase::Combine), D),
                act_bytes<T>(encoding(wire, EpPhase::CombineBackward), D),
                act_bytes<T>(encoding(wire, EpPhase::DispatchBackward), D) + K * t});
  return static_cast<int64_t>(2 * static_cast<double>(N) * dest * static_cast<double>(width));
}

template <class T>
EpPlan& EpDispatcher<T>::idle(DispatchState<T>& st, bool lend) {
  EpPlan& pl = plan_of(st, ex_.device);
  if (pl.active) finish(pl);  // reused before its wait: its buffers are about to change
  return_wire(pl);            // one its wait never decoded (reused, or a decode that threw)
  if (lend) lend_wire(pl);
  return pl;
}

template <class T>
void EpDispatcher<T>::lend_wire(EpPlan& pl) {
  const auto it = std::max_element(pool_.begin(), pool_.end(), [](const auto& a, const auto& b) {
    return a.bytes() < b.bytes();
  });
  if (it == pool_.end()) {
    pl.wire = EpWire(ex_.device);
  } else {
    pl.wire = std::move(*it);
    pool_.erase(it);
  }
  pl.has_wire = true;
}

template <class T>
void EpDispatcher<T>::return_wire(EpPlan& pl) {
  if (!pl.has_wire) return;
  pool_.push_back(std::move(pl.wire));
  pl.wire = EpWire(ex_.device);
  pl.has_wire = false;
}

template <class T>
size_t EpDispatcher<T>::wire_pairs() const {
  size_t n = pool_.size();
  for (const auto& pl : live_) n += pl->has_wire;
  return n;
}

template <class T>
int64_t EpDispatcher<T>::wire_bytes() const {
  int64_t b = 0;
  for (const EpWire& w : pool_) b += w.bytes();
  for (const auto& pl : live_)
    if (pl->has_wire) b += pl->wire.bytes();
  return b;
}

template <class T>
void EpDispatcher<T>::begin(DispatchState<T>& st, EpPhase phase) {
  EpPlan& pl = plan_of(st, ex_.device);
  for (const auto& q : live_)  // its tag must not be in flight (a window's worth of dispatches)
    if (q->seq % kTagWindow == pl.seq % kTagWindow && q->phase == phase)
      throw std::logic_error("EpDispatcher: " + std::to_string(kTagWindow) +
                             " dispatches since one still in flight: tags would collide");
  pl.phase = phase;
  pl.active = true, pl.receiving = false, pl.complete = false;
  pl.posted_ns = now_ns();
  live_.push_back(std::static_pointer_cast<EpPlan>(st.plan));
}

// Each peer's message: the rows it gets, this rank's post time, and the (token, slot) pairs per
// expert it holds (pairs: this rank's [E] per global expert, the plan's info).
template <class T>
void EpDispatcher<T>::counts_start(EpPlan& pl, const int64_t* pairs) {
  const int P = ep_.size(), me = ep_.rank();
  const int64_t W = 2 + pl.El;
  pl.count_out.assign(W * P, 0), pl.count_in.assign(W * P, 0);
  for (int p = 0; p < P; ++p) {
    int64_t* m = &pl.count_out[W * p];
    m[0] = pl.send_counts[p], m[1] = pl.posted_ns;
    std::copy(pairs + p * pl.El, pairs + (p + 1) * pl.El, m + 2);
  }
  if (!p2p_) {  // in-order matching only: the blocking collective
    const auto t0 = std::chrono::steady_clock::now();
    counts_net_.all_to_all(pl.count_out.data(), pl.count_in.data(), static_cast<size_t>(W));
    comm_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    trace::span_since(trace::Track::Compute, "EP wait counts", trace::ns(t0));
    counts_in(pl);
    return;
  }
  std::vector<P2pOp> ops;
  const int tag = tag_of(pl.seq, kCountSlot);
  const size_t bytes = sizeof(int64_t) * W;
  for (int p = 0; p < P; ++p) {
    if (p == me) continue;
    ops.push_back(P2pOp::send(&pl.count_out[W * p], bytes, p, tag));
    ops.push_back(P2pOp::recv(&pl.count_in[W * p], bytes, p, tag));
  }
  std::copy_n(&pl.count_out[W * me], W, &pl.count_in[W * me]);
  pl.counts = counts_net_.batch_isend_irecv(ops);
}

// The peers' messages are in: rows per peer, the local peers' skew, and the pairs per local expert
// summed over the peers (the MoE layer's row groups, without reading them from the device).
template <class T>
void EpDispatcher<T>::counts_in(EpPlan& pl) {
  const int P = ep_.size(), me = ep_.rank();
  const int64_t W = 2 + pl.El;
  int64_t late = 0;
  pl.recv_counts.assign(P, 0);
  pl.rows_received = 0;
  pl.expert_off.assign(pl.El + 1, 0);
  for (int p = 0; p < P; ++p) {
    const int64_t* m = &pl.count_in[W * p];
    pl.recv_counts[p] = m[0];
    pl.rows_received += m[0];
    if (node_host_[p] == node_host_[me]) late = std::max(late, m[1] - pl.posted_ns);
    for (int64_t e = 0; e < pl.El; ++e) pl.expert_off[e + 1] += m[2 + e];
  }
  for (int64_t e = 0; e < pl.El; ++e) pl.expert_off[e + 1] += pl.expert_off[e];
  skew_seconds_ += 1e-9 * static_cast<double>(late);
  if (pl.pairs > 0)  // (every rank's N is the same: its tokens' rows are the mean here)
    rows_peak_ = std::max(
        rows_peak_, static_cast<double>(pl.expert_off[pl.El]) / static_cast<double>(pl.pairs));
}

template <class T>
void EpDispatcher<T>::exchange_start(DispatchState<T>& st, int64_t row_bytes, EpPhase phase) {
  const int P = ep_.size();
  EpPlan& pl = plan_of(st, ex_.device);
  const auto& sc = reversed(phase) ? pl.recv_counts : pl.send_counts;
  pl.row_bytes = row_bytes;
  pl.send_bytes.assign(P, 0);
  for (int p = 0; p < P; ++p) {
    pl.send_bytes[p] = static_cast<size_t>(sc[p] * row_bytes);
    bytes_sent_[static_cast<int>(phase)] += sc[p] * row_bytes;
  }
  if (p2p_) {
    std::vector<P2pOp> ops;
    size_t off = 0;
    for (int p = 0; p < P; ++p) {
      if (pl.send_bytes[p] > 0)
        ops.push_back(P2pOp::send(pl.wire.send.data() + off, pl.send_bytes[p], p,
                                  tag_of(pl.seq, row_slot(phase))));
      off += pl.send_bytes[p];
    }
    pl.sends = net_.batch_isend_irecv(ops);
    if (phase == EpPhase::Dispatch) return;  // receives: once the counts are in
  }
  post_receives(pl);
}

template <class T>
void EpDispatcher<T>::post_receives(EpPlan& pl) {
  const int P = ep_.size();
  if (p2p_ && pl.phase == EpPhase::Dispatch) counts_in(pl);  // the counts are in
  const auto& rc = reversed(pl.phase) ? pl.send_counts : pl.recv_counts;
  pl.recv_bytes.assign(P, 0);
  size_t total = 0;
  for (int p = 0; p < P; ++p)
    pl.recv_bytes[p] = static_cast<size_t>(rc[p] * pl.row_bytes), total += pl.recv_bytes[p];
  uint8_t* recv = sized(pl.wire.recv, static_cast<int64_t>(total));
  pl.receiving = true;
  if (!p2p_) {
    pl.recvs = net_.iall_to_all_v(pl.wire.send.data(), pl.send_bytes, recv, pl.recv_bytes);
    return;
  }
  std::vector<P2pOp> ops;
  size_t off = 0;
  for (int p = 0; p < P; ++p) {
    if (pl.recv_bytes[p] > 0)
      ops.push_back(
          P2pOp::recv(recv + off, pl.recv_bytes[p], p, tag_of(pl.seq, row_slot(pl.phase))));
    off += pl.recv_bytes[p];
  }
  pl.recvs = net_.batch_isend_irecv(ops);
}

template <class T>
bool EpDispatcher<T>::advance(EpPlan& pl, bool block) {
  if (pl.complete) return true;
  const auto t0 = std::chrono::steady_clock::now();
  if (!pl.receiving) {
    if (block)
      pl.counts.wait();
    else if (!pl.counts.test())
      return false;
    post_receives(pl);
  }
  const int ph = static_cast<int>(pl.phase);
  if (block) {
    pl.recvs.wait();
    pl.sends.wait();
    comm_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    trace::span_since(trace::Track::Compute, kWaitName[ph], trace::ns(t0), "seq", pl.seq);
  } else if (!pl.recvs.test() || !pl.sends.test()) {
    return false;
  }
  pl.complete = true;
  const int64_t done_ns = now_ns();
  inflight_seconds_ += 1e-9 * static_cast<double>(done_ns - pl.posted_ns);
  ++exchanges_;
  trace::span(trace::Track::Ep, kPhaseName[ph], pl.posted_ns, done_ns, "seq,bytes_sent,bytes_recv",
              pl.seq, total(pl.send_bytes), total(pl.recv_bytes));
  return true;
}

template <class T>
void EpDispatcher<T>::finish(EpPlan& pl) {
  advance(pl, /*block=*/true);
  pl.active = false;
  const auto it =
      std::find_if(live_.begin(), live_.end(), [&](const auto& q) { return q.get() == &pl; });
  if (it != live_.end()) live_.erase(it);
}

template <class T>
void EpDispatcher<T>::progress() {
  for (auto& pl : live_) advance(*pl, /*block=*/false);
  // a plan only the registry holds (its state was dropped before its wait) is done with once
  // its exchange is complete: no wait will decode it, so its wire goes back to the pool now
  std::erase_if(live_, [&](const std::shared_ptr<EpPlan>& pl) {
    if (pl.use_count() > 1 || !pl->complete) return false;
    pl->active = false;
    return_wire(*pl);
    return true;
  });
}

template <class T>
bool EpDispatcher<T>::done(const DispatchState<T>& st) const {
  const auto* pl = static_cast<const EpPlan*>(st.plan.get());
  return pl == nullptr || !pl->active || pl->complete;
}

template <class T>
const uint8_t* EpDispatcher<T>::exchange_wait(DispatchState<T>& st) {
  EpPlan& pl = plan_of(st, ex_.device);
  if (pl.active) finish(pl);
  return pl.wire.recv.data();
}

template <class T>
int64_t EpDispatcher<T>::rows_sent(const DispatchState<T>& st) {
  return st.plan ? static_cast<const EpPlan*>(st.plan.get())->rows_sent : 0;
}

// The plan: for each peer, the tokens with at least one expert there, in token order; its
// per-peer counts start their way to the host.
template <class T>
void EpDispatcher<T>::dispatch_plan(DispatchState<T>& st, const int32_t* idx, int64_t N, int64_t K,
                                    int64_t n_experts) {
  const int P = ep_.size();
  const int64_t El = n_experts / P;
  EpPlan& pl = idle(st, /*lend=*/false);  // the wire at the post: none held across a piece
  // the bad-id flag travels with the counts (the op does not wait for the stream to check it),
  // and so do the pairs per expert, which the count messages carry on to the experts' ranks
  const int64_t I = P + 2 + n_experts;
  int64_t* info = sized(pl.info, I);
  kernels::ep_dispatch_plan(ex_, idx, N, K, El, P, node_of_peer_.data(), info,
                            sized(pl.slot, N * P), sized(pl.send_token, N * P), info + P + 1);
  kernels::expert_histogram(ex_, idx, N * K, N * K, N * K, n_experts, info + P + 2,
                            /*accumulate=*/false);
  pl.info_read.wait();  // a read still in flight into info_host (a plan not started) first
  pl.info_host.resize(I);
  pl.info_read = kernels::copy_to_host_start(ex_, pl.info_host.data(), info, sizeof(int64_t) * I);
  pl.El = El;
  pl.pairs = N * K;
  pl.expert_off.clear();  // until the counts are in
  pl.planned = true;
}

template <class T>
void EpDispatcher<T>::dispatch_start(DispatchState<T>& st, const T* x, const int32_t* idx,
                                     const T* w, int64_t N, int64_t K, int64_t D,
                                     int64_t n_experts) {
  const int P = ep_.size();
  const int64_t El = n_experts / P;
  if (!plan_of(st, ex_.device).planned) dispatch_plan(st, idx, N, K, n_experts);
  EpPlan& pl = plan_of(st, ex_.device);
  pl.planned = false;
  pl.info_read.wait();  // the counts: the stream up to the plan, not the work enqueued since
  const PinnedVector<int64_t>& host = pl.info_host;
  if (host[P + 1] != 0) throw std::out_of_range("ep_dispatch_plan: expert id out of range");
  lend_wire(pl);
  st.N = N, st.K = K, st.D = D;
  const int64_t* slot = pl.slot.data();
  const int64_t* send_token = pl.send_token.data();
  pl.send_counts.assign(host.begin(), host.begin() + P);
  max_nodes_ = std::max(max_nodes_, host[P]);
  pl.rows_sent = 0;
  for (int p = 0; p < P; ++p) pl.rows_sent += pl.send_counts[p];
  pl.seq = next_seq_++;
  begin(st, EpPhase::Dispatch);
  counts_start(pl, host.data() + P + 2);
  // payload: each sent row's activations, then its routes on that peer
  const kernels::RowEncoding e = encoding(EpPhase::Dispatch);
  const int64_t A = act_bytes<T>(e, D), W = A + 2 * K * static_cast<int64_t>(sizeof(T));
  uint8_t* send = sized(pl.wire.send, pl.rows_sent * W);
  if (pl.rows_sent > 0) {
    kernels::ep_encode_rows<T>(ex_, e, x, send_token, pl.rows_sent, D, send, W);
    kernels::ep_pack_routes<T>(ex_, idx, w, slot, N, K, P, El, send + A, W);
  }
  exchange_start(st, W, EpPhase::Dispatch);
}

template <class T>
void EpDispatcher<T>::dispatch_wait(DispatchState<T>& st) {
  const uint8_t* in = exchange_wait(st);
  EpPlan& pl = plan_of(st, ex_.device);
  const int64_t D = st.D, K = st.K, R = pl.rows_received;
  const kernels::RowEncoding e = encoding(EpPhase::Dispatch);
  const int64_t A = act_bytes<T>(e, D), W = A + 2 * K * static_cast<int64_t>(sizeof(T));
  st.R = R;
  T* rx = sized(st.rx, R * D);
  int32_t* ridx = sized(st.ridx, R * K);
  T* rw = sized(st.rw, R * K);
  if (R > 0) {
    kernels::ep_decode_rows<T>(ex_, e, in, W, R, D, rx);
    kernels::ep_unpack_routes<T>(ex_, in + A, W, R, K, ridx, rw);
  }
  return_wire(pl);
}

template <class T>
const int64_t* EpDispatcher<T>::expert_offsets(const DispatchState<T>& st) const {
  const auto* pl = static_cast<const EpPlan*>(st.plan.get());
  return pl && pl->expert_off.size() == static_cast<size_t>(pl->El + 1) ? pl->expert_off.data()
                                                                        : nullptr;
}

template <class T>
void EpDispatcher<T>::combine_start(DispatchState<T>& st) {
  EpPlan& pl = idle(st);
  const kernels::RowEncoding e = encoding(EpPhase::Combine);
  const int64_t A = act_bytes<T>(e, st.D);
  uint8_t* send = sized(pl.wire.send, st.R * A);
  if (st.R > 0) kernels::ep_encode_rows<T>(ex_, e, st.ry.data(), nullptr, st.R, st.D, send, A);
  begin(st, EpPhase::Combine);
  exchange_start(st, A, EpPhase::Combine);
}

template <class T>
void EpDispatcher<T>::combine_wait(DispatchState<T>& st, T* y) {
  const uint8_t* in = exchange_wait(st);
  EpPlan& pl = plan_of(st, ex_.device);
  const kernels::RowEncoding e = encoding(EpPhase::Combine);
  if (pl.rows_sent > 0)
    kernels::ep_decode_add_rows<T>(ex_, e, in, act_bytes<T>(e, st.D), pl.slot.data(), st.N,
                                   ep_.size(), st.D, y);
  return_wire(pl);
}

template <class T>
void EpDispatcher<T>::combine_backward_start(DispatchState<T>& st, const T* dy) {
  EpPlan& pl = idle(st);
  const kernels::RowEncoding e = encoding(EpPhase::CombineBackward);
  const int64_t A = act_bytes<T>(e, st.D);
  uint8_t* send = sized(pl.wire.send, pl.rows_sent * A);
  if (pl.rows_sent > 0)
    kernels::ep_encode_rows<T>(ex_, e, dy, pl.send_token.data(), pl.rows_sent, st.D, send, A);
  begin(st, EpPhase::CombineBackward);
  exchange_start(st, A, EpPhase::CombineBackward);
}

template <class T>
void EpDispatcher<T>::combine_backward_wait(DispatchState<T>& st) {
  const uint8_t* in = exchange_wait(st);
  const kernels::RowEncoding e = encoding(EpPhase::CombineBackward);
  T* rdy = sized(st.rdy, st.R * st.D);
  if (st.R > 0) kernels::ep_decode_rows<T>(ex_, e, in, act_bytes<T>(e, st.D), st.R, st.D, rdy);
  return_wire(plan_of(st, ex_.device));
}

template <class T>
void EpDispatcher<T>::dispatch_backward_start(DispatchState<T>& st) {
  EpPlan& pl = idle(st);
  const int64_t D = st.D, K = st.K;
  const kernels::RowEncoding e = encoding(EpPhase::DispatchBackward);
  const int64_t A = act_bytes<T>(e, D), W = A + K * static_cast<int64_t>(sizeof(T));
  uint8_t* send = sized(pl.wire.send, st.R * W);
  if (st.R > 0) {
    kernels::ep_encode_rows<T>(ex_, e, st.rdx.data(), nullptr, st.R, D, send, W);
    kernels::ep_encode_rows<T>(ex_, kernels::RowEncoding::Native, st.rdw.data(), nullptr, st.R, K,
                               send + A, W);
  }
  begin(st, EpPhase::DispatchBackward);
  exchange_start(st, W, EpPhase::DispatchBackward);
}

template <class T>
void EpDispatcher<T>::dispatch_backward_wait(DispatchState<T>& st, T* dx, T* dw) {
  const uint8_t* in = exchange_wait(st);
  EpPlan& pl = plan_of(st, ex_.device);
  const int64_t D = st.D, K = st.K, P = ep_.size();
  const kernels::RowEncoding e = encoding(EpPhase::DispatchBackward);
  const int64_t A = act_bytes<T>(e, D), W = A + K * static_cast<int64_t>(sizeof(T));
  kernels::fill_zero(ex_, dw, sizeof(T) * st.N * K);
  if (pl.rows_sent > 0) {
    kernels::ep_decode_add_rows<T>(ex_, e, in, W, pl.slot.data(), st.N, P, D, dx);
    // each (token, slot) is served by exactly one rank: the others sent 0 for it
    kernels::ep_decode_add_rows<T>(ex_, kernels::RowEncoding::Native, in + A, W, pl.slot.data(),
                                   st.N, P, K, dw);
  }
  return_wire(pl);
}

template class EpDispatcher<float>;
template class EpDispatcher<double>;

}  // namespace moetron
