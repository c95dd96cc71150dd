// Causal multi-head attention on the GPU, forward and backward, FlashAttention-2 style: tiles of
// keys and values (or queries) in shared memory, an online softmax, no [S, S] matrix anywhere.
//
// Layout (kernels/cpu/ops_cpu.h): q, k, dq, dk [B, S, H, Dqk]; v, o, dout, dv [B, S, H, Dv];
// lse [B, H, S] (log-sum-exp of the SCALED scores). Dqk may differ from Dv (MLA: 192 / 128); both
// at most kMaxD = 256. Scores are (scale q) . k with a causal mask (key j <= query i), as on the
// CPU (kernels/cpu/attention.cpp), whose exponential (kernels/scalar.h's fast_exp) is used here
// too.
//
// These are the fp32 (and double) kernels, for parity runs (attention_core: fp32); the bf16
// and fp8 recipes' attention core (GemmPrecision::BF16) runs on the tensor cores in
// attention_bf16.cu. The kernels here are written to be plainly right rather than fast: one warp
// per row (a query row, or a key row in the dK/dV kernel), the row's vectors in registers (lane l
// holds dims l, l+32,
// ..., l+224), every dot product a warp-wide butterfly sum (so every lane holds the same value and
// the softmax state m, l is identical across the warp), a block of kWarps warps sharing each
// shared-memory tile. Tiles of kTile<T> rows (16 float, 8 double) keep the dynamic shared memory
// under 48 KiB for Dqk, Dv <= 256, so no opt-in attribute is needed.
//
// Forward, one block per (b, h, tile of kWarps query rows), largest causal tiles first: for each
// key tile up to the block's last row, K and V rows into shared memory, then per query row i
//   s_c = Qs_i . K_c (c <= i),  m' = max(m, max s),  p_c = e^(s_c - m'),
//   l = l e^(m - m') + sum p,  O = O e^(m - m') + sum_c p_c V_c,
// and at the end o = O / l, lse = m + ln l.
// Backward, deterministic without atomics (each output element is owned by one warp and written
// once): D_i = dO_i . O_i into a workspace; dK, dV with one block per (b, h, tile of kWarps keys)
// walking the query tiles i >= j, and dQ in a separate kernel with one block per (b, h, tile of
// kWarps queries) walking the key tiles j <= i; both recompute P = e^(Qs K^T - lse) and
//   dP = dO V^T,  dS = P (dP - D),  dV_j = sum_i P_ij dO_i,  dK_j = sum_i dS_ij Qs_i,
//   dQ_i = scale sum_j dS_ij K_j.
// Computing the scores twice costs about 2x the FLOPs of an FA2 backward that accumulates dQ with
// atomics; it is the deterministic choice (the same bits every run).
#include <climits>
#include <cmath>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda/attention_bf16.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/op_instantiate.h"
#include "kernels/scalar.h"

namespace moetron::kernels::gpu {

namespace {

constexpr int kWarps = 8;            // rows (query or key) per block, one warp each
constexpr int kBlock = 32 * kWarps;  // threads per block
constexpr int kMaxD = 256;           // largest Dqk / Dv
constexpr int kPer = kMaxD / 32;     // register slots per lane for one row vector
template <class T>
constexpr int kTile = sizeof(T) == 4 ? 16 : 8;  // rows per shared-memory tile

// reg[i] = src[lane + 32 i] * mul for the dims < D, else 0.
template <class T>
__device__ __forceinline__ void load_row(T (&reg)[kPer], const T* src, int D, int lane, T mul) {
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int d = lane + 32 * i;
    reg[i] = d < D ? src[d] * mul : T(0);
  }
}

// reg . row (row in shared memory, D values), summed over the warp.
template <class T>
__device__ __forceinline__ T warp_dot(const T (&reg)[kPer], const T* row, int D, int lane) {
  T part = 0;
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int d = lane + 32 * i;
    if (d < D) part += reg[i] * row[d];
  }
  return warp_sum(part);
}

