// Fine-grained FP8 quantisation (SPEC-deepseek-v3 §3.2): the one quantiser every FP8 caller uses.
//
// x [R, C] is cut into tiles of tr x tc elements — 1x128 for activations (per token, per 128
// channels along K), 128x128 for weights, 128x1 for the re-quantised activations and gradients
// that weight-gradient GEMMs read along the token axis. Each tile has one fp32 dequantisation
// scale s = max(amax, 1e-4) / 448 (or, with pow2, the next power of two at or above it), and
// q = e4m3(x / s), x ~ q * s. Edge tiles use only their valid elements (the same as zero padding).
// scales: [ceil(R/tr), ceil(C/tc)], row-major.
#pragma once

#include <cstdint>

namespace moetron::kernels {

struct Tile {
  int64_t rows = 1, cols = 128;
};
inline constexpr Tile kTile1x128{1, 128}, kTile128x128{128, 128}, kTile128x1{128, 1};

void quantize_e4m3(const float* x, int64_t R, int64_t C, Tile t, bool pow2, uint8_t* q,
                   float* scales);
void dequantize_e4m3(const uint8_t* q, const float* scales, int64_t R, int64_t C, Tile t, float* x);

// Block-scaled FP8 GEMM in DeepGEMM's "NT" form (SPEC §3.3, §3.4): D[M,N] (+)= A[M,K] B[N,K]^T
// with both operands K-major E4M3. A is scaled per 1x128 tile (sA [M, ceil(K/128)]); B per
// 128x128 block (tB = kTile128x128, sB [ceil(N/128), ceil(K/128)]) for Fprop/Dgrad, or per 1x128
// tile (tB = kTile1x128, sB [N, ceil(K/128)]) for Wgrad, whose operands are the 128x1
// re-quantised activations and gradients laid out token-major. Accumulation is FP32 with the
// scales applied once per 128-wide K block ("promotion", N_C = 128).
//   fp8_gemm_nt: dequantises both operands and runs one fp32 GEMM. Because a scale is constant
//     over its 128-wide K block, sum_k (qa sa)(qb sb) over the block = sa sb sum_k qa qb: this is
//     the promotion recipe exactly, up to the order of fp32 additions.
//   fp8_gemm_nt_blockwise: the recipe literally — per K block an fp32 partial of the decoded
//     products, then acc += partial * sa * sb. The reference the fast path is tested against.
void fp8_gemm_nt(const uint8_t* A, const float* sA, const uint8_t* B, const float* sB, Tile tB,
                 int64_t M, int64_t N, int64_t K, float* D, bool accumulate);
void fp8_gemm_nt_blockwise(const uint8_t* A, const float* sA, const uint8_t* B, const float* sB,
                           Tile tB, int64_t M, int64_t N, int64_t K, float* D, bool accumulate);

}  // namespace moetron::kernels
