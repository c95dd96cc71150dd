// The FP8 quantiser on the GPU (kernels/cpu/fp8.h has the rule): quantize / dequantize for any
// tile shape, and the operand layouts the Linear GEMMs need (quantize_128x1_t,
// requantize_1x128_to_128x1, transpose_e4m3_blocks; kernels/cuda/fp8_cuda.h).
//
// Bitwise equal to the CPU: per tile amax (NaN skipped, as fmaxf does), s = max(amax, 1e-4) / 448
// or its pow2_ceil, q = e4m3(x / s) (x * (1/s) with power-of-two scales), the conversions of
// kernels/scalar.h. One difference between the machines has to be bridged by hand: NaN bits. The
// CPU (x86 SSE/AVX) returns a NaN operand unchanged (quieted, sign kept) and makes the "default
// NaN" 0xFFC00000 (sign SET) for an invalid operation such as inf / inf or 0 * inf, while the GPU
// returns the canonical NaN 0x7FFFFFFF (sign clear). The sign of a NaN becomes the sign bit of its
// E4M3 code, so x86_mul / x86_div below reproduce the x86 results (NaN inputs, inf inputs with
// amax/448 scales, dequantised 0 * inf).
//
// Kernels (simple, one pass of reads for the amax and one for the codes):
//   tiles of one row (1 x tc, the activations' 1x128): one warp per tile, warp-shuffle max;
//   other tiles: one block per tile, block max, any tile shape;
//   128x1 stored transposed: a block per 128 rows x 32 columns staged in shared memory, column
//     maxima, then each column written as a contiguous run of qT (the tokens of Wgrad's operand);
//     a grouped operand (every expert's dY) in one launch per 64 groups, each block finding its
//     group in a table passed as the kernel's argument;
//   dequantize: one element per thread (grid-stride).
// Grids loop over tiles (grid-stride), so no launch exceeds the grid limits.
#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/fp8_cuda.h"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/scalar.h"

