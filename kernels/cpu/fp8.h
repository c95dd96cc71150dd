// The FP8 recipe of SPEC-deepseek-v3 §3 on the CPU (namespace kernels::cpu; the model reaches the
// ones it uses through the device ops of kernels/ops.h): the one quantiser every FP8 caller goes
// through (Linear layers, EP dispatch, tests, benchmarks), the operand layouts, and the
// block-scaled GEMMs of a Linear (Fprop, Dgrad, Wgrad) with FP32 promotion every 128 along the
// reduction axis.
//
// Implementations: kernels/cpu/fp8.cpp (quantiser, layouts, bf16 block-partial GEMM) and
// kernels/cpu/fp8_gemm.cpp (the three layouts, the path switch and the literal blockwise
// reference). Per-element conversions (E4M3/E5M2, pow2_ceil) are kernels/scalar.h. The scalar
// reference quantiser that the vectorised one is tested against bit for bit lives in
// tests/test_kernels_fp8.cpp. Costs on the tiny model's shapes: docs/performance.md,
// "## FP8 GEMM" (bench/bench_fp8.cpp).
//
// Quantisation (one rule, one entry point: quantize): x [R,C] is cut into tiles {1,128}
// (activations and activation gradients, per token per 128 channels), {128,128} (weights) or
// {128,1} (token-axis tiles for Wgrad). Per tile s = max(amax, 1e-4) / 448, or with pow2 the UE8M0
// scale 2^ceil(log2(that)); q = e4m3(x / s) (RNE, saturating to +-448); x ~ q s. Edge tiles use
// their valid elements only. scales: [ceil(R/tr), ceil(C/tc)] row-major.
//
// GEMM layouts for a Linear X [M,K] -> Y [M,N], W [N,K] (SPEC §3.3):
//   Fprop  Y[M,N]   = X[M,K] W[N,K]^T   X: 1x128 along K (sX [M, ceil(K/128)]);
//                                       W: 128x128 (sW [ceil(N/128), ceil(K/128)]).
//   Dgrad  dX[M,K]  = dY[M,N] W[N,K]    dY: 1x128 along N (sdY [M, ceil(N/128)]); W as in Fprop,
//                                       its blocks read transposed (exact: same codes, same
//                                       scales).
//   Wgrad  dW[N,K] += dY^T X            both operands tiled 1x128 along M (tokens), i.e. the 128x1
//                                       tiles of dY [M,N] and X [M,K], stored token-major
//                                       (transposed): dYt [N,M] (sdYt [N, ceil(M/128)]),
//                                       Xt [K,M] (sXt [K, ceil(M/128)]) from quantize_128x1_t or,
//                                       for the cached FP8 activation, requantize_1x128_to_128x1.
//                                       FP32 output, accumulated.
// Every reduction block of 128 has one scale per operand row, so within a block
//   sum_k (qa_k sa)(qb_k sb) = sa sb sum_k qa_k qb_k.
// Fp8Gemm::Dequant therefore dequantises both operands to fp32 and runs ONE GEMM
// (kernels::gemm): each product (qa sa)(qb sb) is the same real number as in the promotion recipe
// (block partial in fp32, times sa sb, added to an fp32 accumulator); only the order of the fp32
// additions and one fp32 rounding of each dequantised value (none with power-of-two scales: a
// 4-bit E4M3 significand times 2^k is exact) differ. When every scale of both operands is a power
// of two, each dequantised value is also exactly a bf16 value, so the GEMM runs in
// GemmPrecision::BF16 — bf16 inputs, fp32 accumulation — with no rounding of its inputs: the same
// result, on the bf16 units. Otherwise it runs in FP32 (an amax/448 scale makes q s a 28-bit
// product, which bf16 would round).
// Fp8Gemm::Bf16Blocks is the recipe with each 128-block partial on oneDNN's bf16 x bf16 -> fp32
// batched matmul (E4M3 values are exact in bf16), promoted with the scales in fp32.
// Fp8Gemm::Blockwise is the recipe written literally (scalar loops; fp8_gemm_nt_blockwise).
// Fp8Gemm::Auto (the default) picks the fastest exact form: Dequant when all scales are powers of
// two (one bf16 GEMM), else Bf16Blocks (an fp32 GEMM costs ~2x a bf16 one on AVX-512-BF16
// CPUs; docs/performance.md "## FP8 GEMM"). All paths agree to fp32 summation order (tested).
// Non-multiples of 128 work everywhere (partial last blocks and tiles).
#pragma once

