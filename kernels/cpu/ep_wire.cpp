// The expert-parallel wire on the CPU: the dispatch plan (which rows go to which peer), and the
// packing of token rows into all-to-all payloads and back (parallel/ep_dispatch.h for the
// protocol, kernels/cpu/ops_cpu.h for each op's contract).
//
// A wire row is `stride` bytes; its activations are encoded as T (Native), bf16 (round to
// nearest even), or D E4M3 codes followed by ceil(D/128) power-of-two fp32 scales (the same
// quantiser as the experts' 1x128 tiles, kernels/cpu/fp8.cpp, so an FP8 expert GEMM re-quantises
// a received row to the same codes). Rows are unaligned in general (D odd, K values after the
// activations), so every value is moved with memcpy. The plan is one sequential pass over idx
// (O(N K), like route_by_expert); encoding and decoding are parallel over rows, and the
// scatter-add over origin tokens, each token adding its peers' rows in peer order
// (deterministic, and the same sums as one pass over the rows in send order).
#include <algorithm>
#include <cstring>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"

namespace moetron::kernels::cpu {

namespace {

constexpr int64_t kParallelRows = 1 << 15;  // values below which a pass stays on one thread

template <class T>
void check_encoding(RowEncoding e, const char* op) {
  if (e != RowEncoding::Native && !std::is_same_v<T, float>)
    throw std::invalid_argument(std::string(op) + ": BF16 and FP8 rows carry float values");
}

// One row x [D] -> out (row_encoding_bytes(e, D, sizeof(T)) bytes).
template <class T>
void encode_row(RowEncoding e, const T* x, int64_t D, uint8_t* out) {
  if (e == RowEncoding::Native) {
    std::memcpy(out, x, sizeof(T) * D);
  } else if constexpr (std::is_same_v<T, float>) {
    if (e == RowEncoding::BF16) {
      for (int64_t i = 0; i < D; ++i) {
        const uint16_t h = f32_to_bf16(x[i]);
        std::memcpy(out + 2 * i, &h, 2);
      }
    } else {
      const int64_t nb = (D + kWireScaleBlock - 1) / kWireScaleBlock;
      thread_local std::vector<float> s;
      s.resize(static_cast<size_t>(nb));
      quantize(x, 1, D, Tile{1, kWireScaleBlock}, /*pow2=*/true, out, s.data());
      std::memcpy(out + D, s.data(), sizeof(float) * nb);
    }
  }
}

// in -> one row x [D] (write)
template <class T>
void decode_row(RowEncoding e, const uint8_t* in, int64_t D, T* x) {
  if (e == RowEncoding::Native) {
    std::memcpy(x, in, sizeof(T) * D);
  } else if constexpr (std::is_same_v<T, float>) {
    if (e == RowEncoding::BF16) {
      for (int64_t i = 0; i < D; ++i) {
        uint16_t h;
        std::memcpy(&h, in + 2 * i, 2);
        x[i] = bf16_to_f32(h);
      }
    } else {
      const int64_t nb = (D + kWireScaleBlock - 1) / kWireScaleBlock;
      thread_local std::vector<float> s;
      s.resize(static_cast<size_t>(nb));
      std::memcpy(s.data(), in + D, sizeof(float) * nb);
      dequantize(in, s.data(), 1, D, Tile{1, kWireScaleBlock}, x);
    }
  }
}

}  // namespace

void ep_dispatch_plan(const int32_t* idx, int64_t N, int64_t K, int64_t El, int64_t P,
                      const int32_t* node_of_peer, int64_t* counts, int64_t* slot,
                      int64_t* send_token, int64_t* bad) {
  if (N < 0 || K < 0 || El <= 0 || P <= 0) throw std::invalid_argument("ep_dispatch_plan: sizes");
  const int64_t E = El * P;
  if (bad) *bad = 0;
  std::fill(counts, counts + P + 1, int64_t{0});
  std::fill(slot, slot + N * P, int64_t{-1});
  // pass 1: which peers each token goes to (slot = 0 marks them), rows per peer, nodes per token
  thread_local std::vector<int64_t> peers;  // the distinct peers of one token
  for (int64_t n = 0; n < N; ++n) {
    peers.clear();
    for (int64_t k = 0; k < K; ++k) {
      const int32_t ex = idx[n * K + k];
      if (ex < 0 || ex >= E) {
        if (!bad) throw std::out_of_range("ep_dispatch_plan: expert id out of range");
        ++*bad;
        continue;
      }
      const int64_t p = ex / El;
      if (slot[n * P + p] < 0) slot[n * P + p] = 0, ++counts[p], peers.push_back(p);
    }
    int64_t nodes = 0;
    for (size_t i = 0; i < peers.size(); ++i) {
      bool seen = false;
      for (size_t j = 0; j < i && !seen; ++j)
        seen = node_of_peer[peers[j]] == node_of_peer[peers[i]];
      nodes += !seen;
    }
    counts[P] = std::max(counts[P], nodes);
  }
  // pass 2: rows grouped by peer, tokens in order inside a peer
  thread_local std::vector<int64_t> next;
  next.assign(static_cast<size_t>(P), 0);
  for (int64_t p = 1; p < P; ++p) next[p] = next[p - 1] + counts[p - 1];
  for (int64_t p = 0; p < P; ++p)
    for (int64_t n = 0; n < N; ++n)
      if (slot[n * P + p] >= 0) {
        const int64_t row = next[p]++;
        slot[n * P + p] = row;
        send_token[row] = n;
      }
}

template <class T>
void ep_encode_rows(RowEncoding e, const T* src, const int64_t* rows, int64_t n, int64_t D,
                    uint8_t* wire, int64_t stride) {
  check_encoding<T>(e, "ep_encode_rows");
#pragma omp parallel for schedule(static) if (n * D >= kParallelRows)
  for (int64_t i = 0; i < n; ++i)
    encode_row(e, src + (rows ? rows[i] : i) * D, D, wire + i * stride);
}

template <class T>
void ep_decode_rows(RowEncoding e, const uint8_t* wire, int64_t stride, int64_t n, int64_t D,
                    T* dst) {
  check_encoding<T>(e, "ep_decode_rows");
#pragma omp parallel for schedule(static) if (n * D >= kParallelRows)
  for (int64_t i = 0; i < n; ++i) decode_row(e, wire + i * stride, D, dst + i * D);
}

template <class T>
void ep_decode_add_rows(RowEncoding e, const uint8_t* wire, int64_t stride, const int64_t* slot,
                        int64_t N, int64_t P, int64_t D, T* out) {
  check_encoding<T>(e, "ep_decode_add_rows");
#pragma omp parallel for schedule(static) if (N * D >= kParallelRows)
  for (int64_t t = 0; t < N; ++t) {
    thread_local std::vector<T> row;
    row.resize(static_cast<size_t>(D));
    T* o = out + t * D;
    for (int64_t p = 0; p < P; ++p) {
      const int64_t r = slot[t * P + p];
      if (r < 0) continue;
      decode_row(e, wire + r * stride, D, row.data());
      for (int64_t d = 0; d < D; ++d) o[d] += row[d];
    }
  }
}

template <class T>
void ep_pack_routes(const int32_t* idx, const T* w, const int64_t* slot, int64_t N, int64_t K,
                    int64_t P, int64_t El, uint8_t* wire, int64_t stride) {
#pragma omp parallel for schedule(static) if (N * P * K >= kParallelRows)
  for (int64_t t = 0; t < N; ++t)
    for (int64_t p = 0; p < P; ++p) {
      const int64_t r = slot[t * P + p];
      if (r < 0) continue;
      uint8_t* out = wire + r * stride;
      for (int64_t k = 0; k < K; ++k) {
        const int32_t ex = idx[t * K + k];
        const bool here = ex / El == p;
        const T id = here ? static_cast<T>(ex - p * El) : T(-1), wt = here ? w[t * K + k] : T(0);
        std::memcpy(out + sizeof(T) * k, &id, sizeof(T));
        std::memcpy(out + sizeof(T) * (K + k), &wt, sizeof(T));
      }
    }
}

template <class T>
void ep_unpack_routes(const uint8_t* wire, int64_t stride, int64_t R, int64_t K, int32_t* ridx,
                      T* rw) {
#pragma omp parallel for schedule(static) if (R * K >= kParallelRows)
  for (int64_t i = 0; i < R; ++i)
    for (int64_t k = 0; k < K; ++k) {
      T id, wt;
      std::memcpy(&id, wire + i * stride + sizeof(T) * k, sizeof(T));
      std::memcpy(&wt, wire + i * stride + sizeof(T) * (K + k), sizeof(T));
      ridx[i * K + k] = static_cast<int32_t>(id);
      rw[i * K + k] = wt;
    }
}

#define MOETRON_EP_WIRE_INSTANTIATE(T)                                                         \
  template void ep_encode_rows<T>(RowEncoding, const T*, const int64_t*, int64_t, int64_t,     \
                                  uint8_t*, int64_t);                                          \
  template void ep_decode_rows<T>(RowEncoding, const uint8_t*, int64_t, int64_t, int64_t, T*); \
  template void ep_decode_add_rows<T>(RowEncoding, const uint8_t*, int64_t, const int64_t*,    \
                                      int64_t, int64_t, int64_t, T*);                          \
  template void ep_pack_routes<T>(const int32_t*, const T*, const int64_t*, int64_t, int64_t,  \
                                  int64_t, int64_t, uint8_t*, int64_t);                        \
  template void ep_unpack_routes<T>(const uint8_t*, int64_t, int64_t, int64_t, int32_t*, T*);
MOETRON_EP_WIRE_INSTANTIATE(float)
MOETRON_EP_WIRE_INSTANTIATE(double)
#undef MOETRON_EP_WIRE_INSTANTIATE

}  // namespace moetron::kernels::cpu
