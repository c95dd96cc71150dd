// The three block-scaled FP8 GEMMs of a Linear (Fprop, Dgrad, Wgrad; kernels/fp8.h, SPEC §3.3)
// and the path switch between the fast form (dequantise + one fp32 GEMM) and the promotion recipe
// (bf16 block partials or the literal scalar loops). Why the fast form is the recipe up to fp32
// summation order: kernels/fp8.h.
//
// Auto: Dequant when all scales of both operands are powers of two, else Bf16Blocks.
// Dequant path per layout (the strides of kernels::gemm do the rest):
//   Fprop  a = deq(X [M,K], 1x128),   b = deq(W [N,K], 128x128);    Y  = a b^T
//   Dgrad  a = deq(dY [M,N], 1x128),  b = deq(W^T [K,N], 128x128);  dX = a b^T
//   Wgrad  a = deq(dYt [N,M], 1x128), b = deq(Xt [K,M], 1x128);     dW += a b^T
// Every path takes NT operands, so Dgrad reads W transposed: its codes and block scales
// (transpose_e4m3_blocks, exact), which a Linear's weight cache keeps (fp8_dgrad_t) and
// fp8_dgrad makes. Scratch: per-thread fp32 copies of both operands.
// fp8_gemm_nt_blockwise, the literal recipe (scalar loops), is defined here too: it is the
// reference the other paths are tested against.
#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/fp8.h"
#include "kernels/cpu/fp8_common.h"
#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"

