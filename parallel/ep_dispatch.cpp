// Expert-parallel dispatch/combine over all-to-all (see ep_dispatch.h).
//
// Payload rows (type T): dispatch [x (D) | local id (K) | weight (K)] — ids are small integers,
// exact in float; combine [y (D)]; combine backward [dy (D)]; dispatch backward [dx (D) | dw (K)].
#include "parallel/ep_dispatch.h"

#include <algorithm>
#include <chrono>
#include <cstring>

#include "kernels/ops.h"

namespace moetron {

namespace {
template <class T>
struct Pending {  // one exchange in flight: the buffers must outlive it
  std::vector<T> send;
  std::vector<size_t> send_bytes, recv_bytes;
  Request req;
};
}  // namespace

template <class T>
void EpDispatcher<T>::exchange_start(DispatchState<T>& st, std::vector<T> send, int64_t width,
                                     bool reverse) {
  const int P = ep_.size();
  auto pend = std::make_shared<Pending<T>>();
  pend->send = std::move(send);
  const auto& sc = reverse ? st.recv_counts : st.send_counts;
  const auto& rc = reverse ? st.send_counts : st.recv_counts;
  int64_t rows_in = 0;
  for (int p = 0; p < P; ++p) {
    pend->send_bytes.push_back(sizeof(T) * sc[p] * width);
    pend->recv_bytes.push_back(sizeof(T) * rc[p] * width);
    rows_in += rc[p];
    bytes_sent_ += static_cast<int64_t>(sizeof(T) * sc[p] * width);
  }
  sized(st.scratch, rows_in * width);
  pend->req =
      ep_.iall_to_all_v(pend->send.data(), pend->send_bytes, st.scratch.data(), pend->recv_bytes);
  st.pending = pend;
}

template <class T>
void EpDispatcher<T>::exchange_wait(DispatchState<T>& st) {
  auto pend = std::static_pointer_cast<Pending<T>>(st.pending);
  const auto t0 = std::chrono::steady_clock::now();
  pend->req.wait();
  comm_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  st.pending.reset();
}

template <class T>
void EpDispatcher<T>::dispatch_start(DispatchState<T>& st, const T* x, const int32_t* idx,
                                     const T* w, int64_t N, int64_t K, int64_t D,
                                     int64_t n_experts) {
  const int P = ep_.size();
  const int64_t El = n_experts / P, W = D + 2 * K;
  st.N = N, st.K = K, st.D = D;
  // plan: for each peer, the tokens with at least one expert there, in token order
  st.send_counts.assign(P, 0);
  std::vector<std::vector<int64_t>> to(P);
  std::vector<int64_t> last(P, -1);  // last token queued for each peer
  std::vector<int64_t> node_seen(P, -1);
  for (int64_t n = 0; n < N; ++n) {
    int64_t nodes = 0;
    for (int64_t k = 0; k < K; ++k) {
      const int p = idx[n * K + k] / static_cast<int32_t>(El);
      if (last[p] != n) last[p] = n, to[p].push_back(n);
      const int node = node_of_peer_[p];
      if (node_seen[node] != n) node_seen[node] = n, ++nodes;
    }
    max_nodes_ = std::max(max_nodes_, nodes);
  }
  st.send_token.clear();
  for (int p = 0; p < P; ++p) {
    st.send_counts[p] = static_cast<int64_t>(to[p].size());
    st.send_token.insert(st.send_token.end(), to[p].begin(), to[p].end());
  }
  st.recv_counts.assign(P, 0);
  const auto t0 = std::chrono::steady_clock::now();
  ep_.all_to_all(st.send_counts.data(), st.recv_counts.data(), 1);
  comm_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // payload
  std::vector<T> send(st.send_token.size() * W);
  int64_t row = 0;
  for (int p = 0; p < P; ++p)
    for (int64_t n : to[p]) {
      T* r = send.data() + row++ * W;
      std::memcpy(r, x + n * D, sizeof(T) * D);
      for (int64_t k = 0; k < K; ++k) {
        const int32_t e = idx[n * K + k];
        const bool here = e / El == p;
        r[D + k] = here ? static_cast<T>(e - p * El) : T(-1);
        r[D + K + k] = here ? w[n * K + k] : T(0);
      }
    }
  exchange_start(st, std::move(send), W, /*reverse=*/false);
}

template <class T>
void EpDispatcher<T>::dispatch_wait(DispatchState<T>& st) {
  exchange_wait(st);
  const int64_t D = st.D, K = st.K, W = D + 2 * K;
  int64_t R = 0;
  for (int64_t c : st.recv_counts) R += c;
  st.R = R;
  T* rx = sized(st.rx, R * D);
  st.ridx.resize(R * K);
  T* rw = sized(st.rw, R * K);
  for (int64_t i = 0; i < R; ++i) {
    const T* r = st.scratch.data() + i * W;
    std::memcpy(rx + i * D, r, sizeof(T) * D);
    for (int64_t k = 0; k < K; ++k) {
      st.ridx[i * K + k] = static_cast<int32_t>(r[D + k]);
      rw[i * K + k] = r[D + K + k];
    }
  }
}

template <class T>
void EpDispatcher<T>::combine_start(DispatchState<T>& st) {
  exchange_start(st, std::vector<T>(st.ry.begin(), st.ry.begin() + st.R * st.D), st.D,
                 /*reverse=*/true);
}

template <class T>
void EpDispatcher<T>::combine_wait(DispatchState<T>& st, T* y) {
  exchange_wait(st);
  const int64_t D = st.D;
  for (size_t i = 0; i < st.send_token.size(); ++i)
    kernels::add_inplace<T>(y + st.send_token[i] * D, st.scratch.data() + i * D, D);
}

template <class T>
void EpDispatcher<T>::combine_backward_start(DispatchState<T>& st, const T* dy) {
  const int64_t D = st.D;
  std::vector<T> send(st.send_token.size() * D);
  for (size_t i = 0; i < st.send_token.size(); ++i)
    std::memcpy(send.data() + i * D, dy + st.send_token[i] * D, sizeof(T) * D);
  exchange_start(st, std::move(send), D, /*reverse=*/false);
}

template <class T>
void EpDispatcher<T>::combine_backward_wait(DispatchState<T>& st) {
  exchange_wait(st);
  std::copy(st.scratch.begin(), st.scratch.begin() + st.R * st.D, sized(st.rdy, st.R * st.D));
}

template <class T>
void EpDispatcher<T>::dispatch_backward_start(DispatchState<T>& st) {
  const int64_t D = st.D, K = st.K, W = D + K;
  std::vector<T> send(st.R * W);
  for (int64_t i = 0; i < st.R; ++i) {
    std::memcpy(send.data() + i * W, st.rdx.data() + i * D, sizeof(T) * D);
    std::memcpy(send.data() + i * W + D, st.rdw.data() + i * K, sizeof(T) * K);
  }
  exchange_start(st, std::move(send), W, /*reverse=*/true);
}

template <class T>
void EpDispatcher<T>::dispatch_backward_wait(DispatchState<T>& st, T* dx, T* dw) {
  exchange_wait(st);
  const int64_t D = st.D, K = st.K, W = D + K;
  std::fill(dw, dw + st.N * K, T(0));
  for (size_t i = 0; i < st.send_token.size(); ++i) {
    const T* r = st.scratch.data() + i * W;
    const int64_t n = st.send_token[i];
    kernels::add_inplace<T>(dx + n * D, r, D);
    // each (token, slot) is served by exactly one rank: the others sent 0 for it
    for (int64_t k = 0; k < K; ++k) dw[n * K + k] += r[D + k];
  }
}

template class EpDispatcher<float>;
template class EpDispatcher<double>;

}  // namespace moetron
