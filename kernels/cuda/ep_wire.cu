// The expert-parallel wire on the GPU (kernels/cpu/ep_wire.cpp is the reference; ops_cpu.h says
// each op's contract): the dispatch plan (which rows go to which peer), and the packing of token
// rows into all-to-all payloads and back, byte for byte the CPU's.
//
// Wire rows are `stride` bytes apart with no alignment guarantee (D odd, routes after the
// activations), so every value is moved through load_bytes / store_bytes (byte accesses).
// Encodings: Native (D values of T), BF16 (scalar.h's round to nearest even), FP8 (D E4M3 codes,
// then ceil(D/128) power-of-two fp32 scales: the CPU quantiser's 1x128 rule — amax over the tile
// with NaN skipped, s = pow2_ceil(max(amax, 1e-4) / 448), code = e4m3(x * (1/s)) — with
// scalar.h's conversions; one warp per (row, tile), the amax a warp max, which is exact).
// Products that feed an addition use __fmul_rn so nvcc cannot fuse them (the CPU rounds them).
// nan_keeping: a GPU product with a NaN operand is the canonical (positive) NaN, where the CPU's
// keeps the operand's sign; so NaN operands bypass the scaling products, and a -NaN input encodes
// to the CPU's 0xFF code (and decodes to the CPU's -NaN). Sums (decode-add) are not patched: a NaN
// sum's sign may differ from the CPU's.
//
// ep_dispatch_plan, from idx [N, K]: counts [P+1], slot [N, P], send_token; rows grouped by peer,
// token order inside a peer. Deterministic, no order-dependent atomics:
//   1. one thread per token: slot[n, :] = -1, then 0 marks each peer holding one of its experts;
//      the distinct nodes of the token (O(K^2)) into counts[P] by an integer atomicMax; a bad
//      expert id is skipped and counted in a device flag;
//   2. one thread per (chunk of kPlanChunk tokens, peer): marks counted -> cnt [C, P];
//   3. one block: per peer the exclusive scan of cnt over chunks, counts[p], plus the rows of the
//      peers before it;
//   4. one thread per (chunk, peer): its marked tokens in order get consecutive rows.
// Work O(N (P + K^2) + C P^2). The flag is the caller's `bad` when given (it reads it with the
// counts: the EP dispatcher, without waiting here); otherwise it comes back to the host at the
// end (a stream synchronisation) so that a bad expert id throws std::out_of_range like the CPU.
// The other ops: one thread per output element (decode, decode-add in p order: the CPU's
// additions in its order), per (token, peer) (pack) or per (row, k) (unpack).
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/op_instantiate.h"
#include "kernels/scalar.h"

namespace moetron::kernels::gpu {

namespace {

constexpr int64_t kPlanChunk = 256;  // tokens per chunk of the plan's placement

template <class T>
void check_encoding(RowEncoding e, const char* op) {
  if (e != RowEncoding::Native && !std::is_same_v<T, float>)
    throw std::invalid_argument(std::string(op) + ": BF16 and FP8 rows carry float values");
}

template <class V>
__device__ __forceinline__ V load_bytes(const uint8_t* p) {
  uint8_t b[sizeof(V)];
  for (size_t i = 0; i < sizeof(V); ++i) b[i] = p[i];
  V v;
  memcpy(&v, b, sizeof(V));
  return v;
}
template <class V>
__device__ __forceinline__ void store_bytes(uint8_t* p, V v) {
  uint8_t b[sizeof(V)];
  memcpy(b, &v, sizeof(V));
  for (size_t i = 0; i < sizeof(V); ++i) p[i] = b[i];
}

// ---- dispatch plan ---------------------------------------------------------------------------

// 1. per token: peer marks, distinct nodes, bad ids
__global__ void plan_mark_kernel(const int32_t* idx, int64_t N, int64_t K, int64_t El, int64_t P,
                                 const int32_t* node_of_peer, int64_t* counts, int64_t* slot,
                                 unsigned long long* err) {
  const int64_t E = El * P;
  for (int64_t n = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; n < N;
       n += int64_t(gridDim.x) * blockDim.x) {
    for (int64_t p = 0; p < P; ++p) slot[n * P + p] = -1;
    const int32_t* id = idx + n * K;
    unsigned long long nodes = 0;
    for (int64_t k = 0; k < K; ++k) {
      const int32_t ex = id[k];
      if (ex < 0 || ex >= E) {
        atomicAdd(err, 1ull);
        continue;
      }
      const int64_t p = ex / El;
      slot[n * P + p] = 0;
      bool seen = false;  // a node already counted by an earlier valid expert of the token
      for (int64_t j = 0; j < k && !seen; ++j) {
        const int32_t ej = id[j];
        seen = ej >= 0 && ej < E && node_of_peer[ej / El] == node_of_peer[p];
      }
      nodes += !seen;
    }
    if (nodes) atomicMax(reinterpret_cast<unsigned long long*>(counts + P), nodes);
  }
}

// 2. cnt[c, p] = marked tokens of chunk c for peer p
__global__ void plan_count_kernel(const int64_t* slot, int64_t N, int64_t P, int64_t C,
                                  int64_t* cnt) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < C * P;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i / P, p = i % P;
    const int64_t end = (c + 1) * kPlanChunk < N ? (c + 1) * kPlanChunk : N;
    int64_t v = 0;
    for (int64_t n = c * kPlanChunk; n < end; ++n) v += slot[n * P + p] == 0;
    cnt[i] = v;
  }
}