// reg += a * row for the dims < D.
template <class T>
__device__ __forceinline__ void warp_axpy(T (&reg)[kPer], T a, const T* row, int D, int lane) {
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int d = lane + 32 * i;
    if (d < D) reg[i] += a * row[d];
  }
}

// dst[lane + 32 i] = reg[i] * mul for the dims < D.
template <class T>
__device__ __forceinline__ void store_row(const T (&reg)[kPer], T* dst, int D, int lane, T mul) {
#pragma unroll
  for (int i = 0; i < kPer; ++i) {
    const int d = lane + 32 * i;
    if (d < D) dst[d] = reg[i] * mul;
  }
}

// Rows [r0, r0 + n) of a [B, S, H, D] tensor at (b, h) into sm[n, D] (the whole block helps).
template <class T>
__device__ void load_tile(T* sm, const T* x, int64_t b, int64_t h, int64_t r0, int n, int64_t S,
                          int64_t H, int D) {
  for (int e = threadIdx.x; e < n * D; e += blockDim.x) {
    const int r = e / D, d = e % D;
    sm[e] = x[((b * S + r0 + r) * H + h) * D + d];
  }
}

// The block's (b, h, tile): tiles of one (b, h) run last-to-first (the causal work of a query
// tile grows with its index; the dK/dV kernel reverses this itself).
struct TileIdx {
  int64_t b, h, t;
};
__device__ __forceinline__ TileIdx tile_of_block(int64_t ntiles, int64_t H) {
  const int64_t blk = blockIdx.x;
  const int64_t bh = blk / ntiles;
  return {bh / H, bh % H, ntiles - 1 - blk % ntiles};
}

// ---- forward ---------------------------------------------------------------------------------
// grid B * H * ceil(S / kWarps), block kBlock, shared kTile * (Dqk + Dv) values.
template <class T>
__global__ void __launch_bounds__(kBlock)
    attn_fwd_kernel(const T* q, const T* k, const T* v, int64_t S, int64_t H, int Dqk, int Dv,
                    T scale, T* o, T* lse) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Ks = reinterpret_cast<T*>(smem_raw);  // [kTile, Dqk]
  T* Vs = Ks + kTile<T> * Dqk;             // [kTile, Dv]
  const int64_t nqt = (S + kWarps - 1) / kWarps;
  const TileIdx ti = tile_of_block(nqt, H);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t i0 = ti.t * kWarps;
  const int64_t last = std::min<int64_t>(i0 + kWarps, S) - 1;  // the block's last query row
  const int64_t i = i0 + warp;                                 // this warp's query row
  const bool active = i < S;

  T qs[kPer], acc[kPer];
  if (active) load_row(qs, q + ((ti.b * S + i) * H + ti.h) * Dqk, Dqk, lane, scale);
#pragma unroll
  for (int r = 0; r < kPer; ++r) acc[r] = 0;
  T m = -INFINITY, l = 0;

  for (int64_t j0 = 0; j0 <= last; j0 += kTile<T>) {
    const int cols = static_cast<int>(std::min<int64_t>(kTile<T>, last + 1 - j0));
    __syncthreads();  // the previous tile is no longer read
    load_tile(Ks, k, ti.b, ti.h, j0, cols, S, H, Dqk);
    load_tile(Vs, v, ti.b, ti.h, j0, cols, S, H, Dv);
    __syncthreads();
    if (!active || j0 > i) continue;  // warp-uniform; key j0 is visible when j0 <= i
    const int nv = static_cast<int>(std::min<int64_t>(cols, i - j0 + 1));  // 1 <= nv <= cols
    T s[kTile<T>];
    T mx = m;
#pragma unroll
    for (int c = 0; c < kTile<T>; ++c) {
      s[c] = c < nv ? warp_dot(qs, Ks + c * Dqk, Dqk, lane) : T(0);
      if (c < nv) mx = s[c] > mx ? s[c] : mx;
    }
    const T alpha = fast_exp(m - mx);  // 0 on the first tile (m = -inf, mx finite)
    T sum = 0;
#pragma unroll
    for (int r = 0; r < kPer; ++r) acc[r] *= alpha;
#pragma unroll
    for (int c = 0; c < kTile<T>; ++c) {
      if (c < nv) {
        const T p = fast_exp(s[c] - mx);
        sum += p;
        warp_axpy(acc, p, Vs + c * Dv, Dv, lane);
      }
    }
    m = mx;
    l = l * alpha + sum;
  }
  if (active) {
    store_row(acc, o + ((ti.b * S + i) * H + ti.h) * Dv, Dv, lane, T(1) / l);
    if (lane == 0) lse[(ti.b * H + ti.h) * S + i] = m + std::log(l);
  }
}