namespace moetron::kernels::gpu {

namespace fp8 {

namespace {

// ---- per-element math: the CPU's results, NaN bits included ------------------------------------

__device__ __forceinline__ float quiet_nan(float x) { return bits_f32(f32_bits(x) | 0x00400000u); }
constexpr uint32_t kX86DefaultNan = 0xffc00000u;

// a * b as x86 computes it (see the note at the top)
__device__ __forceinline__ float x86_mul(float a, float b) {
  if (isnan(a)) return quiet_nan(a);
  if (isnan(b)) return quiet_nan(b);
  const float r = a * b;
  return isnan(r) ? bits_f32(kX86DefaultNan) : r;
}
// a / b as x86 computes it (IEEE division: nvcc's default -prec-div=true)
__device__ __forceinline__ float x86_div(float a, float b) {
  if (isnan(a)) return quiet_nan(a);
  if (isnan(b)) return quiet_nan(b);
  const float r = a / b;
  return isnan(r) ? bits_f32(kX86DefaultNan) : r;
}

// The scale of a tile from its amax (cpu tile_scale: std::max(amax, 1e-4f) / 448).
__device__ __forceinline__ float tile_scale(float amax, bool pow2) {
  const float s = (amax < 1e-4f ? 1e-4f : amax) / 448.0f;
  return pow2 ? pow2_ceil(s) : s;
}

// The code of x in a tile of scale s (inv = 1 / s).
__device__ __forceinline__ uint8_t encode(float x, float s, float inv, bool pow2) {
  return f32_to_e4m3(pow2 ? x86_mul(x, inv) : x86_div(x, s));
}

struct FmaxOp {
  __device__ float operator()(float a, float b) const { return fmaxf(a, b); }
};
__device__ __forceinline__ float warp_max(float v) { return warp_reduce(v, FmaxOp{}); }

// max of v over the block (values >= 0); every thread gets it.
__device__ float block_max(float v) { return block_reduce(v, FmaxOp{}, 0.f); }

// ---- quantize -----------------------------------------------------------------------------------

// Tiles 1 x tc of x [R,C]: one warp per tile t = r * TC + tile column (also its scale's index).
// Row r is x's row idx[r] (idx null: r; idx[r] < 0: zeros, as gather_rows writes them). lt (R a
// multiple of 4): the scales again in cuBLASLt's layout [TC, R] (fp8_cuda.h).
__global__ void quantize_row_tiles_kernel(const float* x, const int64_t* idx, int64_t R, int64_t C,
                                          int64_t tc, int64_t TC, bool pow2, uint8_t* q,
                                          float* scales, float* lt) {
  const int lane = threadIdx.x % 32;
  const int64_t warps = int64_t(gridDim.x) * (blockDim.x / 32);
  const int64_t ntiles = R * TC;
  for (int64_t t = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32; t < ntiles;
       t += warps) {  // uniform within a warp
    const int64_t r = t / TC, c0 = (t % TC) * tc;
    const int64_t w = std::min(tc, C - c0);
    const int64_t from = idx ? idx[r] : r;
    const float* xt = from < 0 ? nullptr : x + from * C + c0;
    float m = 0.f;
    for (int64_t j = lane; j < w; j += 32) m = fmaxf(m, fabsf(xt ? xt[j] : 0.f));  // skips NaN
    m = warp_max(m);
    const float s = tile_scale(m, pow2), inv = 1.0f / s;
    if (lane == 0) {
      scales[t] = s;
      if (lt) lt[(t % TC) * R + r] = s;
    }
    uint8_t* qt = q + r * C + c0;
    for (int64_t j = lane; j < w; j += 32) qt[j] = encode(xt ? xt[j] : 0.f, s, inv, pow2);
  }
}

// Tiles tr x tc (tr > 1) of G matrices x [G,R,C], each tiled from its own first row: one block per
// tile t = (matrix * TR + tile row) * TC + tile column.
__global__ void quantize_block_tiles_kernel(const float* xs, int64_t G, int64_t R, int64_t C,
                                            int64_t tr, int64_t tc, int64_t TR, int64_t TC,
                                            bool pow2, uint8_t* qs, float* scales) {
  for (int64_t t = blockIdx.x; t < G * TR * TC; t += gridDim.x) {  // uniform within the block
    const int64_t g = t / (TR * TC), r0 = (t % (TR * TC) / TC) * tr, c0 = (t % TC) * tc;
    const float* x = xs + g * R * C;  // matrix g's tiles start at its own first row
    uint8_t* q = qs + g * R * C;
    const int64_t h = std::min(tr, R - r0), w = std::min(tc, C - c0), n = h * w;
    float m = 0.f;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x)
      m = fmaxf(m, fabsf(x[(r0 + i / w) * C + c0 + i % w]));
    m = block_max(m);
    const float s = tile_scale(m, pow2), inv = 1.0f / s;
    if (threadIdx.x == 0) scales[t] = s;
    for (int64_t i = threadIdx.x; i < n; i += blockDim.x) {
      const int64_t idx = (r0 + i / w) * C + c0 + i % w;
      q[idx] = encode(x[idx], s, inv, pow2);
    }
  }
}

// ---- 128x1 tiles stored transposed --------------------------------------------------------------

// The values of x [R,C]: fp32, or dequantised 1x128 FP8 (cpu::dequantize, then requantised).
struct F32Values {
  const float* x;
  int64_t C;
  __device__ float operator()(int64_t r, int64_t c) const { return x[r * C + c]; }
};
struct E4M3Values {
  const uint8_t* q;
  const float* s;
  int64_t C, CB;  // CB = ceil(C / 128): the row stride of s
  __device__ float operator()(int64_t r, int64_t c) const {
    return x86_mul(e4m3_to_f32(q[r * C + c]), s[r * CB + c / 128]);
  }
};

constexpr int kColsT = 32;  // columns per block of the transposing quantiser (one warp wide)

// The row groups of one launch of the transposing quantiser, a kernel argument (2 KiB): group j is
// rows [r0, r0 + rows) of x, its codes [C, rows] at qT + C r0, its scales [C, ceil(rows/128)] at
// sT + C tile; end: the work items of groups 0..j (each ceil(rows/128) x ceil(C/32)).
constexpr int kRowGroupBatch = 64;
struct RowGroups {
  int n;
  int64_t r0[kRowGroupBatch], rows[kRowGroupBatch], tile[kRowGroupBatch], end[kRowGroupBatch];
};

// x [R,C] (through `at`), in row groups -> per group qT [C,rows], sT [C, RB]: per work item 128
// rows x 32 columns of one group; 256 threads as 8 rows of 32 (tx: column when reading x, row when
// writing qT). lt (one group, C a multiple of 4): the scales again in cuBLASLt's layout of qT's
// 1x128 tiles, [RB, C] (fp8_cuda.h).
template <class Values>
__global__ void quantize_128x1_t_kernel(Values at, RowGroups g, int64_t C, bool pow2, uint8_t* qT,
                                        float* sT, float* lt) {
  __shared__ float tile[128][kColsT + 1];  // +1: conflict-free column reads
  __shared__ float red[8][kColsT];
  __shared__ float sc[kColsT], inv[kColsT];
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  const int64_t CG = cdiv(C, kColsT);
  for (int64_t t = blockIdx.x; t < g.end[g.n - 1]; t += gridDim.x) {  // uniform within the block
    const int j = range_of(g.end, g.n, t);                            // the group t falls in
    const int64_t R = g.rows[j], RB = cdiv(R, 128), item = t - (j ? g.end[j - 1] : 0);
    const int64_t rb = item / CG, r0 = rb * 128, c0 = (item % CG) * kColsT;
    uint8_t* q = qT + C * g.r0[j];
    float* s = sT + C * g.tile[j];
    const int h = static_cast<int>(std::min<int64_t>(128, R - r0));
    const int w = static_cast<int>(std::min<int64_t>(kColsT, C - c0));
    float m = 0.f;
    for (int r = ty; r < h; r += 8) {
      const float v = tx < w ? at(g.r0[j] + r0 + r, c0 + tx) : 0.f;
      tile[r][tx] = v;
      m = fmaxf(m, fabsf(v));
    }
    red[ty][tx] = m;
    __syncthreads();
    if (ty == 0) {
      float a = red[0][tx];
      for (int k = 1; k < 8; ++k) a = fmaxf(a, red[k][tx]);
      const float sk = tile_scale(a, pow2);
      sc[tx] = sk;
      inv[tx] = 1.0f / sk;
      if (tx < w) {
        s[(c0 + tx) * RB + rb] = sk;
        if (lt) lt[rb * C + c0 + tx] = sk;
      }
    }
    __syncthreads();
    for (int c = ty; c < w; c += 8)
      for (int r = tx; r < h; r += 32)
        q[(c0 + c) * R + r0 + r] = encode(tile[r][c], sc[c], inv[c], pow2);
    __syncthreads();  // tile, red, sc are rewritten by the next work item
  }
}

// The groups with rows of off [G + 1] (host), kRowGroupBatch per launch; one group {0, R} for a
// single operand.
template <class Values>
void quantize_128x1_t_groups(cudaStream_t st, Values at, const int64_t* off, int64_t G, int64_t C,
                             bool pow2, uint8_t* qT, float* sT, float* lt, const char* what) {
  if (C == 0) return;
  const std::vector<int64_t> t = row_tile_offsets(off, G);
  RowGroups b{};
  auto launch = [&] {
    if (b.n == 0) return;
    quantize_128x1_t_kernel<Values>
        <<<blocks_for(b.end[b.n - 1], 1), kThreads, 0, st>>>(at, b, C, pow2, qT, sT, lt);
    MOETRON_CUDA_LAUNCHED(what);
    b.n = 0;
  };
  for (int64_t k = 0; k < G; ++k) {
    const int64_t rows = off[k + 1] - off[k];
    if (rows <= 0) continue;
    b.r0[b.n] = off[k], b.rows[b.n] = rows, b.tile[b.n] = t[k];
    b.end[b.n] = (b.n ? b.end[b.n - 1] : 0) + cdiv(rows, 128) * cdiv(C, kColsT);
    if (++b.n == kRowGroupBatch) launch();
  }
  launch();
}

// ---- layouts ------------------------------------------------------------------------------------

// dst [G,C,R] = src [G,R,C]^T (each matrix) through 32x32 tiles in shared memory (256 threads as
// 8 x 32).
template <class T>
__global__ void transpose_kernel(const T* src, int64_t G, int64_t R, int64_t C, T* dst) {
  __shared__ T tile[32][33];
  const int tx = threadIdx.x % 32, ty = threadIdx.x / 32;
  const int64_t TRb = cdiv(R, 32), TCb = cdiv(C, 32), per = TRb * TCb;
  for (int64_t t = blockIdx.x; t < G * per; t += gridDim.x) {  // uniform within the block
    const int64_t g = t / per, r0 = (t % per / TCb) * 32, c0 = (t % TCb) * 32;
    const T* a = src + g * R * C;
    T* b = dst + g * R * C;
    for (int i = ty; i < 32; i += 8)
      if (r0 + i < R && c0 + tx < C) tile[i][tx] = a[(r0 + i) * C + c0 + tx];
    __syncthreads();
    for (int i = ty; i < 32; i += 8)
      if (c0 + i < C && r0 + tx < R) b[(c0 + i) * R + r0 + tx] = tile[tx][i];
    __syncthreads();
  }
}

template <class T>
void transpose(cudaStream_t st, const T* src, int64_t G, int64_t R, int64_t C, T* dst,
               const char* what) {
  if (G <= 0 || R <= 0 || C <= 0) return;
  const int64_t tiles = G * cdiv(R, 32) * cdiv(C, 32);
  transpose_kernel<T><<<blocks_for(tiles, 1), kThreads, 0, st>>>(src, G, R, C, dst);
  MOETRON_CUDA_LAUNCHED(what);
}

// ---- dequantize ---------------------------------------------------------------------------------

__global__ void dequantize_kernel(const uint8_t* q, const float* scales, int64_t R, int64_t C,
                                  int64_t tr, int64_t tc, int64_t TC, float* x) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < R * C;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t r = i / C, c = i % C;
    x[i] = x86_mul(e4m3_to_f32(q[i]), scales[(r / tr) * TC + c / tc]);
  }
}

