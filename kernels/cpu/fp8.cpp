// CPU paths of the FP8 recipe (see kernels/fp8.h): the vectorised tile quantiser and dequantiser,
// the operand layouts of Fprop / Dgrad / Wgrad, and the bf16 block-partial GEMM with FP32
// promotion per 128-K block (Fp8Gemm::Bf16Blocks). The layout-level GEMMs and the path switch are
// in kernels/cpu/fp8_gemm.cpp.
//
// Quantiser (quantize, quantize_128x1_t, requantize_1x128_to_128x1): the rule of kernels/fp8.h —
//   amax over the tile, s = max(amax, 1e-4) / 448 (or its pow2_ceil), the division x / s (or
//   product x * (1/s) for power-of-two scales) — on AVX-512 vectors, with a branch-free E4M3
//   encoder (encode16). Codes and scales are bit-identical to the scalar reference of
//   tests/test_kernels_fp8.cpp (tested, NaN and inf inputs included). gcc 12
//   does not vectorise the scalar encoder (it turns its selects into branches), hence intrinsics.
//   Without AVX-512 (the sanitizer build has no -march=native) every loop falls back to the
//   scalar.h conversions, which are the definitions.
//   1x128 tiles: per row, amax of each tile in registers, then encode (one pass over x each).
//   Other tiles: running per-column maxima over the tile's rows, then encode row by row.
//   128x1 tiles stored transposed (Wgrad's token-major operand): per 128 rows x 16 columns,
//   vertical maxima give the 16 column scales, then 16x16 in-register transposes turn rows into
//   columns, which are encoded and stored contiguously — no separate byte transpose.
// Dequantiser (dequantize): decoded code * tile scale; AVX-512 for 1x128 / 128x128 (one scale per
//   128 columns) and 128x1 (a scale per column), scalar for other tiles.
// GEMM (fp8_gemm_nt_bf16): the promotion recipe of SPEC §3.4 literally, with the 128-wide block
//   partials on oneDNN's bf16 x bf16 -> fp32 matmul (avx512_bf16):
//     1. decode both operands' E4M3 codes to bf16 (exact: every E4M3 value is a bf16 value),
//        K zero-padded to a multiple of 128;
//     2. one batched matmul over the K blocks: P[kb][M,N] = A[:, kb] B[:, kb]^T, products exact in
//        fp32, summed in fp32 (the partial Hopper's tensor core computes with ~14 bits); a partial
//        last block (K % 128) runs as its own call at its real width;
//     3. promotion, in K-block order: D[m,n] (+)= P[kb][m,n] * sA[m,kb] * sB[blk(n),kb].
//   Equal to fp8_gemm_nt_blockwise (fp8_gemm.cpp) up to the order of the fp32 additions inside a
//   block. The batched matmul uses runtime dimensions, so one oneDNN primitive (per thread count)
//   serves every shape: routed experts change M every step without a JIT compile per size. Memory:
//   P holds up to 2^24 floats (64 MiB); larger products run in groups of K blocks.
#include "kernels/cpu/fp8.h"

#include <omp.h>

#include "kernels/cpu/fp8_common.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#define MOETRON_FP8_AVX512 1
// gcc 12 reports the _mm512_undefined_* placeholders inside its own AVX-512 intrinsics as
// "may be used uninitialized" once they are inlined here (a false positive).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

#include <algorithm>
#include <cmath>
#include <dnnl.hpp>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <unordered_map>
#include <vector>

#include "kernels/scalar.h"

