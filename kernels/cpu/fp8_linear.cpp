// A Linear's FP8 backward GEMMs from fp32 output gradients (kernels/fp8.h, SPEC §3.3): the
// quantisation of dY for Dgrad (1x128, or 128x128 for the App. B.2 experiment) and for Wgrad
// (128x1, token-major), the 1x128 -> 128x1 re-quantisation of the cached input, then the layout
// GEMMs of fp8_gemm.cpp. Scratch is per thread (the experts of a MoE layer run these side by side).
#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/fp8.h"
#include "kernels/cpu/fp8_common.h"

namespace moetron::kernels::cpu {

namespace {

using fp8_detail::cdiv, fp8_detail::grow, fp8_detail::check;

}  // namespace

void fp8_linear_dgrad(const float* dY, int64_t M, int64_t N, int64_t K, const uint8_t* qW,
                      const float* sW, bool pow2, bool blocks128, float* dX, bool accumulate) {
  check(M, N, K, "fp8_linear_dgrad");
  if (M == 0 || K == 0) return;
  const int64_t NB = cdiv(N, 128);
  thread_local std::vector<uint8_t> qbuf;
  thread_local std::vector<float> sbuf, s128buf, obuf;
  uint8_t* q = grow(qbuf, M * N);
  float* s = grow(sbuf, M * NB);  // [M, NB]: the 1x128 grid fp8_dgrad reads
  if (blocks128) {
    // one scale per 128 rows x 128 columns, repeated over the block's rows (same codes)
    float* s128 = grow(s128buf, cdiv(M, 128) * NB);
    quantize(dY, M, N, kTile128x128, pow2, q, s128);
    for (int64_t m = 0; m < M; ++m)
      std::copy(s128 + (m / 128) * NB, s128 + (m / 128) * NB + NB, s + m * NB);
  } else {
    quantize(dY, M, N, kTile1x128, pow2, q, s);
  }
  if (!accumulate) return fp8_dgrad(q, s, qW, sW, M, N, K, dX);
  float* out = grow(obuf, M * K);
  fp8_dgrad(q, s, qW, sW, M, N, K, out);
  for (int64_t i = 0; i < M * K; ++i) dX[i] += out[i];
}

namespace {
// dW [N,K] += dYt^T-form GEMM with X already token-major (qXt [K,M], sXt [K, ceil(M/128)])
void wgrad_from_xt(const float* dY, const uint8_t* qXt, const float* sXt, int64_t M, int64_t N,
                   int64_t K, bool pow2_dy, float* dW) {
  thread_local std::vector<uint8_t> qbuf;
  thread_local std::vector<float> sbuf;
  uint8_t* qdYt = grow(qbuf, N * M);
  float* sdYt = grow(sbuf, N * cdiv(M, 128));
  quantize_128x1_t(dY, M, N, pow2_dy, qdYt, sdYt);
  fp8_wgrad(qdYt, sdYt, qXt, sXt, M, N, K, dW);
}
}  // namespace

void fp8_linear_wgrad(const float* dY, const uint8_t* qX, const float* sX, int64_t M, int64_t N,
                      int64_t K, bool pow2_dy, bool pow2_x, float* dW) {
  check(M, N, K, "fp8_linear_wgrad");
  if (M == 0 || N == 0 || K == 0) return;
  thread_local std::vector<uint8_t> qbuf;
  thread_local std::vector<float> sbuf;
  uint8_t* qXt = grow(qbuf, K * M);
  float* sXt = grow(sbuf, K * cdiv(M, 128));
  requantize_1x128_to_128x1(qX, sX, M, K, pow2_x, qXt, sXt);
  wgrad_from_xt(dY, qXt, sXt, M, N, K, pow2_dy, dW);
}

void fp8_linear_wgrad_f32(const float* dY, const float* X, int64_t M, int64_t N, int64_t K,
                          bool pow2_dy, bool pow2_x, float* dW) {
  check(M, N, K, "fp8_linear_wgrad_f32");
  if (M == 0 || N == 0 || K == 0) return;
  thread_local std::vector<uint8_t> qbuf;
  thread_local std::vector<float> sbuf;
  uint8_t* qXt = grow(qbuf, K * M);
  float* sXt = grow(sbuf, K * cdiv(M, 128));
  quantize_128x1_t(X, M, K, pow2_x, qXt, sXt);
  wgrad_from_xt(dY, qXt, sXt, M, N, K, pow2_dy, dW);
}

}  // namespace moetron::kernels::cpu
