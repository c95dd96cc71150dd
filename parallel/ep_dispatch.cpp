// Expert-parallel dispatch/combine over all-to-all (see ep_dispatch.h).
//
// Payload rows (bytes), with A(D) one row of D activations in the phase's encoding (T, bf16, or
// D e4m3 codes followed by ceil(D/128) fp32 scales):
//   dispatch          [A(x) | K local expert ids as T | K gate weights as T]
//   combine           [A(y)]
//   combine backward  [A(dy)]
//   dispatch backward [A(dx) | K weight gradients as T]
// Ids are small integers, exact in T. Every row is encoded and decoded by encode/decode below.
#include "parallel/ep_dispatch.h"

#include <algorithm>
#include <chrono>
#include <cstring>
#include <stdexcept>
#include <type_traits>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/ops.h"
#include "kernels/scalar.h"

namespace moetron {

namespace {
struct Pending {  // one exchange in flight: the buffers must outlive it
  std::vector<uint8_t> send;
  std::vector<size_t> send_bytes, recv_bytes;
  Request req;
};
// The dispatch plan of one (layer, micro-batch), kept in DispatchState::plan (host bookkeeping:
// the EP dispatcher packs rows on the host, so it runs with CPU activations).
struct EpPlan {
  std::vector<int64_t> send_token;                // sent row -> origin token
  std::vector<int64_t> send_counts, recv_counts;  // rows per peer
  std::shared_ptr<Pending> pending;               // the exchange in flight
  std::vector<uint8_t> wire;                      // its received rows, as they travelled
};
template <class T>
EpPlan& plan_of(DispatchState<T>& st) {
  if (!st.plan) st.plan = std::make_shared<EpPlan>();
  return *static_cast<EpPlan*>(st.plan.get());
}
constexpr int64_t kScaleBlock = 128;  // channels per fp8 scale (the experts' 1x128 tiles)
}  // namespace

template <class T>
EpDispatcher<T>::EpDispatcher(Communicator& ep, std::vector<int> node_of_peer, WirePrecision wire)
    : ep_(ep), node_of_peer_(std::move(node_of_peer)), wire_(wire) {
  if (wire != WirePrecision::Native && !std::is_same_v<T, float>)
    throw std::invalid_argument("EpDispatcher: BF16 and FP8 wires carry float activations");
}

template <class T>
typename EpDispatcher<T>::Enc EpDispatcher<T>::enc(EpPhase phase) const {
  if (wire_ == WirePrecision::Native) return Enc::Native;
  if (wire_ == WirePrecision::BF16) return Enc::BF16;
  const bool dispatch = phase == EpPhase::Dispatch || phase == EpPhase::CombineBackward;
  return dispatch ? Enc::FP8 : Enc::BF16;
}

template <class T>
int64_t EpDispatcher<T>::enc_bytes(Enc e, int64_t D) const {
  switch (e) {
    case Enc::Native:
      return static_cast<int64_t>(sizeof(T)) * D;
    case Enc::BF16:
      return 2 * D;
    case Enc::FP8:
      return D + 4 * ((D + kScaleBlock - 1) / kScaleBlock);
  }
  return 0;
}

template <class T>
void EpDispatcher<T>::encode(Enc e, const T* x, int64_t D, uint8_t* out) const {
  if (e == Enc::Native) {
    std::memcpy(out, x, sizeof(T) * D);
  } else if constexpr (std::is_same_v<T, float>) {
    if (e == Enc::BF16) {
      for (int64_t i = 0; i < D; ++i) {
        const uint16_t h = f32_to_bf16(x[i]);
        std::memcpy(out + 2 * i, &h, 2);
      }
    } else {
      float scales[64];  // D <= 8192 here; larger rows take the heap
      std::vector<float> big;
      const int64_t nb = (D + kScaleBlock - 1) / kScaleBlock;
      float* s = nb <= 64 ? scales : (big.resize(nb), big.data());
      kernels::cpu::quantize(x, 1, D, kernels::Tile{1, kScaleBlock}, /*pow2=*/true, out, s);
      std::memcpy(out + D, s, sizeof(float) * nb);
    }
  }
}

template <class T>
void EpDispatcher<T>::decode(Enc e, const uint8_t* in, int64_t D, T* x) const {
  if (e == Enc::Native) {
    std::memcpy(x, in, sizeof(T) * D);
  } else if constexpr (std::is_same_v<T, float>) {
    if (e == Enc::BF16) {
      for (int64_t i = 0; i < D; ++i) {
        uint16_t h;
        std::memcpy(&h, in + 2 * i, 2);
        x[i] = bf16_to_f32(h);
      }
    } else {
      const int64_t nb = (D + kScaleBlock - 1) / kScaleBlock;
      std::vector<float> s(nb);
      std::memcpy(s.data(), in + D, sizeof(float) * nb);
      kernels::cpu::dequantize(in, s.data(), 1, D, kernels::Tile{1, kScaleBlock}, x);
    }
  }
}

template <class T>
void EpDispatcher<T>::exchange_start(DispatchState<T>& st, std::vector<uint8_t> send,
                                     int64_t row_bytes, bool reverse, EpPhase phase) {
  const int P = ep_.size();
  auto pend = std::make_shared<Pending>();
  pend->send = std::move(send);
  const auto& sc = reverse ? plan_of(st).recv_counts : plan_of(st).send_counts;
  const auto& rc = reverse ? plan_of(st).send_counts : plan_of(st).recv_counts;
  int64_t rows_in = 0;
  for (int p = 0; p < P; ++p) {
    pend->send_bytes.push_back(static_cast<size_t>(sc[p] * row_bytes));
    pend->recv_bytes.push_back(static_cast<size_t>(rc[p] * row_bytes));
    rows_in += rc[p];
    bytes_sent_[static_cast<int>(phase)] += sc[p] * row_bytes;
  }
  plan_of(st).wire.resize(static_cast<size_t>(rows_in * row_bytes));
  pend->req = ep_.iall_to_all_v(pend->send.data(), pend->send_bytes, plan_of(st).wire.data(),
                                pend->recv_bytes);
  plan_of(st).pending = pend;
}

template <class T>
const uint8_t* EpDispatcher<T>::exchange_wait(DispatchState<T>& st) {
  auto pend = plan_of(st).pending;
  const auto t0 = std::chrono::steady_clock::now();
  pend->req.wait();
  comm_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  plan_of(st).pending.reset();
  return plan_of(st).wire.data();
}

template <class T>
int64_t EpDispatcher<T>::rows_sent(const DispatchState<T>& st) {
  return st.plan
             ? static_cast<int64_t>(static_cast<const EpPlan*>(st.plan.get())->send_token.size())
             : 0;
}

template <class T>
void EpDispatcher<T>::dispatch_start(DispatchState<T>& st, const T* x, const int32_t* idx,
                                     const T* w, int64_t N, int64_t K, int64_t D,
                                     int64_t n_experts) {
  const int P = ep_.size();
  const int64_t El = n_experts / P;
  st.N = N, st.K = K, st.D = D;
  // plan: for each peer, the tokens with at least one expert there, in token order
  plan_of(st).send_counts.assign(P, 0);
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
  plan_of(st).send_token.clear();
  for (int p = 0; p < P; ++p) {
    plan_of(st).send_counts[p] = static_cast<int64_t>(to[p].size());
    plan_of(st).send_token.insert(plan_of(st).send_token.end(), to[p].begin(), to[p].end());
  }
  plan_of(st).recv_counts.assign(P, 0);
  const auto t0 = std::chrono::steady_clock::now();
  ep_.all_to_all(plan_of(st).send_counts.data(), plan_of(st).recv_counts.data(), 1);
  comm_seconds_ += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  // payload
  const Enc e = enc(EpPhase::Dispatch);
  const int64_t A = enc_bytes(e, D), W = A + 2 * K * static_cast<int64_t>(sizeof(T));
  std::vector<uint8_t> send(plan_of(st).send_token.size() * W);
  std::vector<T> meta(2 * K);
  int64_t row = 0;
  for (int p = 0; p < P; ++p)
    for (int64_t n : to[p]) {
      uint8_t* r = send.data() + row++ * W;
      encode(e, x + n * D, D, r);
      for (int64_t k = 0; k < K; ++k) {
        const int32_t ex = idx[n * K + k];
        const bool here = ex / El == p;
        meta[k] = here ? static_cast<T>(ex - p * El) : T(-1);
        meta[K + k] = here ? w[n * K + k] : T(0);
      }
      std::memcpy(r + A, meta.data(), sizeof(T) * 2 * K);
    }
  exchange_start(st, std::move(send), W, /*reverse=*/false, EpPhase::Dispatch);
}

template <class T>
void EpDispatcher<T>::dispatch_wait(DispatchState<T>& st) {
  const uint8_t* in = exchange_wait(st);
  const int64_t D = st.D, K = st.K;
  const Enc e = enc(EpPhase::Dispatch);
  const int64_t A = enc_bytes(e, D), W = A + 2 * K * static_cast<int64_t>(sizeof(T));
  int64_t R = 0;
  for (int64_t c : plan_of(st).recv_counts) R += c;
  st.R = R;
  T* rx = sized(st.rx, R * D);
  int32_t* ridx = sized(st.ridx, R * K);
  T* rw = sized(st.rw, R * K);
  std::vector<T> meta(2 * K);
  for (int64_t i = 0; i < R; ++i) {
    const uint8_t* r = in + i * W;
    decode(e, r, D, rx + i * D);
    std::memcpy(meta.data(), r + A, sizeof(T) * 2 * K);
    for (int64_t k = 0; k < K; ++k) {
      ridx[i * K + k] = static_cast<int32_t>(meta[k]);
      rw[i * K + k] = meta[K + k];
    }
  }
}

template <class T>
void EpDispatcher<T>::combine_start(DispatchState<T>& st) {
  const Enc e = enc(EpPhase::Combine);
  const int64_t A = enc_bytes(e, st.D);
  std::vector<uint8_t> send(st.R * A);
  for (int64_t i = 0; i < st.R; ++i) encode(e, st.ry.data() + i * st.D, st.D, send.data() + i * A);
  exchange_start(st, std::move(send), A, /*reverse=*/true, EpPhase::Combine);
}

template <class T>
void EpDispatcher<T>::combine_wait(DispatchState<T>& st, T* y) {
  const uint8_t* in = exchange_wait(st);
  const int64_t D = st.D;
  const Enc e = enc(EpPhase::Combine);
  const int64_t A = enc_bytes(e, D);
  std::vector<T> row(D);
  for (size_t i = 0; i < plan_of(st).send_token.size(); ++i) {
    decode(e, in + i * A, D, row.data());
    kernels::cpu::add_inplace<T>(y + plan_of(st).send_token[i] * D, row.data(), D);
  }
}

template <class T>
void EpDispatcher<T>::combine_backward_start(DispatchState<T>& st, const T* dy) {
  const int64_t D = st.D;
  const Enc e = enc(EpPhase::CombineBackward);
  const int64_t A = enc_bytes(e, D);
  std::vector<uint8_t> send(plan_of(st).send_token.size() * A);
  for (size_t i = 0; i < plan_of(st).send_token.size(); ++i)
    encode(e, dy + plan_of(st).send_token[i] * D, D, send.data() + i * A);
  exchange_start(st, std::move(send), A, /*reverse=*/false, EpPhase::CombineBackward);
}

template <class T>
void EpDispatcher<T>::combine_backward_wait(DispatchState<T>& st) {
  const uint8_t* in = exchange_wait(st);
  const Enc e = enc(EpPhase::CombineBackward);
  const int64_t A = enc_bytes(e, st.D);
  T* rdy = sized(st.rdy, st.R * st.D);
  for (int64_t i = 0; i < st.R; ++i) decode(e, in + i * A, st.D, rdy + i * st.D);
}

template <class T>
void EpDispatcher<T>::dispatch_backward_start(DispatchState<T>& st) {
  const int64_t D = st.D, K = st.K;
  const Enc e = enc(EpPhase::DispatchBackward);
  const int64_t A = enc_bytes(e, D), W = A + K * static_cast<int64_t>(sizeof(T));
  std::vector<uint8_t> send(st.R * W);
  for (int64_t i = 0; i < st.R; ++i) {
    encode(e, st.rdx.data() + i * D, D, send.data() + i * W);
    std::memcpy(send.data() + i * W + A, st.rdw.data() + i * K, sizeof(T) * K);
  }
  exchange_start(st, std::move(send), W, /*reverse=*/true, EpPhase::DispatchBackward);
}

template <class T>
void EpDispatcher<T>::dispatch_backward_wait(DispatchState<T>& st, T* dx, T* dw) {
  const uint8_t* in = exchange_wait(st);
  const int64_t D = st.D, K = st.K;
  const Enc e = enc(EpPhase::DispatchBackward);
  const int64_t A = enc_bytes(e, D), W = A + K * static_cast<int64_t>(sizeof(T));
  std::fill(dw, dw + st.N * K, T(0));
  std::vector<T> row(D), dwr(K);
  for (size_t i = 0; i < plan_of(st).send_token.size(); ++i) {
    const uint8_t* r = in + i * W;
    const int64_t n = plan_of(st).send_token[i];
    decode(e, r, D, row.data());
    kernels::cpu::add_inplace<T>(dx + n * D, row.data(), D);
    // each (token, slot) is served by exactly one rank: the others sent 0 for it
    std::memcpy(dwr.data(), r + A, sizeof(T) * K);
    for (int64_t k = 0; k < K; ++k) dw[n * K + k] += dwr[k];
  }
}

template class EpDispatcher<float>;
template class EpDispatcher<double>;

}  // namespace moetron