namespace moetron::kernels::cpu {

namespace {

using fp8_detail::cdiv, fp8_detail::grow;

// The scale of a tile from its amax (kernels/fp8.h).
inline float tile_scale(float amax, bool pow2) {
  const float s = std::max(amax, 1e-4f) / 448.0f;
  return pow2 ? pow2_ceil(s) : s;
}

// dst[C,R] = src[R,C]^T, through 64x64 tiles.
template <class T>
void transpose(const T* src, int64_t R, int64_t C, T* dst) {
  constexpr int64_t B = 64;
  const int64_t RB = cdiv(R, B);
#pragma omp parallel for schedule(static) if (R * C >= (1 << 16))
  for (int64_t rb = 0; rb < RB; ++rb) {
    const int64_t r0 = rb * B, r1 = std::min(R, r0 + B);
    for (int64_t c0 = 0; c0 < C; c0 += B) {
      const int64_t c1 = std::min(C, c0 + B);
      for (int64_t c = c0; c < c1; ++c)
        for (int64_t r = r0; r < r1; ++r) dst[c * R + r] = src[r * C + c];
    }
  }
}

// ---- AVX-512 building blocks -----------------------------------------------------------------

#if MOETRON_FP8_AVX512
// 16 floats -> 16 E4M3 codes, the rounding of f32_to_e4m3 (scalar.h) without branches:
//   normal range (|v| >= 2^-6): add half an ulp of the 3-bit mantissa (plus the even bit) to the
//     fp32 bits, shift, rebias the exponent (127 -> 7);
//   subnormal range: |v| + 2^14 is rounded by the fp32 adder to a multiple of 2^-9 (the fp32 ulp
//     at 2^14), to nearest even; the low bits of the sum are the code (8 = 2^-6, the smallest
//     normal, is also its code);
//   then saturate to 0x7E (448; +-inf included), NaN -> 0x7F, and put the sign back.
inline __m128i encode16(__m512 v) {
  const __m512i b = _mm512_castps_si512(v);
  const __m512i u = _mm512_and_si512(b, _mm512_set1_epi32(0x7fffffff));
  const __m512i sign = _mm512_and_si512(_mm512_srli_epi32(b, 24), _mm512_set1_epi32(0x80));
  const __m512i sub = _mm512_sub_epi32(
      _mm512_castps_si512(_mm512_add_ps(_mm512_castsi512_ps(u), _mm512_set1_ps(16384.0f))),
      _mm512_set1_epi32(0x46800000));
  const __m512i odd = _mm512_and_si512(_mm512_srli_epi32(u, 20), _mm512_set1_epi32(1));
  const __m512i r = _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7ffff)), odd);
  const __m512i nor = _mm512_sub_epi32(_mm512_srli_epi32(r, 20), _mm512_set1_epi32(120 << 3));
  __m512i code =
      _mm512_mask_blend_epi32(_mm512_cmplt_epu32_mask(u, _mm512_set1_epi32(0x3c800000)), nor, sub);
  code = _mm512_min_epu32(code, _mm512_set1_epi32(0x7e));
  code = _mm512_mask_mov_epi32(code, _mm512_cmpgt_epu32_mask(u, _mm512_set1_epi32(0x7f800000)),
                               _mm512_set1_epi32(0x7f));
  return _mm512_cvtepi32_epi8(_mm512_or_si512(code, sign));
}

// 16 E4M3 codes -> 16 bf16 bit patterns in 32-bit lanes (e4m3_to_bf16 of scalar.h).
inline __m512i decode16(__m128i bytes) {
  const __m512i c = _mm512_cvtepu8_epi32(bytes);
  const __m512i mag = _mm512_and_si512(c, _mm512_set1_epi32(0x7f));
  const __m512i sign = _mm512_slli_epi32(_mm512_and_si512(c, _mm512_set1_epi32(0x80)), 8);
  const __m512i nor = _mm512_add_epi32(_mm512_slli_epi32(mag, 4), _mm512_set1_epi32(120 << 7));
  const __m512i sub = _mm512_srli_epi32(
      _mm512_castps_si512(_mm512_mul_ps(_mm512_cvtepi32_ps(mag), _mm512_set1_ps(0.001953125f))),
      16);
  __m512i h = _mm512_mask_blend_epi32(_mm512_cmplt_epu32_mask(mag, _mm512_set1_epi32(8)), nor, sub);
  h = _mm512_mask_mov_epi32(h, _mm512_cmpeq_epi32_mask(mag, _mm512_set1_epi32(0x7f)),
                            _mm512_set1_epi32(0x7fc0));
  return _mm512_or_si512(h, sign);
}

// 16 E4M3 codes -> their values (e4m3_to_f32): the bf16 pattern in the high half of an fp32.
inline __m512 decode16_f32(__m128i bytes) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(decode16(bytes), 16));
}