// 3. one block: cnt[c, p] <- first row of chunk c's tokens to peer p; counts[0:P]
__global__ void plan_scan_kernel(int64_t P, int64_t C, int64_t* cnt, int64_t* counts) {
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
    int64_t run = 0;
    for (int64_t c = 0; c < C; ++c) {
      const int64_t v = cnt[c * P + p];
      cnt[c * P + p] = run;
      run += v;
    }
    counts[p] = run;
  }
  __syncthreads();  // counts written by all threads (global memory, visible within the block)
  for (int64_t p = threadIdx.x; p < P; p += blockDim.x) {
    int64_t base = 0;
    for (int64_t q = 0; q < p; ++q) base += counts[q];
    for (int64_t c = 0; c < C; ++c) cnt[c * P + p] += base;
  }
}

// 4. per (chunk, peer): rows in token order
__global__ void plan_place_kernel(int64_t N, int64_t P, int64_t C, const int64_t* cnt,
                                  int64_t* slot, int64_t* send_token) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < C * P;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t c = i / P, p = i % P;
    const int64_t end = (c + 1) * kPlanChunk < N ? (c + 1) * kPlanChunk : N;
    int64_t row = cnt[i];
    for (int64_t n = c * kPlanChunk; n < end; ++n)
      if (slot[n * P + p] == 0) {
        slot[n * P + p] = row;
        send_token[row] = n;
        ++row;
      }
  }
}

// ---- rows ------------------------------------------------------------------------------------

// wire row i, value d <- src[rows ? rows[i] : i, d] (Native and BF16)
template <class T>
__global__ void encode_elem_kernel(RowEncoding e, const T* src, const int64_t* rows, int64_t n,
                                   int64_t D, uint8_t* wire, int64_t stride) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n * D;
       j += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = j / D, d = j % D;
    const T x = src[(rows ? rows[i] : i) * D + d];
    uint8_t* out = wire + i * stride;
    if (e == RowEncoding::Native) {
      store_bytes<T>(out + sizeof(T) * d, x);
    } else if constexpr (std::is_same_v<T, float>) {
      store_bytes<uint16_t>(out + 2 * d, f32_to_bf16(x));
    }
  }
}

// FP8: one warp per (row i, 128-channel tile tb): the codes, and lane 0 the tile's scale.
__global__ void encode_fp8_kernel(const float* src, const int64_t* rows, int64_t n, int64_t D,
                                  uint8_t* wire, int64_t stride) {
  const int64_t TB = (D + kWireScaleBlock - 1) / kWireScaleBlock;
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  for (int64_t w = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32; w < n * TB; w += warps) {
    const int64_t i = w / TB, tb = w % TB;
    const int64_t c0 = tb * kWireScaleBlock;
    const int64_t width = D - c0 < kWireScaleBlock ? D - c0 : kWireScaleBlock;
    const float* x = src + (rows ? rows[i] : i) * D + c0;
    float m = 0.f;  // max |x| with NaN skipped (the CPU's "a > m ? a : m")
    for (int64_t j = lane; j < width; j += 32) {
      const float a = fabsf(x[j]);
      m = a > m ? a : m;
    }
    m = warp_reduce(m, MaxOp{});
    const float amax = m < 1e-4f ? 1e-4f : m;  // std::max(amax, 1e-4f)
    const float s = pow2_ceil(amax / 448.0f);
    const float inv = 1.0f / s;
    uint8_t* out = wire + i * stride;
    for (int64_t j = lane; j < width; j += 32) {
      const float v = x[j];
      out[c0 + j] = f32_to_e4m3(isnan(v) ? v : __fmul_rn(v, inv));  // see nan_keeping
    }
    if (lane == 0) store_bytes<float>(out + D + 4 * tb, s);
  }
}

