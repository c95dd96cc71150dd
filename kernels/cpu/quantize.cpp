// Tile-wise E4M3 quantisation and dequantisation (see kernels/quantize.h). Parallel over tile
// rows; the per-element conversions are the scalar.h functions the CUDA kernels share.
#include "kernels/quantize.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

#include "kernels/ops.h"
#include "kernels/scalar.h"

namespace moetron::kernels {

namespace {
void check(int64_t R, int64_t C, Tile t) {
  if (R < 0 || C < 0 || t.rows < 1 || t.cols < 1)
    throw std::invalid_argument("quantize: bad sizes");
}
}  // namespace

void quantize_e4m3(const float* x, int64_t R, int64_t C, Tile t, bool pow2, uint8_t* q,
                   float* scales) {
  check(R, C, t);
  const int64_t TR = (R + t.rows - 1) / t.rows, TC = (C + t.cols - 1) / t.cols;
#pragma omp parallel for schedule(static) if (R * C >= (1 << 16))
  for (int64_t br = 0; br < TR; ++br) {
    const int64_t r0 = br * t.rows, r1 = std::min(R, r0 + t.rows);
    for (int64_t bc = 0; bc < TC; ++bc) {
      const int64_t c0 = bc * t.cols, c1 = std::min(C, c0 + t.cols);
      float amax = 0.f;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(x[r * C + c]));
      float s = std::max(amax, 1e-4f) / 448.0f;
      if (pow2) s = pow2_ceil(s);
      scales[br * TC + bc] = s;
      const float inv = 1.0f / s;  // exact for power-of-two scales
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c)
          q[r * C + c] = f32_to_e4m3(pow2 ? x[r * C + c] * inv : x[r * C + c] / s);
    }
  }
}

void dequantize_e4m3(const uint8_t* q, const float* scales, int64_t R, int64_t C, Tile t,
                     float* x) {
  check(R, C, t);
  const int64_t TC = (C + t.cols - 1) / t.cols;
#pragma omp parallel for schedule(static) if (R * C >= (1 << 16))
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c)
      x[r * C + c] = e4m3_to_f32(q[r * C + c]) * scales[(r / t.rows) * TC + c / t.cols];
}

void fp8_gemm_nt(const uint8_t* A, const float* sA, const uint8_t* B, const float* sB, Tile tB,
                 int64_t M, int64_t N, int64_t K, float* D, bool accumulate) {
  thread_local std::vector<float> a, b;
  a.resize(M * K), b.resize(N * K);
  dequantize_e4m3(A, sA, M, K, kTile1x128, a.data());
  dequantize_e4m3(B, sB, N, K, tB, b.data());
  gemm<float>(false, true, M, N, K, 1.f, a.data(), b.data(), accumulate ? 1.f : 0.f, D);
}

void fp8_gemm_nt_blockwise(const uint8_t* A, const float* sA, const uint8_t* B, const float* sB,
                           Tile tB, int64_t M, int64_t N, int64_t K, float* D, bool accumulate) {
  const int64_t KB = (K + 127) / 128;
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

}  // namespace moetron::kernels