void check_sizes(int64_t R, int64_t C, const char* what) {
  if (R < 0 || C < 0) throw std::invalid_argument(std::string(what) + ": negative size");
}

}  // namespace

void quantize(cudaStream_t st, const float* x, int64_t R, int64_t C, Tile t, bool pow2, uint8_t* q,
              float* scales, float* lt) {
  quantize_batched(st, x, 1, R, C, t, pow2, q, scales, lt);
}

void quantize_batched(cudaStream_t st, const float* x, int64_t G, int64_t R, int64_t C, Tile t,
                      bool pow2, uint8_t* q, float* scales, float* lt) {
  if (G < 0 || R < 0 || C < 0 || t.rows < 1 || t.cols < 1 ||
      (lt && (t.rows != 1 || t.cols != 128 || G * R % 4)))
    throw std::invalid_argument("quantize: bad sizes, or a cuBLASLt layout of other tiles");
  if (G == 0 || R == 0 || C == 0) return;
  const int64_t TR = cdiv(R, t.rows), TC = cdiv(C, t.cols);
  if (t.rows == 1) {  // a row's tiles are its own: the G matrices are one of G R rows
    quantize_row_tiles_kernel<<<blocks_for(G * TR * TC * 32), kThreads, 0, st>>>(
        x, nullptr, G * R, C, t.cols, TC, pow2, q, scales, lt);
  } else {
    quantize_block_tiles_kernel<<<blocks_for(G * TR * TC, 1), kThreads, 0, st>>>(
        x, G, R, C, t.rows, t.cols, TR, TC, pow2, q, scales);
  }
  MOETRON_CUDA_LAUNCHED("quantize");
}