inline __mmask16 tail_mask(int64_t n) {
  return static_cast<__mmask16>(n >= 16 ? 0xffff : (1u << n) - 1u);
}

// The first n (<= 16) bytes at p; the others zero.
inline __m128i load_bytes(const uint8_t* p, int64_t n) {
  if (n >= 16) return _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  alignas(16) uint8_t b[16] = {};
  for (int64_t i = 0; i < n; ++i) b[i] = p[i];
  return _mm_load_si128(reinterpret_cast<const __m128i*>(b));
}

inline void store_codes(uint8_t* q, __m512 v, __mmask16 k) {
  const __m128i c = encode16(v);
  if (k == 0xffff)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q), c);
  else
    _mm512_mask_cvtepi32_storeu_epi8(q, k, _mm512_cvtepu8_epi32(c));
}

// r[j] <- column j of the 16x16 block whose rows are r[0..15].
inline void transpose16x16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    const __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 1]),
                  c = _mm512_castps_pd(t[4 * i + 2]), d = _mm512_castps_pd(t[4 * i + 3]);
    r[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, c));
    r[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, c));
    r[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(b, d));
    r[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(b, d));
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xdd);
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88);
    r[i + 8] = _mm512_shuffle_f32x4(t[i], t[i + 8], 0xdd);
  }
}
#endif

// ---- quantiser -------------------------------------------------------------------------------

// colmax[j] = max(colmax[j], |x[j]|) for j < w; "a > m ? a : m" skips NaN, as std::max does.
inline void column_max(const float* x, int64_t w, float* colmax) {
  int64_t j = 0;
#if MOETRON_FP8_AVX512
  for (; j + 16 <= w; j += 16)  // max_ps(a, m) returns m when a is NaN
    _mm512_storeu_ps(colmax + j, _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + j)),
                                               _mm512_loadu_ps(colmax + j)));
#endif
  for (; j < w; ++j) {
    const float a = std::fabs(x[j]);
    colmax[j] = a > colmax[j] ? a : colmax[j];
  }
}

// max(0, |x[0..n)|), NaN skipped
inline float abs_max(const float* x, int64_t n) {
  float m = 0.f;
  int64_t j = 0;
#if MOETRON_FP8_AVX512
  __m512 acc = _mm512_setzero_ps();
  for (; j < n; j += 16)
    acc = _mm512_max_ps(_mm512_abs_ps(_mm512_maskz_loadu_ps(tail_mask(n - j), x + j)), acc);
  m = _mm512_reduce_max_ps(acc);
#endif
  for (; j < n; ++j) {
    const float a = std::fabs(x[j]);
    m = a > m ? a : m;
  }
  return m;
}

// q[j] = e4m3(x[j] * inv[j]) (pow2) or e4m3(x[j] / sc[j]), j < w
inline void encode_row(const float* x, const float* sc, const float* inv, bool pow2, int64_t w,
                       uint8_t* q) {
  int64_t j = 0;
#if MOETRON_FP8_AVX512
  for (; j < w; j += 16) {
    const __mmask16 k = tail_mask(w - j);
    const __m512 xv = _mm512_maskz_loadu_ps(k, x + j);
    store_codes(q + j,
                pow2 ? _mm512_mul_ps(xv, _mm512_maskz_loadu_ps(k, inv + j))
                     : _mm512_div_ps(xv, _mm512_mask_loadu_ps(_mm512_set1_ps(1.f), k, sc + j)),
                k);
  }
#endif
  for (; j < w; ++j) q[j] = f32_to_e4m3(pow2 ? x[j] * inv[j] : x[j] / sc[j]);
}

// q[j] = e4m3(x[j] * inv) (pow2) or e4m3(x[j] / s), j < w: one tile of a row
inline void encode_tile(const float* x, float s, float inv, bool pow2, int64_t w, uint8_t* q) {
  int64_t j = 0;
#if MOETRON_FP8_AVX512
  const __m512 sv = _mm512_set1_ps(s), iv = _mm512_set1_ps(inv);
  for (; j < w; j += 16) {
    const __mmask16 k = tail_mask(w - j);
    const __m512 xv = _mm512_maskz_loadu_ps(k, x + j);
    store_codes(q + j, pow2 ? _mm512_mul_ps(xv, iv) : _mm512_div_ps(xv, sv), k);
  }
#endif
  for (; j < w; ++j) q[j] = f32_to_e4m3(pow2 ? x[j] * inv : x[j] / s);
}

