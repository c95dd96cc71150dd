// A Linear's FP8 backward GEMMs (kernels/fp8.h, SPEC §3.3): the quantisation of dY for Dgrad
// (1x128, or 128x128 for the App. B.2 experiment) and for Wgrad (128x1, token-major, per row group:
// a deferred weight gradient keeps it in that form), the 1x128 -> 128x1 re-quantisation of the
// cached input, then the layout GEMMs of fp8_gemm.cpp. Scratch is per thread (the experts of a MoE
// layer run these side by side).
#include <algorithm>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cpu/fp8.h"
#include "kernels/cpu/fp8_common.h"
#include "kernels/cpu/ops_cpu.h"

namespace moetron::kernels::cpu {

namespace {

using fp8_detail::cdiv, fp8_detail::grow, fp8_detail::check;

}  // namespace

void fp8_linear_dgrad(const float* dY, int64_t M, int64_t N, int64_t K, const uint8_t* qWt,
                      const float* sWt, bool pow2, bool blocks128, float* dX, bool accumulate) {
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
  if (!accumulate) return fp8_dgrad_t(q, s, qWt, sWt, M, N, K, dX);
  float* out = grow(obuf, M * K);
  fp8_dgrad_t(q, s, qWt, sWt, M, N, K, out);
  for (int64_t i = 0; i < M * K; ++i) dX[i] += out[i];
}

void grouped_quantize_128x1_t(const int64_t* off, int64_t G, const float* x, int64_t C, bool pow2,
                              uint8_t* qT, float* sT) {
  const std::vector<int64_t> t = row_tile_offsets(off, G);
  const auto one = [&](int64_t g) {
    const int64_t r0 = off[g], rows = off[g + 1] - off[g];
    if (rows > 0) quantize_128x1_t(x + r0 * C, rows, C, pow2, qT + r0 * C, sT + t[g] * C);
  };
  if (G == 1) return one(0);  // a Linear's dY: the quantiser's own threads
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t g = 0; g < G; ++g) one(g);
}

void fp8_linear_wgrad(const uint8_t* qdYt, const float* sdYt, const uint8_t* qX, const float* sX,
                      int64_t M, int64_t N, int64_t K, bool pow2_x, float* dW) {
  check(M, N, K, "fp8_linear_wgrad");
  if (M == 0 || N == 0 || K == 0) return;
  thread_local std::vector<uint8_t> qbuf;
  thread_local std::vector<float> sbuf;
  uint8_t* qXt = grow(qbuf, K * M);
  float* sXt = grow(sbuf, K * cdiv(M, 128));
  requantize_1x128_to_128x1(qX, sX, M, K, pow2_x, qXt, sXt);
  fp8_wgrad(qdYt, sdYt, qXt, sXt, M, N, K, dW);
}

void fp8_linear_wgrad_f32(const uint8_t* qdYt, const float* sdYt, const float* X, int64_t M,
                          int64_t N, int64_t K, bool pow2_x, float* dW) {
  check(M, N, K, "fp8_linear_wgrad_f32");
  if (M == 0 || N == 0 || K == 0) return;
  thread_local std::vector<uint8_t> qbuf;
  thread_local std::vector<float> sbuf;
  uint8_t* qXt = grow(qbuf, K * M);
  float* sXt = grow(sbuf, K * cdiv(M, 128));
  quantize_128x1_t(X, M, K, pow2_x, qXt, sXt);
  fp8_wgrad(qdYt, sdYt, qXt, sXt, M, N, K, dW);
}

}  // namespace moetron::kernels::cpu