namespace moetron::kernels::cpu {

namespace {

using fp8_detail::cdiv, fp8_detail::grow, fp8_detail::check;

// D [M,N] (+)= deq(A [M,K]) deq(B [N,K])^T, A with 1x128 tiles, B with tile tB.
void dequant_gemm(const uint8_t* A, const float* sA, const uint8_t* B, const float* sB, Tile tB,
                  int64_t M, int64_t N, int64_t K, float* D, bool accumulate) {
  thread_local std::vector<float> abuf, bbuf;
  float* a = grow(abuf, M * K);
  float* b = grow(bbuf, N * K);
  dequantize(A, sA, M, K, kTile1x128, a);
  dequantize(B, sB, N, K, tB, b);
  // power-of-two scales: every dequantised value is a bf16 value, the bf16 GEMM rounds nothing
  const bool exact_bf16 =
      pow2_scales(sA, M * cdiv(K, 128)) && pow2_scales(sB, cdiv(N, tB.rows) * cdiv(K, tB.cols));
  gemm<float>(false, true, M, N, K, 1.f, a, b, accumulate ? 1.f : 0.f, D,
              exact_bf16 ? GemmPrecision::BF16 : GemmPrecision::FP32, /*dynamic=*/true);
}

// Auto's choice for D = A B^T (A 1x128 tiles, B tiles tB, both [*, K])
Fp8Gemm resolve(Fp8Gemm path, const float* sA, const float* sB, Tile tB, int64_t M, int64_t N,
                int64_t K) {
  if (path != Fp8Gemm::Auto) return path;
  const int64_t KB = cdiv(K, 128);
  return pow2_scales(sA, M * KB) && pow2_scales(sB, cdiv(N, tB.rows) * KB) ? Fp8Gemm::Dequant
                                                                           : Fp8Gemm::Bf16Blocks;
}

}  // namespace

void fp8_gemm_nt_blockwise(const uint8_t* A, const float* sA, const uint8_t* B, const float* sB,
                           Tile tB, int64_t M, int64_t N, int64_t K, float* D, bool accumulate) {
  check(M, N, K, "fp8_gemm_nt_blockwise");
  const int64_t KB = cdiv(K, 128);
#pragma omp parallel for schedule(static)
  for (int64_t m = 0; m < M; ++m)
    for (int64_t n = 0; n < N; ++n) {
      float acc = accumulate ? D[m * N + n] : 0.f;
      for (int64_t kb = 0; kb < KB; ++kb) {
        float partial = 0.f;  // the tensor core's block: products of decoded FP8 values
        for (int64_t k = kb * 128; k < std::min(K, kb * 128 + 128); ++k)
          partial += e4m3_to_f32(A[m * K + k]) * e4m3_to_f32(B[n * K + k]);
        const float sb = sB[(n / tB.rows) * KB + kb];
        acc += partial * sA[m * KB + kb] * sb;  // promotion to the FP32 accumulator
      }
      D[m * N + n] = acc;
    }
}

bool pow2_scales(const float* s, int64_t n) {
  bool ok = true;
  for (int64_t i = 0; i < n; ++i) {
    const uint32_t u = f32_bits(s[i]);
    const uint32_t e = u >> 23;  // sign bit included: negative scales fail
    ok &= (u & 0x7fffffu) == 0 && e >= 127 - 100 && e <= 127 + 100;
  }
  return ok;
}

void fp8_gemm_nt_path(Fp8Gemm path, const uint8_t* A, const float* sA, const uint8_t* B,
                      const float* sB, Tile tB, int64_t M, int64_t N, int64_t K, float* D,
                      bool accumulate) {
  check(M, N, K, "fp8_gemm_nt_path");
  switch (resolve(path, sA, sB, tB, M, N, K)) {
    case Fp8Gemm::Auto:  // resolved above
    case Fp8Gemm::Dequant:
      return dequant_gemm(A, sA, B, sB, tB, M, N, K, D, accumulate);
    case Fp8Gemm::Bf16Blocks:
      return fp8_gemm_nt_bf16(A, sA, B, sB, tB, M, N, K, D, accumulate);
    case Fp8Gemm::Blockwise:
      return fp8_gemm_nt_blockwise(A, sA, B, sB, tB, M, N, K, D, accumulate);
  }
  throw std::invalid_argument("fp8_gemm_nt_path: unknown path");
}

void fp8_fprop(const uint8_t* qX, const float* sX, const uint8_t* qW, const float* sW, int64_t M,
               int64_t N, int64_t K, float* Y, Fp8Gemm path) {
  check(M, N, K, "fp8_fprop");
  fp8_gemm_nt_path(path, qX, sX, qW, sW, kTile128x128, M, N, K, Y, false);
}

void fp8_dgrad(const uint8_t* qdY, const float* sdY, const uint8_t* qW, const float* sW, int64_t M,
               int64_t N, int64_t K, float* dX, Fp8Gemm path) {
  check(M, N, K, "fp8_dgrad");
  thread_local std::vector<uint8_t> qbuf;
  thread_local std::vector<float> sbuf;
  uint8_t* qWt = grow(qbuf, K * N);                      // W^T [K,N]
  float* sWt = grow(sbuf, cdiv(K, 128) * cdiv(N, 128));  // [ceil(K/128), ceil(N/128)]
  transpose_e4m3_blocks(qW, sW, N, K, qWt, sWt);
  fp8_dgrad_t(qdY, sdY, qWt, sWt, M, N, K, dX, path);
}

void fp8_dgrad_t(const uint8_t* qdY, const float* sdY, const uint8_t* qWt, const float* sWt,
                 int64_t M, int64_t N, int64_t K, float* dX, Fp8Gemm path) {
  check(M, N, K, "fp8_dgrad_t");
  // dX [M,K] = dY [M,N] (W^T [K,N])^T: reduction over N, W^T's 128x128 blocks read along N
  fp8_gemm_nt_path(path, qdY, sdY, qWt, sWt, kTile128x128, M, K, N, dX, false);
}

void fp8_wgrad(const uint8_t* qdYt, const float* sdYt, const uint8_t* qXt, const float* sXt,
               int64_t M, int64_t N, int64_t K, float* dW, Fp8Gemm path) {
  check(M, N, K, "fp8_wgrad");
  // dW [N,K] += dYt [N,M] Xt [K,M]^T: reduction over the tokens M, both operands 1x128 along M
  fp8_gemm_nt_path(path, qdYt, sdYt, qXt, sXt, kTile1x128, N, K, M, dW, true);
}

}  // namespace moetron::kernels::cpu