// ---- backward --------------------------------------------------------------------------------
// Dr[b, h, s] = dout[b, s, h, :] . o[b, s, h, :]; one warp per (b, s, h) row, n = B S H rows.
template <class T>
__global__ void __launch_bounds__(kBlock)
    attn_bwd_dot_kernel(const T* dout, const T* o, int64_t n, int64_t S, int64_t H, int Dv, T* Dr) {
  const int64_t row = blockIdx.x * int64_t(kWarps) + threadIdx.x / 32;
  const int lane = threadIdx.x % 32;
  if (row >= n) return;  // warp-uniform; no barriers in this kernel
  const T* g = dout + row * Dv;
  const T* x = o + row * Dv;
  T part = 0;
  for (int d = lane; d < Dv; d += 32) part += g[d] * x[d];
  part = warp_sum(part);
  const int64_t h = row % H, s = (row / H) % S, b = row / (H * S);
  if (lane == 0) Dr[(b * H + h) * S + s] = part;
}

// dK, dV: grid B * H * ceil(S / kWarps), block kBlock, one warp per key row j; shared memory
// kTile * (Dqk + Dv + 2) values (Qs, dO, lse, D of a query tile).
template <class T>
__global__ void __launch_bounds__(kBlock)
    attn_bwd_dkdv_kernel(const T* dout, const T* q, const T* k, const T* v, const T* lse,
                         const T* Dr, int64_t S, int64_t H, int Dqk, int Dv, T scale, T* dk,
                         T* dv) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Qs = reinterpret_cast<T*>(smem_raw);  // [kTile, Dqk], scaled
  T* dOs = Qs + kTile<T> * Dqk;            // [kTile, Dv]
  T* Ls = dOs + kTile<T> * Dv;             // [kTile]
  T* Ds = Ls + kTile<T>;                   // [kTile]
  const int64_t nkt = (S + kWarps - 1) / kWarps;
  TileIdx ti = tile_of_block(nkt, H);
  ti.t = nkt - 1 - ti.t;  // key tiles first-to-last: the first ones see the most queries
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t j0 = ti.t * kWarps;
  const int64_t j = j0 + warp;  // this warp's key row
  const bool active = j < S;

  T kr[kPer], vr[kPer], dkr[kPer], dvr[kPer];
  if (active) {
    load_row(kr, k + ((ti.b * S + j) * H + ti.h) * Dqk, Dqk, lane, T(1));
    load_row(vr, v + ((ti.b * S + j) * H + ti.h) * Dv, Dv, lane, T(1));
  }