void quantize_gathered(cudaStream_t st, const float* x, const int64_t* idx, int64_t R, int64_t C,
                       bool pow2, uint8_t* q, float* scales) {
  check_sizes(R, C, "quantize_gathered");
  if (R == 0 || C == 0) return;
  const int64_t TC = cdiv(C, kTile1x128.cols);
  quantize_row_tiles_kernel<<<blocks_for(R * TC * 32), kThreads, 0, st>>>(
      x, idx, R, C, kTile1x128.cols, TC, pow2, q, scales, nullptr);
  MOETRON_CUDA_LAUNCHED("quantize_gathered");
}

void quantize_128x1_t(cudaStream_t st, const float* x, int64_t R, int64_t C, bool pow2, uint8_t* qT,
                      float* sT, float* lt) {
  check_sizes(R, C, "quantize_128x1_t");
  if (lt && C % 4) throw std::invalid_argument("quantize_128x1_t: a cuBLASLt layout of C % 4 != 0");
  const int64_t one[2] = {0, R};
  quantize_128x1_t_groups(st, F32Values{x, C}, one, 1, C, pow2, qT, sT, lt, "quantize_128x1_t");
}

void requantize_1x128_to_128x1(cudaStream_t st, const uint8_t* q, const float* s, int64_t R,
                               int64_t C, bool pow2, uint8_t* qT, float* sT, float* lt) {
  check_sizes(R, C, "requantize_1x128_to_128x1");
  if (lt && C % 4)
    throw std::invalid_argument("requantize_1x128_to_128x1: a cuBLASLt layout of C % 4 != 0");
  const int64_t one[2] = {0, R};
  quantize_128x1_t_groups(st, E4M3Values{q, s, C, cdiv(C, 128)}, one, 1, C, pow2, qT, sT, lt,
                          "requantize_1x128_to_128x1");
}