// The value d of an encoded row `in` of D values.
template <class T>
__device__ __forceinline__ T decode_value(RowEncoding e, const uint8_t* in, int64_t D, int64_t d) {
  if (e == RowEncoding::Native) return load_bytes<T>(in + sizeof(T) * d);
  if constexpr (std::is_same_v<T, float>) {
    if (e == RowEncoding::BF16) return bf16_to_f32(load_bytes<uint16_t>(in + 2 * d));
    const float s = load_bytes<float>(in + D + 4 * (d / kWireScaleBlock));
    const float v = e4m3_to_f32(in[d]);
    return isnan(v) ? v : __fmul_rn(v, s);  // see nan_keeping
  } else {
    return T(0);  // unreachable: the host checked the encoding
  }
}

template <class T>
__global__ void decode_kernel(RowEncoding e, const uint8_t* wire, int64_t stride, int64_t n,
                              int64_t D, T* dst) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < n * D;
       j += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = j / D, d = j % D;
    dst[j] = decode_value<T>(e, wire + i * stride, D, d);
  }
}

// out[t, d] += decoded rows slot[t, p] >= 0, in p order
template <class T>
__global__ void decode_add_kernel(RowEncoding e, const uint8_t* wire, int64_t stride,
                                  const int64_t* slot, int64_t N, int64_t P, int64_t D, T* out) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < N * D;
       j += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = j / D, d = j % D;
    T acc = out[j];
    for (int64_t p = 0; p < P; ++p) {
      const int64_t r = slot[t * P + p];
      if (r >= 0) acc += decode_value<T>(e, wire + r * stride, D, d);
    }
    out[j] = acc;
  }
}

// per (token t, peer p) with a row: [K local ids | K weights] as T
template <class T>
__global__ void pack_routes_kernel(const int32_t* idx, const T* w, const int64_t* slot, int64_t N,
                                   int64_t K, int64_t P, int64_t El, uint8_t* wire,
                                   int64_t stride) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < N * P;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t t = i / P, p = i % P, r = slot[i];
    if (r < 0) continue;
    uint8_t* out = wire + r * stride;
    for (int64_t k = 0; k < K; ++k) {
      const int32_t ex = idx[t * K + k];
      const bool here = ex / El == p;  // the CPU's test, C++ division included
      const T id = here ? static_cast<T>(ex - p * El) : T(-1), wt = here ? w[t * K + k] : T(0);
      store_bytes<T>(out + sizeof(T) * k, id);
      store_bytes<T>(out + sizeof(T) * (K + k), wt);
    }
  }
}

template <class T>
__global__ void unpack_routes_kernel(const uint8_t* wire, int64_t stride, int64_t R, int64_t K,
                                     int32_t* ridx, T* rw) {
  for (int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; j < R * K;
       j += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = j / K, k = j % K;
    const uint8_t* in = wire + i * stride;
    ridx[j] = static_cast<int32_t>(load_bytes<T>(in + sizeof(T) * k));
    rw[j] = load_bytes<T>(in + sizeof(T) * (K + k));
  }
}

}  // namespace

void ep_dispatch_plan(const Exec& ex, const int32_t* idx, int64_t N, int64_t K, int64_t El,
                      int64_t P, const int32_t* node_of_peer, int64_t* counts, int64_t* slot,
                      int64_t* send_token, int64_t* bad) {
  if (N < 0 || K < 0 || El <= 0 || P <= 0) throw std::invalid_argument("ep_dispatch_plan: sizes");
  cudaStream_t st = stream_of(ex);
  MOETRON_CUDA_CHECK(cudaMemsetAsync(counts, 0, sizeof(int64_t) * (P + 1), st));
  if (bad) MOETRON_CUDA_CHECK(cudaMemsetAsync(bad, 0, sizeof(int64_t), st));
  if (N == 0) return;
  const int64_t C = (N + kPlanChunk - 1) / kPlanChunk;
  // workspace: the error flag (8 bytes, padded to 16), then cnt [C, P] (one allocation: a second
  // workspace() call could move the first)
  uint8_t* ws = static_cast<uint8_t*>(workspace(ex, 16 + sizeof(int64_t) * C * P));
  auto* err = reinterpret_cast<unsigned long long*>(bad ? reinterpret_cast<uint8_t*>(bad) : ws);
  int64_t* cnt = reinterpret_cast<int64_t*>(ws + 16);
  if (!bad) MOETRON_CUDA_CHECK(cudaMemsetAsync(err, 0, sizeof(*err), st));
  plan_mark_kernel<<<blocks_for(N, 128), 128, 0, st>>>(idx, N, K, El, P, node_of_peer, counts, slot,
                                                       err);
  MOETRON_CUDA_LAUNCHED("ep_dispatch_plan (mark)");
  plan_count_kernel<<<blocks_for(C * P, 128), 128, 0, st>>>(slot, N, P, C, cnt);
  MOETRON_CUDA_LAUNCHED("ep_dispatch_plan (count)");
  plan_scan_kernel<<<1, kThreads, 0, st>>>(P, C, cnt, counts);
  MOETRON_CUDA_LAUNCHED("ep_dispatch_plan (scan)");
  plan_place_kernel<<<blocks_for(C * P, 128), 128, 0, st>>>(N, P, C, cnt, slot, send_token);
  MOETRON_CUDA_LAUNCHED("ep_dispatch_plan (place)");
  if (bad) return;  // the caller reads the flag with the counts
  // Without it, the op's one host wait: a bad expert id must throw here, as on the CPU, and only
  // the device knows.
  unsigned long long n_bad = 0;
  copy_to_host(ex, &n_bad, err, sizeof(n_bad));
  if (n_bad) throw std::out_of_range("ep_dispatch_plan: expert id out of range");
}