// Tiles of one row each (1 x tc): per tile, amax then encode. Row r is x's row idx[r] (idx null:
// r; idx[r] < 0: a row of zeros, as gather_rows writes it).
void quantize_rows(const float* x, const int64_t* idx, int64_t R, int64_t C, int64_t tc, bool pow2,
                   uint8_t* q, float* scales) {
  const int64_t TC = cdiv(C, tc);
  const std::vector<float> zeros(idx ? static_cast<size_t>(C) : 0, 0.f);
#pragma omp parallel for schedule(static) if (R * C >= (1 << 15))
  for (int64_t r = 0; r < R; ++r) {
    const int64_t from = idx ? idx[r] : r;
    const float* row = from < 0 ? zeros.data() : x + from * C;
    for (int64_t tb = 0; tb < TC; ++tb) {
      const int64_t c0 = tb * tc, w = std::min(C, c0 + tc) - c0;
      const float s = tile_scale(abs_max(row + c0, w), pow2);
      scales[r * TC + tb] = s;
      encode_tile(row + c0, s, 1.0f / s, pow2, w, q + r * C + c0);
    }
  }
}

// Tiles [r0,r1) x [c0,c1) of x [R,C] (t.rows rows each): c0 and c1 on tile boundaries or C.
void quantize_chunk(const float* x, int64_t C, Tile t, bool pow2, int64_t r0, int64_t r1,
                    int64_t c0, int64_t c1, uint8_t* q, float* scales) {
  const int64_t TC = cdiv(C, t.cols), br = r0 / t.rows, w = c1 - c0;
  thread_local std::vector<float> colmax_buf, sc_buf, inv_buf;
  float* colmax = grow(colmax_buf, w);
  float* sc = grow(sc_buf, w);
  float* inv = grow(inv_buf, w);
  std::fill(colmax, colmax + w, 0.f);
  for (int64_t r = r0; r < r1; ++r) column_max(x + r * C + c0, w, colmax);
  for (int64_t j0 = 0; j0 < w; j0 += t.cols) {
    const int64_t j1 = std::min(w, j0 + t.cols);
    float amax = 0.f;
    for (int64_t j = j0; j < j1; ++j) amax = std::max(amax, colmax[j]);
    const float s = tile_scale(amax, pow2);
    scales[br * TC + (c0 + j0) / t.cols] = s;
    std::fill(sc + j0, sc + j1, s);
    std::fill(inv + j0, inv + j1, 1.0f / s);
  }
  for (int64_t r = r0; r < r1; ++r) encode_row(x + r * C + c0, sc, inv, pow2, w, q + r * C + c0);
}

// One row of codes times per-element scales (sc) or one scale (s1, when sc is null), w values
inline void decode_row(const uint8_t* q, const float* sc, float s1, int64_t w, float* x) {
  int64_t j = 0;
#if MOETRON_FP8_AVX512
  const __m512 sv = _mm512_set1_ps(s1);
  for (; j < w; j += 16) {
    const __mmask16 k = tail_mask(w - j);
    const __m512 v = decode16_f32(load_bytes(q + j, w - j));
    _mm512_mask_storeu_ps(x + j, k, _mm512_mul_ps(v, sc ? _mm512_maskz_loadu_ps(k, sc + j) : sv));
  }
#endif
  for (; j < w; ++j) x[j] = e4m3_to_f32(q[j]) * (sc ? sc[j] : s1);
}

}  // namespace

void dequantize(const uint8_t* q, const float* s, int64_t R, int64_t C, Tile t, float* x) {
  if (R < 0 || C < 0 || t.rows < 1 || t.cols < 1)
    throw std::invalid_argument("dequantize: bad sizes");
  const int64_t TC = cdiv(C, t.cols);
  if (t.cols != 128 && t.cols != 1) {  // other tiles: the definition, element by element
#pragma omp parallel for schedule(static) if (R * C >= (1 << 15))
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c)
        x[r * C + c] = e4m3_to_f32(q[r * C + c]) * s[(r / t.rows) * TC + c / t.cols];
    return;
  }