void grouped_128x1_t(cudaStream_t st, const float* x, const uint8_t* q, const float* s,
                     const int64_t* off, int64_t G, int64_t C, bool pow2, uint8_t* qT, float* sT) {
  check_sizes(off[G], C, "grouped_128x1_t");
  if (x)
    quantize_128x1_t_groups(st, F32Values{x, C}, off, G, C, pow2, qT, sT, nullptr,
                            "grouped quantize_128x1_t (Wgrad's X)");
  else
    quantize_128x1_t_groups(st, E4M3Values{q, s, C, cdiv(C, 128)}, off, G, C, pow2, qT, sT, nullptr,
                            "grouped requantize_1x128_to_128x1");
}

void transpose_e4m3_blocks(cudaStream_t st, const uint8_t* q, const float* s, int64_t G, int64_t R,
                           int64_t C, uint8_t* qT, float* sT) {
  check_sizes(R, C, "transpose_e4m3_blocks");
  if (G < 0) throw std::invalid_argument("transpose_e4m3_blocks: negative group count");
  transpose(st, q, G, R, C, qT, "fp8 transpose (codes)");
  transpose(st, s, G, cdiv(R, 128), cdiv(C, 128), sT, "fp8 transpose (block scales)");
}

}  // namespace fp8

void quantize(const Exec& ex, const float* x, int64_t R, int64_t C, Tile t, bool pow2, uint8_t* q,
              float* scales) {
  fp8::quantize(stream_of(ex), x, R, C, t, pow2, q, scales);
}

void quantize_batched(const Exec& ex, const float* x, int64_t G, int64_t R, int64_t C, Tile t,
                      bool pow2, uint8_t* q, float* scales) {
  fp8::quantize_batched(stream_of(ex), x, G, R, C, t, pow2, q, scales);
}

void quantize_gathered(const Exec& ex, const float* x, const int64_t* idx, int64_t R, int64_t C,
                       bool pow2, uint8_t* q, float* scales) {
  fp8::quantize_gathered(stream_of(ex), x, idx, R, C, pow2, q, scales);
}

// up to 64 groups per launch (kernels/ops.h for the layout)
void grouped_quantize_128x1_t(const Exec& ex, const int64_t* off, int64_t G, const float* x,
                              int64_t C, bool pow2, uint8_t* qT, float* sT) {
  if (C < 0) throw std::invalid_argument("grouped_quantize_128x1_t: negative size");
  fp8::quantize_128x1_t_groups(stream_of(ex), fp8::F32Values{x, C}, off, G, C, pow2, qT, sT,
                               nullptr, "grouped_quantize_128x1_t");
}

void transpose_e4m3_blocks(const Exec& ex, const uint8_t* q, const float* s, int64_t G, int64_t R,
                           int64_t C, uint8_t* qT, float* sT) {
  fp8::transpose_e4m3_blocks(stream_of(ex), q, s, G, R, C, qT, sT);
}

void dequantize(const Exec& ex, const uint8_t* q, const float* scales, int64_t R, int64_t C, Tile t,
                float* x) {
  if (R < 0 || C < 0 || t.rows < 1 || t.cols < 1)
    throw std::invalid_argument("dequantize: bad sizes");
  if (R == 0 || C == 0) return;
  fp8::dequantize_kernel<<<blocks_for(R * C), kThreads, 0, stream_of(ex)>>>(
      q, scales, R, C, t.rows, t.cols, fp8::cdiv(C, t.cols), x);
  MOETRON_CUDA_LAUNCHED("dequantize");
}

}  // namespace moetron::kernels::gpu