#pragma unroll
  for (int r = 0; r < kPer; ++r) dkr[r] = dvr[r] = 0;

  const T* lse_bh = lse + (ti.b * H + ti.h) * S;
  const T* Dr_bh = Dr + (ti.b * H + ti.h) * S;
  for (int64_t i0 = j0; i0 < S; i0 += kTile<T>) {  // queries i >= j0 only
    const int rows = static_cast<int>(std::min<int64_t>(kTile<T>, S - i0));
    __syncthreads();  // the previous tile is no longer read
    for (int e = threadIdx.x; e < rows * Dqk; e += blockDim.x) {
      const int r = e / Dqk, d = e % Dqk;
      Qs[e] = q[((ti.b * S + i0 + r) * H + ti.h) * Dqk + d] * scale;
    }
    load_tile(dOs, dout, ti.b, ti.h, i0, rows, S, H, Dv);
    for (int r = threadIdx.x; r < rows; r += blockDim.x) {
      Ls[r] = lse_bh[i0 + r];
      Ds[r] = Dr_bh[i0 + r];
    }
    __syncthreads();
    if (!active) continue;
    for (int r = 0; r < rows; ++r) {
      if (i0 + r < j) continue;  // causal: query i sees key j when j <= i (warp-uniform)
      const T p = fast_exp(warp_dot(kr, Qs + r * Dqk, Dqk, lane) - Ls[r]);
      const T dp = warp_dot(vr, dOs + r * Dv, Dv, lane);
      const T ds = p * (dp - Ds[r]);
      warp_axpy(dvr, p, dOs + r * Dv, Dv, lane);
      warp_axpy(dkr, ds, Qs + r * Dqk, Dqk, lane);
    }
  }
  if (active) {
    store_row(dkr, dk + ((ti.b * S + j) * H + ti.h) * Dqk, Dqk, lane, T(1));
    store_row(dvr, dv + ((ti.b * S + j) * H + ti.h) * Dv, Dv, lane, T(1));
  }
}

// dQ: grid B * H * ceil(S / kWarps), block kBlock, one warp per query row i; shared memory
// kTile * (Dqk + Dv) values (K, V of a key tile).
template <class T>
__global__ void __launch_bounds__(kBlock)
    attn_bwd_dq_kernel(const T* dout, const T* q, const T* k, const T* v, const T* lse, const T* Dr,
                       int64_t S, int64_t H, int Dqk, int Dv, T scale, T* dq) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* Ks = reinterpret_cast<T*>(smem_raw);  // [kTile, Dqk]
  T* Vs = Ks + kTile<T> * Dqk;             // [kTile, Dv]
  const int64_t nqt = (S + kWarps - 1) / kWarps;
  const TileIdx ti = tile_of_block(nqt, H);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t i0 = ti.t * kWarps;
  const int64_t last = std::min<int64_t>(i0 + kWarps, S) - 1;
  const int64_t i = i0 + warp;
  const bool active = i < S;

  T qs[kPer], gr[kPer], dqr[kPer];
  T li = 0, di = 0;
  if (active) {
    load_row(qs, q + ((ti.b * S + i) * H + ti.h) * Dqk, Dqk, lane, scale);
    load_row(gr, dout + ((ti.b * S + i) * H + ti.h) * Dv, Dv, lane, T(1));
    li = lse[(ti.b * H + ti.h) * S + i];
    di = Dr[(ti.b * H + ti.h) * S + i];
  }
#pragma unroll
  for (int r = 0; r < kPer; ++r) dqr[r] = 0;

  for (int64_t j0 = 0; j0 <= last; j0 += kTile<T>) {
    const int cols = static_cast<int>(std::min<int64_t>(kTile<T>, last + 1 - j0));
    __syncthreads();
    load_tile(Ks, k, ti.b, ti.h, j0, cols, S, H, Dqk);
    load_tile(Vs, v, ti.b, ti.h, j0, cols, S, H, Dv);
    __syncthreads();
    if (!active || j0 > i) continue;
    const int nv = static_cast<int>(std::min<int64_t>(cols, i - j0 + 1));
    for (int c = 0; c < nv; ++c) {
      const T p = fast_exp(warp_dot(qs, Ks + c * Dqk, Dqk, lane) - li);
      const T dp = warp_dot(gr, Vs + c * Dv, Dv, lane);
      warp_axpy(dqr, p * (dp - di), Ks + c * Dqk, Dqk, lane);
    }
  }
  if (active) store_row(dqr, dq + ((ti.b * S + i) * H + ti.h) * Dqk, Dqk, lane, scale);
}

void check_dims(int64_t Dqk, int64_t Dv, const char* op) {
  if (Dqk < 1 || Dv < 1 || Dqk > kMaxD || Dv > kMaxD)
    throw std::invalid_argument(std::string(op) + ": the CUDA kernel supports head dims 1.." +
                                std::to_string(kMaxD) + " (Dqk " + std::to_string(Dqk) + ", Dv " +
                                std::to_string(Dv) + ")");
}

