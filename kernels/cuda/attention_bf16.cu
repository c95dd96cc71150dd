// Causal attention on the tensor cores: the attention core of the bf16 and fp8 recipes
// (GemmPrecision::BF16), FlashAttention-2 style, forward and backward, deterministic.
//
// Layout as attention.cu: q, k, dq, dk [B, S, H, Dqk]; v, o, dout, dv [B, S, H, Dv] (fp32);
// lse [B, H, S]. Dqk may differ from Dv (MLA: 192 / 128), both 1..256.
//
// The rounding is the CPU twin's (kernels/cpu/attention.cpp, BF16): every product is a bf16 x
// bf16 -> fp32 WMMA 16x16x16 on operands rounded to nearest even by scalar.h's f32_to_bf16 —
// Qs = bf16(scale q), K, V, dO as the tiles are loaded, P after the row sum takes it (forward),
// P and dS after dS is formed (backward) — while the softmax (scalar.h's fast_exp), m, l, lse and
// D = rowsum(bf16(dO) o) stay fp32. Tiles are zero-padded to whole 16-wide fragments, so a head dim
// that is not a multiple of 16 adds exact zeros.
//
// Work split: each warp owns 16 rows (queries, or keys in the dK/dV kernel) of its block; a
// fragment's products go through shared memory (S, P, dS and the fp32 accumulators of O, dQ, dK,
// dV live there), where lane 2r + h handles row r's columns h, h + 2, h + 4, ... for the
// element-wise steps (so a row's two lanes combine with one shuffle).
//   forward   block = 4 warps x 16 queries; key tiles of 64 up to the block's last row:
//             S = Qs K^T, m' = max(m, max S), P = e^(S - m'), l = l e^(m - m') + sum P,
//             O = O e^(m - m') + bf16(P) V;  o = O / l, lse = m + ln l.
//   dQ        block = 4 warps x 16 queries (largest first); key tiles of 32 up to its last row:
//             P = e^(Qs K^T - lse), dP = dO V^T, dS = P (dP - D), dQ += bf16(dS) K; also writes
//             D for its rows into the workspace, before the dK/dV kernel reads it.
//   dK, dV    block = 2 warps x 16 keys; query tiles of 64 from the diagonal on:
//             P^T = e^(K Qs^T - lse), dP^T = V dO^T, dS^T = P^T (dP^T - D),
//             dV += bf16(P^T) dO, dK += bf16(dS^T) Qs.
// Each output element has one owner and is written once: no atomics, the same bits every run
// (the dQ recomputation costs the FLOPs an atomic FA2 backward saves).
#include <cuda_bf16.h>
#include <mma.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "kernels/cuda/attention_bf16.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/scalar.h"