#pragma omp parallel for schedule(static) if (R * C >= (1 << 15))
  for (int64_t r = 0; r < R; ++r) {
    const float* srow = s + (r / t.rows) * TC;
    if (t.cols == 1) {  // a scale per column
      decode_row(q + r * C, srow, 0.f, C, x + r * C);
      continue;
    }
    for (int64_t tb = 0; tb < TC; ++tb) {
      const int64_t c0 = tb * 128;
      decode_row(q + r * C + c0, nullptr, srow[tb], std::min(C, c0 + 128) - c0, x + r * C + c0);
    }
  }
}

void quantize_gathered(const float* x, const int64_t* idx, int64_t R, int64_t C, bool pow2,
                       uint8_t* q, float* scales) {
  if (R < 0 || C < 0) throw std::invalid_argument("quantize_gathered: negative size");
  quantize_rows(x, idx, R, C, kTile1x128.cols, pow2, q, scales);
}

void quantize(const float* x, int64_t R, int64_t C, Tile t, bool pow2, uint8_t* q, float* scales) {
  if (R < 0 || C < 0 || t.rows < 1 || t.cols < 1)
    throw std::invalid_argument("quantize: bad sizes");
  if (t.rows == 1) return quantize_rows(x, nullptr, R, C, t.cols, pow2, q, scales);
  const int64_t TR = cdiv(R, t.rows);
  const int64_t cw = t.cols * std::max<int64_t>(1, 1024 / t.cols);  // columns per work item
  const int64_t NC = cdiv(C, cw);
#pragma omp parallel for collapse(2) schedule(static) if (R * C >= (1 << 15))
  for (int64_t br = 0; br < TR; ++br)
    for (int64_t ch = 0; ch < NC; ++ch)
      quantize_chunk(x, C, t, pow2, br * t.rows, std::min(R, br * t.rows + t.rows), ch * cw,
                     std::min(C, ch * cw + cw), q, scales);
}

// ---- operand layouts -----------------------------------------------------------------------

void transpose_e4m3_blocks(const uint8_t* q, const float* s, int64_t R, int64_t C, uint8_t* qT,
                           float* sT) {
  if (R < 0 || C < 0) throw std::invalid_argument("transpose_e4m3_blocks: negative size");
  transpose(q, R, C, qT);
  transpose(s, cdiv(R, 128), cdiv(C, 128), sT);
}

void quantize_128x1_t(const float* x, int64_t R, int64_t C, bool pow2, uint8_t* qT, float* sT) {
  if (R < 0 || C < 0) throw std::invalid_argument("quantize_128x1_t: negative size");
  const int64_t RB = cdiv(R, 128);
#if MOETRON_FP8_AVX512
  // work item: 128 rows (one tile height) x 16 columns
  const int64_t CG = cdiv(C, 16);
#pragma omp parallel for collapse(2) schedule(static) if (R * C >= (1 << 15))
  for (int64_t rb = 0; rb < RB; ++rb)
    for (int64_t cg = 0; cg < CG; ++cg) {
      const int64_t r0 = rb * 128, r1 = std::min(R, r0 + 128), c0 = cg * 16;
      const int64_t nc = std::min<int64_t>(16, C - c0);
      const __mmask16 k = tail_mask(nc);
      __m512 acc = _mm512_setzero_ps();  // column maxima; max_ps(a, acc) skips NaN a
      for (int64_t r = r0; r < r1; ++r)
        acc = _mm512_max_ps(_mm512_abs_ps(_mm512_maskz_loadu_ps(k, x + r * C + c0)), acc);
      alignas(64) float amax[16], sc[16], inv[16];
      _mm512_store_ps(amax, acc);
      for (int64_t j = 0; j < nc; ++j) {
        sc[j] = tile_scale(amax[j], pow2);
        inv[j] = 1.0f / sc[j];
        sT[(c0 + j) * RB + rb] = sc[j];
      }
      int64_t r = r0;
      if (nc == 16)
        for (; r + 16 <= r1; r += 16) {
          __m512 v[16];
          for (int i = 0; i < 16; ++i) v[i] = _mm512_loadu_ps(x + (r + i) * C + c0);
          transpose16x16(v);  // v[j]: column c0 + j, rows r .. r + 15
          for (int j = 0; j < 16; ++j)
            store_codes(qT + (c0 + j) * R + r,
                        pow2 ? _mm512_mul_ps(v[j], _mm512_set1_ps(inv[j]))
                             : _mm512_div_ps(v[j], _mm512_set1_ps(sc[j])),
                        0xffff);
        }
      for (; r < r1; ++r)
        for (int64_t j = 0; j < nc; ++j) {
          const float xv = x[r * C + c0 + j];
          qT[(c0 + j) * R + r] = f32_to_e4m3(pow2 ? xv * inv[j] : xv / sc[j]);
        }
    }
#else
  thread_local std::vector<uint8_t> q;
  thread_local std::vector<float> s;
  quantize(x, R, C, kTile128x1, pow2, grow(q, R * C), grow(s, RB * C));  // s [RB, C]
  transpose(q.data(), R, C, qT);
  transpose(s.data(), RB, C, sT);  // sT [C, RB]: the 1x128 scale grid of qT [C, R]
#endif
}