template <class T>
void ep_encode_rows(const Exec& ex, RowEncoding e, const T* src, const int64_t* rows, int64_t n,
                    int64_t D, uint8_t* wire, int64_t stride) {
  check_encoding<T>(e, "ep_encode_rows");
  if (n <= 0 || D <= 0) return;
  cudaStream_t st = stream_of(ex);
  if (e == RowEncoding::FP8) {
    if constexpr (std::is_same_v<T, float>) {
      const int64_t warps = n * ((D + kWireScaleBlock - 1) / kWireScaleBlock);
      encode_fp8_kernel<<<blocks_for(warps * 32), kThreads, 0, st>>>(src, rows, n, D, wire, stride);
    }
  } else {
    encode_elem_kernel<T><<<blocks_for(n * D), kThreads, 0, st>>>(e, src, rows, n, D, wire, stride);
  }
  MOETRON_CUDA_LAUNCHED("ep_encode_rows");
}

template <class T>
void ep_decode_rows(const Exec& ex, RowEncoding e, const uint8_t* wire, int64_t stride, int64_t n,
                    int64_t D, T* dst) {
  check_encoding<T>(e, "ep_decode_rows");
  if (n <= 0 || D <= 0) return;
  decode_kernel<T><<<blocks_for(n * D), kThreads, 0, stream_of(ex)>>>(e, wire, stride, n, D, dst);
  MOETRON_CUDA_LAUNCHED("ep_decode_rows");
}

template <class T>
void ep_decode_add_rows(const Exec& ex, RowEncoding e, const uint8_t* wire, int64_t stride,
                        const int64_t* slot, int64_t N, int64_t P, int64_t D, T* out) {
  check_encoding<T>(e, "ep_decode_add_rows");
  if (N <= 0 || D <= 0 || P <= 0) return;
  decode_add_kernel<T>
      <<<blocks_for(N * D), kThreads, 0, stream_of(ex)>>>(e, wire, stride, slot, N, P, D, out);
  MOETRON_CUDA_LAUNCHED("ep_decode_add_rows");
}

template <class T>
void ep_pack_routes(const Exec& ex, const int32_t* idx, const T* w, const int64_t* slot, int64_t N,
                    int64_t K, int64_t P, int64_t El, uint8_t* wire, int64_t stride) {
  if (N <= 0 || P <= 0 || K <= 0) return;
  pack_routes_kernel<T>
      <<<blocks_for(N * P), kThreads, 0, stream_of(ex)>>>(idx, w, slot, N, K, P, El, wire, stride);
  MOETRON_CUDA_LAUNCHED("ep_pack_routes");
}

template <class T>
void ep_unpack_routes(const Exec& ex, const uint8_t* wire, int64_t stride, int64_t R, int64_t K,
                      int32_t* ridx, T* rw) {
  if (R <= 0 || K <= 0) return;
  unpack_routes_kernel<T>
      <<<blocks_for(R * K), kThreads, 0, stream_of(ex)>>>(wire, stride, R, K, ridx, rw);
  MOETRON_CUDA_LAUNCHED("ep_unpack_routes");
}

MOETRON_OPS_EP_WIRE(float)
MOETRON_OPS_EP_WIRE(double)

}  // namespace moetron::kernels::gpu