namespace moetron::kernels::gpu {

namespace {

using bf16 = __nv_bfloat16;
namespace wmma = nvcuda::wmma;
using FragA = wmma::fragment<wmma::matrix_a, 16, 16, 16, bf16, wmma::row_major>;
using FragBRow = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::row_major>;
using FragBCol = wmma::fragment<wmma::matrix_b, 16, 16, 16, bf16, wmma::col_major>;
using FragC = wmma::fragment<wmma::accumulator, 16, 16, 16, float>;

constexpr int kMaxD = 256;
constexpr int kFwdWarps = 4, kFwdRows = 16 * kFwdWarps, kFwdKeys = 64;
constexpr int kDqWarps = 4, kDqRows = 16 * kDqWarps, kDqKeys = 32;
constexpr int kKvWarps = 2, kKvKeys = 16 * kKvWarps, kKvRows = 64;
constexpr unsigned kFull = 0xffffffffu;

__host__ __device__ constexpr int pad16(int d) { return (d + 15) / 16 * 16; }
// Row strides: bf16 rows padded by 8 elements and fp32 rows by 4 (fewer bank conflicts); every
// fragment starts at a multiple of 16 rows and 16 columns, so it stays 32-byte aligned.
__host__ __device__ constexpr int ld16(int d) { return pad16(d) + 8; }
__host__ __device__ constexpr int ld32(int d) { return pad16(d) + 4; }
__host__ __device__ constexpr size_t up128(size_t b) { return (b + 127) / 128 * 128; }

// Shared-memory carving, the same arithmetic on the host (base null: only the size) and the
// device (pointers into the kernel's shared array, so the compiler keeps them in the shared state
// space and the fragment loads are shared-memory loads).
struct Carve {
  unsigned char* base;
  size_t at = 0;
  template <class U>
  __host__ __device__ U* take(size_t n) {
    U* p = base ? reinterpret_cast<U*>(base + at) : nullptr;
    at += up128(n * sizeof(U));
    return p;
  }
};

// Rows [r0, r0 + rows) of a [B, S, H, D] fp32 tensor at (b, h), times mul, rounded to bf16 into
// sm[rows][ld] (columns D..pad16(D) and rows past S as zeros). The whole block helps.
__device__ void load_tile(bf16* sm, int ld, const float* x, int64_t b, int64_t h, int64_t r0,
                          int rows, int64_t S, int64_t H, int D, float mul) {
  const int Dp = pad16(D);
  for (int e = threadIdx.x; e < rows * Dp; e += blockDim.x) {
    const int r = e / Dp, d = e % Dp;
    const int64_t i = r0 + r;
    const float val = d < D && i < S ? x[((b * S + i) * H + h) * D + d] * mul : 0.f;
    sm[r * ld + d] = __ushort_as_bfloat16(f32_to_bf16(val));
  }
}

__device__ __forceinline__ bf16 to_bf16(float x) { return __ushort_as_bfloat16(f32_to_bf16(x)); }

// C[16, n16 * 16] (fp32, ldc) = A[16, kd] B for the warp: A row-major bf16 (lda), B either
// [kd, n] row-major (ldb) or, transposed, [n, kd] row-major read as column-major (ldb).
template <bool kBTransposed>
__device__ void warp_gemm(const bf16* A, int lda, const bf16* B, int ldb, int kd, int n16, float* C,
                          int ldc, bool accumulate) {
  for (int n = 0; n < n16; ++n) {
    FragC acc;
    if (accumulate)
      wmma::load_matrix_sync(acc, C + n * 16, ldc, wmma::mem_row_major);
    else
      wmma::fill_fragment(acc, 0.f);
    for (int kk = 0; kk < kd; kk += 16) {
      FragA a;
      wmma::load_matrix_sync(a, A + kk, lda);
      if constexpr (kBTransposed) {
        FragBCol bm;
        wmma::load_matrix_sync(bm, B + n * 16 * ldb + kk, ldb);
        wmma::mma_sync(acc, a, bm, acc);
      } else {
        FragBRow bm;
        wmma::load_matrix_sync(bm, B + kk * ldb + n * 16, ldb);
        wmma::mma_sync(acc, a, bm, acc);
      }
    }
    wmma::store_matrix_sync(C + n * 16, acc, ldc, wmma::mem_row_major);
  }
}

// A warp's fp32 rows [16][ld] = 0 for the first `cols` columns.
__device__ void zero_rows(float* C, int ld, int cols, int lane) {
  for (int e = lane; e < 16 * cols; e += 32) C[(e / cols) * ld + e % cols] = 0.f;
}

// Keys [j0, j0 + n) visible from query qi (causal), 0 for a row past the sequence.
__device__ __forceinline__ int visible(int64_t qi, int64_t S, int64_t j0, int n) {
  if (qi >= S) return 0;
  const int64_t v = qi - j0 + 1;
  return v < 0 ? 0 : v > n ? n : static_cast<int>(v);
}

// ---- forward ----------------------------------------------------------------------------------

struct FwdSmem {
  bf16 *Q, *K, *V, *P;
  float *Sc, *O;
  size_t bytes;
  __host__ __device__ FwdSmem(unsigned char* base, int Dqk, int Dv) {
    Carve c{base};
    Q = c.take<bf16>(size_t{kFwdRows} * ld16(Dqk));
    K = c.take<bf16>(size_t{kFwdKeys} * ld16(Dqk));
    V = c.take<bf16>(size_t{kFwdKeys} * ld16(Dv));
    P = c.take<bf16>(size_t{kFwdRows} * ld16(kFwdKeys));
    Sc = c.take<float>(size_t{kFwdRows} * ld32(kFwdKeys));
    O = c.take<float>(size_t{kFwdRows} * ld32(Dv));
    bytes = c.at;
  }
};

// One key tile's online-softmax step for the lane's row: P into the warp's P rows, O rescaled.
__device__ void softmax_step(const float* Sw, bf16* Pw, float* Ow, int Dv, int nv, int r, int half,
                             float& m, float& l) {
  constexpr int ls = ld32(kFwdKeys), lp = ld16(kFwdKeys);
  float mx = m;
  for (int c = half; c < nv; c += 2) mx = fmaxf(mx, Sw[r * ls + c]);
  mx = fmaxf(mx, __shfl_xor_sync(kFull, mx, 1));
  float sum = 0.f;
  for (int c = half; c < kFwdKeys; c += 2) {
    const float p = c < nv ? fast_exp(Sw[r * ls + c] - mx) : 0.f;
    sum += p;
    Pw[r * lp + c] = to_bf16(p);
  }
  sum += __shfl_xor_sync(kFull, sum, 1);
  if (nv > 0) {
    const float alpha = fast_exp(m - mx);  // 0 on the row's first visible tile (m = -inf)
    m = mx, l = l * alpha + sum;
    const int ldo = ld32(Dv);
    for (int d = half; d < pad16(Dv); d += 2) Ow[r * ldo + d] *= alpha;
  }
}

__global__ void __launch_bounds__(32 * kFwdWarps)
    attn_fwd_bf16_kernel(const float* q, const float* k, const float* v, int64_t S, int64_t H,
                         int Dqk, int Dv, float scale, int64_t ntiles, float* o, float* lse) {
  extern __shared__ __align__(128) unsigned char smem[];
  const FwdSmem sm(smem, Dqk, Dv);
  const int64_t tile = ntiles - 1 - blockIdx.x % ntiles;  // largest causal tiles first
  const int64_t bh = blockIdx.x / ntiles, b = bh / H, h = bh % H, i0 = tile * kFwdRows;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane >> 1, half = lane & 1;
  const int lq = ld16(Dqk), lv = ld16(Dv), lo = ld32(Dv);
  const bf16* Qw = sm.Q + warp * 16 * lq;
  bf16* Pw = sm.P + warp * 16 * ld16(kFwdKeys);
  float* Sw = sm.Sc + warp * 16 * ld32(kFwdKeys);
  float* Ow = sm.O + warp * 16 * lo;
  load_tile(sm.Q, lq, q, b, h, i0, kFwdRows, S, H, Dqk, scale);
  zero_rows(Ow, lo, pad16(Dv), lane);
  const int64_t qi = i0 + warp * 16 + r;
  float m = -INFINITY, l = 0.f;
  const int64_t last = (i0 + kFwdRows < S ? i0 + kFwdRows : S) - 1;
  for (int64_t j0 = 0; j0 <= last; j0 += kFwdKeys) {
    __syncthreads();  // the previous tile's K and V are read
    load_tile(sm.K, lq, k, b, h, j0, kFwdKeys, S, H, Dqk, 1.f);
    load_tile(sm.V, lv, v, b, h, j0, kFwdKeys, S, H, Dv, 1.f);
    __syncthreads();
    warp_gemm<true>(Qw, lq, sm.K, lq, pad16(Dqk), kFwdKeys / 16, Sw, ld32(kFwdKeys), false);
    __syncwarp();
    softmax_step(Sw, Pw, Ow, Dv, visible(qi, S, j0, kFwdKeys), r, half, m, l);
    __syncwarp();
    warp_gemm<false>(Pw, ld16(kFwdKeys), sm.V, lv, kFwdKeys, pad16(Dv) / 16, Ow, lo, true);
    __syncwarp();
  }
  if (qi >= S) return;
  const float inv = 1.f / l;
  float* dst = o + ((b * S + qi) * H + h) * Dv;
  for (int d = half; d < Dv; d += 2) dst[d] = Ow[r * lo + d] * inv;
  if (half == 0) lse[(b * H + h) * S + qi] = m + logf(l);
}

// ---- backward: dQ (and D) ---------------------------------------------------------------------

struct DqSmem {
  bf16 *Q, *G, *K, *V, *dS;
  float *Sc, *dQ;
  size_t bytes;
  __host__ __device__ DqSmem(unsigned char* base, int Dqk, int Dv) {
    Carve c{base};
    Q = c.take<bf16>(size_t{kDqRows} * ld16(Dqk));
    G = c.take<bf16>(size_t{kDqRows} * ld16(Dv));
    K = c.take<bf16>(size_t{kDqKeys} * ld16(Dqk));
    V = c.take<bf16>(size_t{kDqKeys} * ld16(Dv));
    dS = c.take<bf16>(size_t{kDqRows} * ld16(kDqKeys));
    Sc = c.take<float>(size_t{kDqRows} * ld32(kDqKeys));
    dQ = c.take<float>(size_t{kDqRows} * ld32(Dqk));
    bytes = c.at;
  }
};

// D = rowsum(bf16(dO) o) of the lane pair's row (fp32, both lanes get it; 0 for a row past the
// sequence, g = o = null). Every lane of the warp calls it.
__device__ float row_dot(const float* g, const float* o, int Dv, int half) {
  float s = 0.f;
  if (g)
    for (int d = half; d < Dv; d += 2) s += round_bf16(g[d]) * o[d];
  return s + __shfl_xor_sync(kFull, s, 1);
}

__global__ void __launch_bounds__(32 * kDqWarps)
    attn_dq_bf16_kernel(const float* dout, const float* q, const float* k, const float* v,
                        const float* o, const float* lse, int64_t S, int64_t H, int Dqk, int Dv,
                        float scale, int64_t ntiles, float* Dr, float* dq) {
  extern __shared__ __align__(128) unsigned char smem[];
  const DqSmem sm(smem, Dqk, Dv);
  const int64_t tile = ntiles - 1 - blockIdx.x % ntiles;
  const int64_t bh = blockIdx.x / ntiles, b = bh / H, h = bh % H, i0 = tile * kDqRows;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane >> 1, half = lane & 1;
  const int lq = ld16(Dqk), lv = ld16(Dv), ls = ld32(kDqKeys), lds = ld16(kDqKeys);
  const int ldq = ld32(Dqk);
  load_tile(sm.Q, lq, q, b, h, i0, kDqRows, S, H, Dqk, scale);
  load_tile(sm.G, lv, dout, b, h, i0, kDqRows, S, H, Dv, 1.f);
  float* Sw = sm.Sc + warp * 16 * ls;
  bf16* dSw = sm.dS + warp * 16 * lds;
  float* dQw = sm.dQ + warp * 16 * ldq;
  zero_rows(dQw, ldq, pad16(Dqk), lane);
  const int64_t qi = i0 + warp * 16 + r;
  const int64_t row = (b * S + qi) * H + h;
  const bool in = qi < S;
  const float di = row_dot(in ? dout + row * Dv : nullptr, in ? o + row * Dv : nullptr, Dv, half);
  const float li = in ? lse[(b * H + h) * S + qi] : 0.f;
  if (in && half == 0) Dr[(b * H + h) * S + qi] = di;
  const int64_t last = (i0 + kDqRows < S ? i0 + kDqRows : S) - 1;
  for (int64_t j0 = 0; j0 <= last; j0 += kDqKeys) {
    __syncthreads();
    load_tile(sm.K, lq, k, b, h, j0, kDqKeys, S, H, Dqk, 1.f);
    load_tile(sm.V, lv, v, b, h, j0, kDqKeys, S, H, Dv, 1.f);
    __syncthreads();
    const int nv = visible(qi, S, j0, kDqKeys);
    warp_gemm<true>(sm.Q + warp * 16 * lq, lq, sm.K, lq, pad16(Dqk), kDqKeys / 16, Sw, ls, false);
    __syncwarp();
    float p[kDqKeys / 2];
#pragma unroll
    for (int t = 0; t < kDqKeys / 2; ++t) {
      const int c = half + 2 * t;
      p[t] = c < nv ? fast_exp(Sw[r * ls + c] - li) : 0.f;
    }
    __syncwarp();
    warp_gemm<true>(sm.G + warp * 16 * lv, lv, sm.V, lv, pad16(Dv), kDqKeys / 16, Sw, ls, false);
    __syncwarp();
#pragma unroll
    for (int t = 0; t < kDqKeys / 2; ++t) {
      const int c = half + 2 * t;
      dSw[r * lds + c] = to_bf16(p[t] * (Sw[r * ls + c] - di));
    }
    __syncwarp();
    warp_gemm<false>(dSw, lds, sm.K, lq, kDqKeys, pad16(Dqk) / 16, dQw, ldq, true);
    __syncwarp();
  }
  if (qi >= S) return;
  float* dst = dq + ((b * S + qi) * H + h) * Dqk;
  for (int d = half; d < Dqk; d += 2) dst[d] = dQw[r * ldq + d] * scale;
}

// ---- backward: dK, dV -------------------------------------------------------------------------

struct KvSmem {
  bf16 *K, *V, *Q, *G, *P, *dS;
  float *Sc, *dK, *dV, *lse, *D;
  size_t bytes;
  __host__ __device__ KvSmem(unsigned char* base, int Dqk, int Dv) {
    Carve c{base};
    K = c.take<bf16>(size_t{kKvKeys} * ld16(Dqk));
    V = c.take<bf16>(size_t{kKvKeys} * ld16(Dv));
    Q = c.take<bf16>(size_t{kKvRows} * ld16(Dqk));
    G = c.take<bf16>(size_t{kKvRows} * ld16(Dv));
    P = c.take<bf16>(size_t{kKvKeys} * ld16(kKvRows));
    dS = c.take<bf16>(size_t{kKvKeys} * ld16(kKvRows));
    Sc = c.take<float>(size_t{kKvKeys} * ld32(kKvRows));
    dK = c.take<float>(size_t{kKvKeys} * ld32(Dqk));
    dV = c.take<float>(size_t{kKvKeys} * ld32(Dv));
    lse = c.take<float>(kKvRows);
    D = c.take<float>(kKvRows);
    bytes = c.at;
  }
};

// One query tile for the warp's 16 keys (lane pair: key row r): P^T, dS^T into shared memory,
// then dV += bf16(P^T) dO and dK += bf16(dS^T) Qs.
__device__ void kv_tile(const KvSmem& sm, int warp, int r, int half, int64_t kj, int64_t i0,
                        int64_t S, int Dqk, int Dv) {
  const int lq = ld16(Dqk), lv = ld16(Dv), ls = ld32(kKvRows), lp = ld16(kKvRows);
  float* Sw = sm.Sc + warp * 16 * ls;
  bf16* Pw = sm.P + warp * 16 * lp;
  bf16* dSw = sm.dS + warp * 16 * lp;
  warp_gemm<true>(sm.K + warp * 16 * lq, lq, sm.Q, lq, pad16(Dqk), kKvRows / 16, Sw, ls, false);
  __syncwarp();
  float p[kKvRows / 2];
#pragma unroll
  for (int t = 0; t < kKvRows / 2; ++t) {
    const int c = half + 2 * t;
    const int64_t qi = i0 + c;
    p[t] = kj <= qi && qi < S ? fast_exp(Sw[r * ls + c] - sm.lse[c]) : 0.f;
    Pw[r * lp + c] = to_bf16(p[t]);
  }
  __syncwarp();
  warp_gemm<true>(sm.V + warp * 16 * lv, lv, sm.G, lv, pad16(Dv), kKvRows / 16, Sw, ls, false);
  __syncwarp();
#pragma unroll
  for (int t = 0; t < kKvRows / 2; ++t) {
    const int c = half + 2 * t;
    dSw[r * lp + c] = to_bf16(p[t] * (Sw[r * ls + c] - sm.D[c]));
  }
  __syncwarp();
  warp_gemm<false>(Pw, lp, sm.G, lv, kKvRows, pad16(Dv) / 16, sm.dV + warp * 16 * ld32(Dv),
                   ld32(Dv), true);
  warp_gemm<false>(dSw, lp, sm.Q, lq, kKvRows, pad16(Dqk) / 16, sm.dK + warp * 16 * ld32(Dqk),
                   ld32(Dqk), true);
  __syncwarp();
}

__global__ void __launch_bounds__(32 * kKvWarps)
    attn_dkdv_bf16_kernel(const float* dout, const float* q, const float* k, const float* v,
                          const float* lse, const float* Dr, int64_t S, int64_t H, int Dqk, int Dv,
                          float scale, int64_t ntiles, float* dk, float* dv) {
  extern __shared__ __align__(128) unsigned char smem[];
  const KvSmem sm(smem, Dqk, Dv);
  const int64_t tile = blockIdx.x % ntiles;  // the earliest keys see the most queries
  const int64_t bh = blockIdx.x / ntiles, b = bh / H, h = bh % H, j0 = tile * kKvKeys;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, r = lane >> 1, half = lane & 1;
  load_tile(sm.K, ld16(Dqk), k, b, h, j0, kKvKeys, S, H, Dqk, 1.f);
  load_tile(sm.V, ld16(Dv), v, b, h, j0, kKvKeys, S, H, Dv, 1.f);
  zero_rows(sm.dK + warp * 16 * ld32(Dqk), ld32(Dqk), pad16(Dqk), lane);
  zero_rows(sm.dV + warp * 16 * ld32(Dv), ld32(Dv), pad16(Dv), lane);
  const int64_t kj = j0 + warp * 16 + r;
  for (int64_t i0 = j0 / kKvRows * kKvRows; i0 < S; i0 += kKvRows) {
    __syncthreads();  // the previous query tile is read
    load_tile(sm.Q, ld16(Dqk), q, b, h, i0, kKvRows, S, H, Dqk, scale);
    load_tile(sm.G, ld16(Dv), dout, b, h, i0, kKvRows, S, H, Dv, 1.f);
    for (int c = threadIdx.x; c < kKvRows; c += blockDim.x) {
      const bool in = i0 + c < S;
      sm.lse[c] = in ? lse[(b * H + h) * S + i0 + c] : 0.f;
      sm.D[c] = in ? Dr[(b * H + h) * S + i0 + c] : 0.f;
    }
    __syncthreads();
    kv_tile(sm, warp, r, half, kj, i0, S, Dqk, Dv);
  }
  if (kj >= S) return;
  const float* dKw = sm.dK + warp * 16 * ld32(Dqk);
  const float* dVw = sm.dV + warp * 16 * ld32(Dv);
  for (int d = half; d < Dqk; d += 2) dk[((b * S + kj) * H + h) * Dqk + d] = dKw[r * ld32(Dqk) + d];
  for (int d = half; d < Dv; d += 2) dv[((b * S + kj) * H + h) * Dv + d] = dVw[r * ld32(Dv) + d];
}

void check_dims(int64_t Dqk, int64_t Dv, const char* op) {
  if (Dqk < 1 || Dv < 1 || Dqk > kMaxD || Dv > kMaxD)
    throw std::invalid_argument(std::string(op) + ": the bf16 tensor-core kernel supports head " +
                                "dims 1.." + std::to_string(kMaxD) + " (Dqk " +
                                std::to_string(Dqk) + ", Dv " + std::to_string(Dv) + ")");
}

// Blocks for B * H * ceil(S / rows) tiles; ntiles = tiles per (b, h).
unsigned grid_of(int64_t B, int64_t H, int64_t S, int rows, int64_t& ntiles, const char* op) {
  ntiles = (S + rows - 1) / rows;
  const int64_t n = B * H * ntiles;
  if (n > INT_MAX) throw std::invalid_argument(std::string(op) + ": too many blocks");
  return static_cast<unsigned>(n);
}

}  // namespace

void attention_forward_bf16(const Exec& ex, const float* q, const float* k, const float* v,
                            int64_t B, int64_t S, int64_t H, int64_t Dqk, int64_t Dv, float scale,
                            float* o, float* lse) {
  if (B <= 0 || S <= 0 || H <= 0) return;
  check_dims(Dqk, Dv, "attention_forward (bf16)");
  const int dqk = static_cast<int>(Dqk), dvv = static_cast<int>(Dv);
  const size_t smem = FwdSmem(nullptr, dqk, dvv).bytes;
  int64_t ntiles = 0;
  const unsigned grid = grid_of(B, H, S, kFwdRows, ntiles, "attention_forward (bf16)");
  allow_smem(attn_fwd_bf16_kernel, smem, FwdSmem(nullptr, kMaxD, kMaxD).bytes,
             "attention_forward (bf16)");
  attn_fwd_bf16_kernel<<<grid, 32 * kFwdWarps, smem, stream_of(ex)>>>(q, k, v, S, H, dqk, dvv,
                                                                      scale, ntiles, o, lse);
  MOETRON_CUDA_LAUNCHED("attention_forward (bf16)");
}

void attention_backward_bf16(const Exec& ex, const float* dout, const float* q, const float* k,
                             const float* v, const float* o, const float* lse, int64_t B, int64_t S,
                             int64_t H, int64_t Dqk, int64_t Dv, float scale, float* dq, float* dk,
                             float* dv) {
  if (B <= 0 || S <= 0 || H <= 0) return;
  check_dims(Dqk, Dv, "attention_backward (bf16)");
  const int dqk = static_cast<int>(Dqk), dvv = static_cast<int>(Dv);
  cudaStream_t st = stream_of(ex);
  // D [B, H, S]: written by the dQ kernel, read by the dK/dV kernel after it on the stream.
  float* Dr = static_cast<float*>(workspace(ex, sizeof(float) * B * H * S));
  int64_t nq = 0, nk = 0;
  const unsigned grid_q = grid_of(B, H, S, kDqRows, nq, "attention_backward (bf16)");
  const unsigned grid_k = grid_of(B, H, S, kKvKeys, nk, "attention_backward (bf16)");
  const size_t smem_q = DqSmem(nullptr, dqk, dvv).bytes, smem_k = KvSmem(nullptr, dqk, dvv).bytes;
  allow_smem(attn_dq_bf16_kernel, smem_q, DqSmem(nullptr, kMaxD, kMaxD).bytes,
             "attention_backward (bf16, dQ)");
  allow_smem(attn_dkdv_bf16_kernel, smem_k, KvSmem(nullptr, kMaxD, kMaxD).bytes,
             "attention_backward (bf16, dK, dV)");
  attn_dq_bf16_kernel<<<grid_q, 32 * kDqWarps, smem_q, st>>>(dout, q, k, v, o, lse, S, H, dqk, dvv,
                                                             scale, nq, Dr, dq);
  MOETRON_CUDA_LAUNCHED("attention_backward (bf16, dQ)");
  attn_dkdv_bf16_kernel<<<grid_k, 32 * kKvWarps, smem_k, st>>>(dout, q, k, v, lse, Dr, S, H, dqk,
                                                               dvv, scale, nk, dk, dv);
  MOETRON_CUDA_LAUNCHED("attention_backward (bf16, dK, dV)");
}

}  // namespace moetron::kernels::gpu