void requantize_1x128_to_128x1(const uint8_t* q, const float* s, int64_t R, int64_t C, bool pow2,
                               uint8_t* qT, float* sT) {
  if (R < 0 || C < 0) throw std::invalid_argument("requantize_1x128_to_128x1: negative size");
  thread_local std::vector<float> x;
  dequantize(q, s, R, C, kTile1x128, grow(x, R * C));
  quantize_128x1_t(x.data(), R, C, pow2, qT, sT);
}

// ---- block-scaled GEMM -------------------------------------------------------------------------

namespace {

struct BatchedPrim {
  dnnl::matmul prim;
  dnnl::memory::desc scratch;
};

dnnl::engine& engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

// P[g][M,N] = A[g][M,Kb] B[g][N,Kb]^T for g < G: A, B bf16 with row stride Kp, their K blocks
// 128 apart; P f32 dense. Kb = 128, or less for the last, partial K block (no padding work). All
// sizes and strides are runtime values: one primitive per thread count.
std::shared_ptr<const BatchedPrim> batched_prim(int nthr) {
  static std::mutex mu;
  static std::unordered_map<int, std::shared_ptr<const BatchedPrim>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto it = cache.find(nthr);
  if (it != cache.end()) return it->second;
  using dnnl::memory;
  const memory::dim rt = DNNL_RUNTIME_DIM_VAL;
  memory::desc a({rt, rt, rt}, memory::data_type::bf16, memory::dims{128, rt, 1});
  memory::desc b({rt, rt, rt}, memory::data_type::bf16, memory::dims{128, 1, rt});
  memory::desc c({rt, rt, rt}, memory::data_type::f32, memory::dims{rt, rt, 1});
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);  // per-thread scratch: concurrent calls
  dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(a, b, c), attr, engine());
  auto p = std::make_shared<BatchedPrim>();
  p->prim = dnnl::matmul(pd);
  p->scratch = pd.scratchpad_desc();
  return cache.emplace(nthr, std::move(p)).first->second;
}

void batched_bf16(const uint16_t* A, const uint16_t* B, int64_t G, int64_t M, int64_t N, int64_t Kb,
                  int64_t Kp, float* P) {
  using dnnl::memory;
  const auto p = batched_prim(omp_get_max_threads());
  dnnl::engine& eng = engine();
  thread_local dnnl::stream stream(eng);
  memory::desc a({G, M, Kb}, memory::data_type::bf16, memory::dims{128, Kp, 1});
  memory::desc b({G, Kb, N}, memory::data_type::bf16, memory::dims{128, 1, Kp});
  memory::desc c({G, M, N}, memory::data_type::f32, memory::dims{M * N, N, 1});
  thread_local std::vector<uint8_t> scratch;
  uint8_t* sp = grow(scratch, static_cast<int64_t>(p->scratch.get_size()) + 1);
  p->prim.execute(stream, {{DNNL_ARG_SRC, memory(a, eng, const_cast<uint16_t*>(A))},
                           {DNNL_ARG_WEIGHTS, memory(b, eng, const_cast<uint16_t*>(B))},
                           {DNNL_ARG_DST, memory(c, eng, P)},
                           {DNNL_ARG_SCRATCHPAD, memory(p->scratch, eng, sp)}});
  stream.wait();
}