#include <cstdint>

#include "kernels/op_types.h"

namespace moetron::kernels::cpu {

// ---- quantiser -------------------------------------------------------------------------------
// x [R,C] -> q [R,C] E4M3 codes, scales [ceil(R/t.rows), ceil(C/t.cols)], the rule above, with
// AVX-512 loops (bit-identical to the scalar reference of the tests, NaN/inf inputs included).
// Any tile shape works. Throws std::invalid_argument on negative sizes or empty tiles.
void quantize(const float* x, int64_t R, int64_t C, Tile t, bool pow2, uint8_t* q, float* scales);
// quantize(gather_rows(x, idx), R, C, kTile1x128, ...) without the gathered copy (kernels/ops.h).
void quantize_gathered(const float* x, const int64_t* idx, int64_t R, int64_t C, bool pow2,
                       uint8_t* q, float* scales);
// x [R,C] = decoded q * its tile's scale (vectorised for tiles 1x128, 128x128 and 128x1; scalar
// for other tiles).
void dequantize(const uint8_t* q, const float* scales, int64_t R, int64_t C, Tile t, float* x);

// x [R,C] quantised with 128x1 tiles (one scale per column per 128 rows) and stored transposed:
// qT [C,R] with 1x128 tiles along R, sT [C, ceil(R/128)]. Identical codes and scales to
// quantize(x, R, C, kTile128x1, ...) followed by a transpose: Wgrad's token-major operand.
void quantize_128x1_t(const float* x, int64_t R, int64_t C, bool pow2, uint8_t* qT, float* sT);

// The cached activation (SPEC §3.3, §3.5): q [R,C] with 1x128 tiles (s [R, ceil(C/128)]) is
// dequantised, transposed and re-quantised with 128x1 tiles: qT [C,R], sT [C, ceil(R/128)]
// (= quantize_128x1_t of the dequantised values).
// With pow2 scales on both sides the re-quantisation is exact for every element that lands in
// E4M3's normal range (|value / new scale| >= 2^-6): the scales differ by a power of two, so the
// code is the old code with its exponent shifted. Only values pushed into the subnormal range by a
// larger column scale round (by at most 2^-10 of the new scale). With amax/448 scales ordinary
// values round a second time.
void requantize_1x128_to_128x1(const uint8_t* q, const float* s, int64_t R, int64_t C, bool pow2,
                               uint8_t* qT, float* sT);

// W [R,C] with 128x128 blocks (q [R,C], s [ceil(R/128), ceil(C/128)]) -> W^T [C,R]:
// qT[c,r] = q[r,c], sT [ceil(C/128), ceil(R/128)] = s^T. Bit-exact.
void transpose_e4m3_blocks(const uint8_t* q, const float* s, int64_t R, int64_t C, uint8_t* qT,
                           float* sT);

// ---- block-scaled GEMMs ----------------------------------------------------------------------

// The promotion recipe of SPEC §3.4 written literally, D[M,N] (+)= A[M,K] B[N,K]^T: per 128-wide
// K block an fp32 partial of the decoded products, then acc += partial * sA * sB. A 1x128
// (sA [M, ceil(K/128)]); B 128x128 (sB [ceil(N/128), ceil(K/128)]) or 1x128 (sB [N, ceil(K/128)]).
// Scalar and slow: the exact reference the fast paths are tested against (Fp8Gemm::Blockwise).
void fp8_gemm_nt_blockwise(const uint8_t* A, const float* sA, const uint8_t* B, const float* sB,
                           Tile tB, int64_t M, int64_t N, int64_t K, float* D, bool accumulate);

// NT core, D[M,N] (+)= A[M,K] B[N,K]^T: A 1x128 (sA [M, ceil(K/128)]), B 128x128 or 1x128 (tB).
// D need not be initialised unless accumulate.
void fp8_gemm_nt_bf16(const uint8_t* A, const float* sA, const uint8_t* B, const float* sB, Tile tB,
                      int64_t M, int64_t N, int64_t K, float* D, bool accumulate);
// true when every scale is a power of two in [2^-100, 2^100] (dequantised E4M3 values are then
// exact, normal bf16 values)
bool pow2_scales(const float* s, int64_t n);
void fp8_gemm_nt_path(Fp8Gemm path, const uint8_t* A, const float* sA, const uint8_t* B,
                      const float* sB, Tile tB, int64_t M, int64_t N, int64_t K, float* D,
                      bool accumulate);

// The three GEMMs of a Linear (layouts and scale grids: top of this file).
// Fprop: Y [M,N] (write) = X [M,K] W [N,K]^T
void fp8_fprop(const uint8_t* qX, const float* sX, const uint8_t* qW, const float* sW, int64_t M,
               int64_t N, int64_t K, float* Y, Fp8Gemm path = Fp8Gemm::Auto);
// Dgrad: dX [M,K] (write) = dY [M,N] W [N,K]
void fp8_dgrad(const uint8_t* qdY, const float* sdY, const uint8_t* qW, const float* sW, int64_t M,
               int64_t N, int64_t K, float* dX, Fp8Gemm path = Fp8Gemm::Auto);
// The same from W^T [K,N] (qWt, sWt [ceil(K/128), ceil(N/128)]: transpose_e4m3_blocks of W), the
// NT operand the recipe's GEMM reads: fp8_dgrad transposes W and calls this.
void fp8_dgrad_t(const uint8_t* qdY, const float* sdY, const uint8_t* qWt, const float* sWt,
                 int64_t M, int64_t N, int64_t K, float* dX, Fp8Gemm path = Fp8Gemm::Auto);
// Wgrad: dW [N,K] (accumulate) += dY^T X from dYt [N,M] and Xt [K,M], 1x128 along M
void fp8_wgrad(const uint8_t* qdYt, const float* sdYt, const uint8_t* qXt, const float* sXt,
               int64_t M, int64_t N, int64_t K, float* dW, Fp8Gemm path = Fp8Gemm::Auto);

// ---- a Linear's backward from fp32 gradients (kernels/cpu/fp8_linear.cpp) ----------------------
// Linear X [M,K] -> Y [M,N], W [N,K] held as 128x128 blocks (qW, sW). The forward is fp8_fprop on
// the 1x128-quantised X (which the caller caches for Wgrad).
// Dgrad: quantise dY [M,N] (1x128; with blocks128 the App. B.2 experiment: 128x128 blocks, their
// scales repeated over each block's rows) and dX [M,K] (+)= dY W, W given as its transpose
// (qWt [K,N], sWt [ceil(K/128), ceil(N/128)]: the weight cache's, made once per weight version).
void fp8_linear_dgrad(const float* dY, int64_t M, int64_t N, int64_t K, const uint8_t* qWt,
                      const float* sWt, bool pow2, bool blocks128, float* dX, bool accumulate);
// Wgrad: dW [N,K] += dY^T X with dY already quantised 128x1 token-major (qdYt [N,M], sdYt
// [N, ceil(M/128)]: quantize_128x1_t) and X from the cached 1x128 FP8 (qX, sX [M, ceil(K/128)])
// re-quantised to 128x1 (pow2_x).
void fp8_linear_wgrad(const uint8_t* qdYt, const float* sdYt, const uint8_t* qX, const float* sX,
                      int64_t M, int64_t N, int64_t K, bool pow2_x, float* dW);
// The same with X [M,K] in fp32, quantised 128x1 directly.
void fp8_linear_wgrad_f32(const uint8_t* qdYt, const float* sdYt, const float* X, int64_t M,
                          int64_t N, int64_t K, bool pow2_x, float* dW);

}  // namespace moetron::kernels::cpu
