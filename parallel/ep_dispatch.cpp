// Expert-parallel dispatch/combine over all-to-all (see ep_dispatch.h).
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
// device; the host keeps only the counts per peer that size the all-to-all.
#include "parallel/ep_dispatch.h"

#include <algorithm>
#include <chrono>
#include <stdexcept>
#include <type_traits>

#include "kernels/ops.h"

namespace moetron {

namespace {
// The dispatch plan of one (layer, micro-batch), kept in DispatchState::plan, and its exchange
// in flight. Device buffers on the activation device; counts on the host.
struct EpPlan {
  explicit EpPlan(Device d) : info(d), slot(d), send_token(d), send(d), recv(d) {}
  Buffer<int64_t> info;                           // [P+1] rows per peer, max nodes per token
  Buffer<int64_t> slot;                           // [N,P] row of token n to peer p, or -1
  Buffer<int64_t> send_token;                     // [N*P] sent row -> origin token
  std::vector<int64_t> send_counts, recv_counts;  // rows per peer (host)
  int64_t rows_sent = 0, rows_received = 0;
  Buffer<uint8_t> send, recv;  // the wire: rows as they travel (grow-only, reused by each phase)
  std::vector<size_t> send_bytes, recv_bytes;
  Request pending;  // last: destroyed (waited for) before the buffers it uses
};
template <class T>
EpPlan& plan_of(DispatchState<T>& st, Device d) {
  if (!st.plan) st.plan = std::make_shared<EpPlan>(d);
  return *static_cast<EpPlan*>(st.plan.get());
}
}  // namespace

template <class T>
EpDispatcher<T>::EpDispatcher(const Exec& ex, Communicator& ep, std::vector<int> node_of_peer,
                              WirePrecision wire)
    : ex_(ex), ep_(ep), node_of_peer_(ex.device), wire_(wire) {
  if (wire != WirePrecision::Native && !std::is_same_v<T, float>)
    throw std::invalid_argument("EpDispatcher: BF16 and FP8 wires carry float activations");
  if (static_cast<int>(node_of_peer.size()) != ep.size())
    throw std::invalid_argument("EpDispatcher: node_of_peer needs one node per EP rank");
  const std::vector<int32_t> nodes(node_of_peer.begin(), node_of_peer.end());
  node_of_peer_.resize(nodes.size());
  if (ex_.device != Device::Meta)
    kernels::copy_from_host(ex_, node_of_peer_.data(), nodes.data(),
                            sizeof(int32_t) * nodes.size());
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
int64_t EpDispatcher<T>::state_bytes(WirePrecision wire, int64_t N, int64_t D, int64_t K, int64_t P,
                                     double dest) {
  const int64_t t = static_cast<int64_t>(sizeof(T));
  // row bytes of each phase, as the *_start functions below pack them
  const int64_t width =
      std::max({act_bytes<T>(encoding(wire, EpPhase::Dispatch), D) + 2 * K * t,
                act_bytes<T>(encoding(wire, EpPhase::Combine), D),
                act_bytes<T>(encoding(wire, EpPhase::CombineBackward), D),
                act_bytes<T>(encoding(wire, EpPhase::DispatchBackward), D) + K * t});
  const double plan = 8.0 * (2 * N * P + P + 1);  // slot, send_token, info
  return static_cast<int64_t>(plan + 2 * static_cast<double>(N) * dest * width);
}

template <class T>
void EpDispatcher<T>::exchange_start(DispatchState<T>& st, int64_t row_bytes, bool reverse,
                                     EpPhase phase) {
  const int P = ep_.size();
  EpPlan& pl = plan_of(st, ex_.device);
  const auto& sc = reverse ? pl.recv_counts : pl.send_counts;
  const auto& rc = reverse ? pl.send_counts : pl.recv_counts;
  pl.send_bytes.assign(P, 0), pl.recv_bytes.assign(P, 0);
  int64_t rows_in = 0;
  for (int p = 0; p < P; ++p) {
    pl.send_bytes[p] = static_cast<size_t>(sc[p] * row_bytes);
    pl.recv_bytes[p] = static_cast<size_t>(rc[p] * row_bytes);
    rows_in += rc[p];
    bytes_sent_[static_cast<int>(phase)] += sc[p] * row_bytes;
  }
  sized(pl.recv, rows_in * row_bytes);
  pl.pending = ep_.iall_to_all_v(pl.send.data(), pl.send_bytes, pl.recv.data(), pl.recv_bytes);
}

template <class T>
const uint8_t* EpDispatcher<T>::exchange_wait(DispatchState<T>& st) {
  EpPlan& pl = plan_of(st, ex_.device);
  const auto t0 = std::chrono::steady_clock::now();
  pl.pending.wait();
  comm_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return pl.recv.data();
}

template <class T>
int64_t EpDispatcher<T>::rows_sent(const DispatchState<T>& st) {
  return st.plan ? static_cast<const EpPlan*>(st.plan.get())->rows_sent : 0;
}

template <class T>
void EpDispatcher<T>::dispatch_start(DispatchState<T>& st, const T* x, const int32_t* idx,
                                     const T* w, int64_t N, int64_t K, int64_t D,
                                     int64_t n_experts) {
  const int P = ep_.size();
  const int64_t El = n_experts / P;
  st.N = N, st.K = K, st.D = D;
  EpPlan& pl = plan_of(st, ex_.device);
  // plan: for each peer, the tokens with at least one expert there, in token order
  int64_t* info = sized(pl.info, P + 1);
  int64_t* slot = sized(pl.slot, N * P);
  int64_t* send_token = sized(pl.send_token, N * P);
  kernels::ep_dispatch_plan(ex_, idx, N, K, El, P, node_of_peer_.data(), info, slot, send_token);
  std::vector<int64_t> host(P + 1);
  kernels::copy_to_host(ex_, host.data(), info, sizeof(int64_t) * (P + 1));
  pl.send_counts.assign(host.begin(), host.begin() + P);
  max_nodes_ = std::max(max_nodes_, host[P]);
  pl.rows_sent = 0;
  for (int p = 0; p < P; ++p) pl.rows_sent += pl.send_counts[p];
  pl.recv_counts.assign(P, 0);
  const auto t0 = std::chrono::steady_clock::now();
  ep_.all_to_all(pl.send_counts.data(), pl.recv_counts.data(), 1);
  comm_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  pl.rows_received = 0;
  for (int p = 0; p < P; ++p) pl.rows_received += pl.recv_counts[p];
  // payload: each sent row's activations, then its routes on that peer
  const kernels::RowEncoding e = encoding(EpPhase::Dispatch);
  const int64_t A = act_bytes<T>(e, D), W = A + 2 * K * static_cast<int64_t>(sizeof(T));
  uint8_t* send = sized(pl.send, pl.rows_sent * W);
  if (pl.rows_sent > 0) {
    kernels::ep_encode_rows<T>(ex_, e, x, send_token, pl.rows_sent, D, send, W);
    kernels::ep_pack_routes<T>(ex_, idx, w, slot, N, K, P, El, send + A, W);
  }
  exchange_start(st, W, /*reverse=*/false, EpPhase::Dispatch);
}

template <class T>
void EpDispatcher<T>::dispatch_wait(DispatchState<T>& st) {
  const uint8_t* in = exchange_wait(st);
  const EpPlan& pl = plan_of(st, ex_.device);
  const int64_t D = st.D, K = st.K, R = pl.rows_received;
  const kernels::RowEncoding e = encoding(EpPhase::Dispatch);
  const int64_t A = act_bytes<T>(e, D), W = A + 2 * K * static_cast<int64_t>(sizeof(T));
  st.R = R;
  T* rx = sized(st.rx, R * D);
  int32_t* ridx = sized(st.ridx, R * K);
  T* rw = sized(st.rw, R * K);
  if (R == 0) return;
  kernels::ep_decode_rows<T>(ex_, e, in, W, R, D, rx);
  kernels::ep_unpack_routes<T>(ex_, in + A, W, R, K, ridx, rw);
}

template <class T>
void EpDispatcher<T>::combine_start(DispatchState<T>& st) {
  EpPlan& pl = plan_of(st, ex_.device);
  const kernels::RowEncoding e = encoding(EpPhase::Combine);
  const int64_t A = act_bytes<T>(e, st.D);
  uint8_t* send = sized(pl.send, st.R * A);
  if (st.R > 0) kernels::ep_encode_rows<T>(ex_, e, st.ry.data(), nullptr, st.R, st.D, send, A);
  exchange_start(st, A, /*reverse=*/true, EpPhase::Combine);
}

template <class T>
void EpDispatcher<T>::combine_wait(DispatchState<T>& st, T* y) {
  const uint8_t* in = exchange_wait(st);
  const EpPlan& pl = plan_of(st, ex_.device);
  const kernels::RowEncoding e = encoding(EpPhase::Combine);
  if (pl.rows_sent > 0)
    kernels::ep_decode_add_rows<T>(ex_, e, in, act_bytes<T>(e, st.D), pl.slot.data(), st.N,
                                   ep_.size(), st.D, y);
}

template <class T>
void EpDispatcher<T>::combine_backward_start(DispatchState<T>& st, const T* dy) {
  EpPlan& pl = plan_of(st, ex_.device);
  const kernels::RowEncoding e = encoding(EpPhase::CombineBackward);
  const int64_t A = act_bytes<T>(e, st.D);
  uint8_t* send = sized(pl.send, pl.rows_sent * A);
  if (pl.rows_sent > 0)
    kernels::ep_encode_rows<T>(ex_, e, dy, pl.send_token.data(), pl.rows_sent, st.D, send, A);
  exchange_start(st, A, /*reverse=*/false, EpPhase::CombineBackward);
}

template <class T>
void EpDispatcher<T>::combine_backward_wait(DispatchState<T>& st) {
  const uint8_t* in = exchange_wait(st);
  const kernels::RowEncoding e = encoding(EpPhase::CombineBackward);
  T* rdy = sized(st.rdy, st.R * st.D);
  if (st.R > 0) kernels::ep_decode_rows<T>(ex_, e, in, act_bytes<T>(e, st.D), st.R, st.D, rdy);
}

template <class T>
void EpDispatcher<T>::dispatch_backward_start(DispatchState<T>& st) {
  EpPlan& pl = plan_of(st, ex_.device);
  const int64_t D = st.D, K = st.K;
  const kernels::RowEncoding e = encoding(EpPhase::DispatchBackward);
  const int64_t A = act_bytes<T>(e, D), W = A + K * static_cast<int64_t>(sizeof(T));
  uint8_t* send = sized(pl.send, st.R * W);
  if (st.R > 0) {
    kernels::ep_encode_rows<T>(ex_, e, st.rdx.data(), nullptr, st.R, D, send, W);
    kernels::ep_encode_rows<T>(ex_, kernels::RowEncoding::Native, st.rdw.data(), nullptr, st.R, K,
                               send + A, W);
  }
  exchange_start(st, W, /*reverse=*/true, EpPhase::DispatchBackward);
}

template <class T>
void EpDispatcher<T>::dispatch_backward_wait(DispatchState<T>& st, T* dx, T* dw) {
  const uint8_t* in = exchange_wait(st);
  const EpPlan& pl = plan_of(st, ex_.device);
  const int64_t D = st.D, K = st.K, P = ep_.size();
  const kernels::RowEncoding e = encoding(EpPhase::DispatchBackward);
  const int64_t A = act_bytes<T>(e, D), W = A + K * static_cast<int64_t>(sizeof(T));
  kernels::fill_zero(ex_, dw, sizeof(T) * st.N * K);
  if (pl.rows_sent == 0) return;
  kernels::ep_decode_add_rows<T>(ex_, e, in, W, pl.slot.data(), st.N, P, D, dx);
  // each (token, slot) is served by exactly one rank: the others sent 0 for it
  kernels::ep_decode_add_rows<T>(ex_, kernels::RowEncoding::Native, in + A, W, pl.slot.data(), st.N,
                                 P, K, dw);
}

template class EpDispatcher<float>;
template class EpDispatcher<double>;

}  // namespace moetron