// dst [R, Kp] bf16 = decoded src [R, K] codes, zero-padded to Kp columns.
void decode_bf16(const uint8_t* src, int64_t R, int64_t K, int64_t Kp, uint16_t* dst) {
#pragma omp parallel for schedule(static) if (R * K >= (1 << 15))
  for (int64_t r = 0; r < R; ++r) {
    const uint8_t* s = src + r * K;
    uint16_t* d = dst + r * Kp;
    int64_t k = 0;
#if MOETRON_FP8_AVX512
    for (; k + 16 <= K; k += 16)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(d + k),
                          _mm512_cvtepi32_epi16(
                              decode16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(s + k)))));
#endif
    for (; k < K; ++k) d[k] = e4m3_to_bf16(s[k]);
    for (k = K; k < Kp; ++k) d[k] = 0;
  }
}

}  // namespace

void fp8_gemm_nt_bf16(const uint8_t* A, const float* sA, const uint8_t* B, const float* sB, Tile tB,
                      int64_t M, int64_t N, int64_t K, float* D, bool accumulate) {
  if (M < 0 || N < 0 || K < 0 || tB.cols != 128 || (tB.rows != 1 && tB.rows != 128))
    throw std::invalid_argument("fp8_gemm_nt_bf16: bad sizes or B tile");
  if (M == 0 || N == 0) return;
  const int64_t KB = cdiv(K, 128), Kp = KB * 128;
  if (KB == 0) {
    if (!accumulate) std::fill(D, D + M * N, 0.f);
    return;
  }
  thread_local std::vector<uint16_t> abuf, bbuf;
  thread_local std::vector<float> pbuf, sbuf;
  uint16_t* a16 = grow(abuf, M * Kp);
  uint16_t* b16 = grow(bbuf, N * Kp);
  decode_bf16(A, M, K, Kp, a16);
  decode_bf16(B, N, K, Kp, b16);
  // sbn [KB, N]: B's scale of column n in block kb, so the promotion loop vectorises over n
  float* sbn = grow(sbuf, KB * N);
  for (int64_t kb = 0; kb < KB; ++kb)
    for (int64_t n = 0; n < N; ++n) sbn[kb * N + n] = sB[(n / tB.rows) * KB + kb];
  const int64_t G = std::clamp<int64_t>((int64_t(1) << 24) / (M * N), 1, KB);  // blocks per group
  float* P = grow(pbuf, G * M * N);
  for (int64_t g0 = 0; g0 < KB; g0 += G) {
    const int64_t g1 = std::min(KB, g0 + G);
    // full K blocks in one batched call; a partial last block in its own call with its width
    const int64_t full = std::min(g1, K / 128) - g0;
    if (full > 0) batched_bf16(a16 + g0 * 128, b16 + g0 * 128, full, M, N, 128, Kp, P);
    if (g0 + full < g1)
      batched_bf16(a16 + (g1 - 1) * 128, b16 + (g1 - 1) * 128, 1, M, N, K - (g1 - 1) * 128, Kp,
                   P + full * M * N);
    const bool first = g0 == 0 && !accumulate;
#pragma omp parallel for schedule(static) if (M * N * (g1 - g0) >= (1 << 14))
    for (int64_t m = 0; m < M; ++m) {
      float* d = D + m * N;
      if (first) std::fill(d, d + N, 0.f);
      for (int64_t kb = g0; kb < g1; ++kb) {
        const float* p = P + ((kb - g0) * M + m) * N;
        const float* sb = sbn + kb * N;
        const float sa = sA[m * KB + kb];
        for (int64_t n = 0; n < N; ++n) d[n] += p[n] * sa * sb[n];  // promotion, FP32
      }
    }
  }
}

}  // namespace moetron::kernels::cpu