unsigned grid_of(int64_t B, int64_t H, int64_t S, const char* op) {
  const int64_t n = B * H * ((S + kWarps - 1) / kWarps);
  if (n > INT_MAX) throw std::invalid_argument(std::string(op) + ": too many blocks");
  return static_cast<unsigned>(n);
}

}  // namespace

template <class T>
void attention_forward(const Exec& ex, const T* q, const T* k, const T* v, int64_t B, int64_t S,
                       int64_t H, int64_t Dqk, int64_t Dv, T scale, T* o, T* lse,
                       GemmPrecision prec) {
  if (B <= 0 || S <= 0 || H <= 0) return;
  if (prec == GemmPrecision::BF16) {
    if constexpr (std::is_same_v<T, float>)
      return attention_forward_bf16(ex, q, k, v, B, S, H, Dqk, Dv, scale, o, lse);
    throw std::invalid_argument("attention_forward: bf16 products need float tensors on the GPU");
  }
  check_dims(Dqk, Dv, "attention_forward");
  const size_t smem = sizeof(T) * kTile<T> * (Dqk + Dv);  // <= 32 KiB
  attn_fwd_kernel<T><<<grid_of(B, H, S, "attention_forward"), kBlock, smem, stream_of(ex)>>>(
      q, k, v, S, H, static_cast<int>(Dqk), static_cast<int>(Dv), scale, o, lse);
  MOETRON_CUDA_LAUNCHED("attention_forward");
}

template <class T>
void attention_backward(const Exec& ex, const T* dout, const T* q, const T* k, const T* v,
                        const T* o, const T* lse, int64_t B, int64_t S, int64_t H, int64_t Dqk,
                        int64_t Dv, T scale, T* dq, T* dk, T* dv, GemmPrecision prec) {
  if (B <= 0 || S <= 0 || H <= 0) return;
  if (prec == GemmPrecision::BF16) {
    if constexpr (std::is_same_v<T, float>)
      return attention_backward_bf16(ex, dout, q, k, v, o, lse, B, S, H, Dqk, Dv, scale, dq, dk,
                                     dv);
    throw std::invalid_argument("attention_backward: bf16 products need float tensors on the GPU");
  }
  check_dims(Dqk, Dv, "attention_backward");
  cudaStream_t st = stream_of(ex);
  const unsigned grid = grid_of(B, H, S, "attention_backward");
  const int dqk = static_cast<int>(Dqk), dvv = static_cast<int>(Dv);
  // D [B, H, S] in the workspace (stream-ordered: the kernels below run after this one).
  T* Dr = static_cast<T*>(workspace(ex, sizeof(T) * B * H * S));
  const int64_t rows = B * S * H;
  const int64_t dot_blocks = (rows + kWarps - 1) / kWarps;
  if (dot_blocks > INT_MAX) throw std::invalid_argument("attention_backward: too many rows");
  attn_bwd_dot_kernel<T>
      <<<static_cast<unsigned>(dot_blocks), kBlock, 0, st>>>(dout, o, rows, S, H, dvv, Dr);
  MOETRON_CUDA_LAUNCHED("attention_backward (D)");
  const size_t smem_kv = sizeof(T) * kTile<T> * (Dqk + Dv + 2);  // <= 33 KiB
  attn_bwd_dkdv_kernel<T>
      <<<grid, kBlock, smem_kv, st>>>(dout, q, k, v, lse, Dr, S, H, dqk, dvv, scale, dk, dv);
  MOETRON_CUDA_LAUNCHED("attention_backward (dK, dV)");
  const size_t smem_q = sizeof(T) * kTile<T> * (Dqk + Dv);
  attn_bwd_dq_kernel<T>
      <<<grid, kBlock, smem_q, st>>>(dout, q, k, v, lse, Dr, S, H, dqk, dvv, scale, dq);
  MOETRON_CUDA_LAUNCHED("attention_backward (dQ)");
}

MOETRON_OPS_ATTENTION(float)
MOETRON_OPS_ATTENTION(double)

}  // namespace moetron::kernels::gpu
