// Grouped GEMMs of the routed experts on the CPU: one GEMM per group (expert) over its rows of the
// expert-sorted activations, in fp32/bf16 and in the FP8 recipe (Fprop, Dgrad, Wgrad).
//
// One group per thread (schedule(dynamic, 1)): the experts' GEMMs are small, so running them side
// by side beats splitting each one over the threads; the kernels called here see no nested
// parallelism. Groups with no rows are skipped (their weight gradients are left as they are).
// Also the G-matrix helpers of the experts' FP8 weight cache: quantise and transpose G matrices.
#include <stdexcept>
#include <vector>

#include "kernels/cpu/fp8_common.h"
#include "kernels/cpu/ops_cpu.h"

namespace moetron::kernels::cpu {

namespace {
int64_t blocks128(int64_t R, int64_t C) { return ((R + 127) / 128) * ((C + 127) / 128); }
int64_t tiles128(int64_t C) { return (C + 127) / 128; }
}  // namespace

template <class T>
void grouped_gemm(const int64_t* off, int64_t G, bool transW, int64_t N, int64_t K, const T* A,
                  const T* W, T* C, GemmPrecision prec) {
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = off[g], rows = off[g + 1] - off[g];
    if (rows == 0) continue;
    gemm<T>(false, transW, rows, N, K, T(1), A + r0 * K, W + g * N * K, T(0), C + r0 * N, prec,
            /*dynamic=*/true);
  }
}

void grouped_gemm_bf16_weight(const int64_t* off, int64_t G, bool transW, int64_t N, int64_t K,
                              const float* A, const uint16_t* W16, float* C) {
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = off[g], rows = off[g + 1] - off[g];
    if (rows == 0) continue;
    gemm_bf16_weight(false, transW, rows, N, K, 1.f, A + r0 * K, W16 + g * N * K, 0.f, C + r0 * N,
                     /*dynamic=*/true);
  }
}

template <class T>
void grouped_gemm_wgrad(const int64_t* off, int64_t G, int64_t M, int64_t N, const T* A, const T* B,
                        T* C, GemmPrecision prec) {
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = off[g], rows = off[g + 1] - off[g];
    if (rows == 0) continue;
    gemm<T>(true, false, M, N, rows, T(1), A + r0 * M, B + r0 * N, T(1), C + g * M * N, prec,
            /*dynamic=*/true);
  }
}

void grouped_fp8_fprop(const int64_t* off, int64_t G, const uint8_t* qX, const float* sX,
                       const uint8_t* qW, const float* sW, int64_t N, int64_t K, float* Y) {
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = off[g], rows = off[g + 1] - off[g];
    if (rows == 0) continue;
    fp8_fprop(qX + r0 * K, sX + r0 * tiles128(K), qW + g * N * K, sW + g * blocks128(N, K), rows, N,
              K, Y + r0 * N);
  }
}

void grouped_fp8_linear_dgrad(const int64_t* off, int64_t G, const float* dY, int64_t N, int64_t K,
                              const uint8_t* qWt, const float* sWt, bool pow2, bool blocks,
                              float* dX) {
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = off[g], rows = off[g + 1] - off[g];
    if (rows == 0) continue;
    fp8_linear_dgrad(dY + r0 * N, rows, N, K, qWt + g * K * N, sWt + g * blocks128(K, N), pow2,
                     blocks, dX + r0 * K, /*accumulate=*/false);
  }
}

void quantize_batched(const float* x, int64_t G, int64_t R, int64_t C, Tile t, bool pow2,
                      uint8_t* q, float* scales) {
  if (G < 0 || t.rows < 1 || t.cols < 1)
    throw std::invalid_argument("quantize_batched: negative group count or bad tile");
  const int64_t n = fp8_detail::cdiv(R, t.rows) * fp8_detail::cdiv(C, t.cols);
  for (int64_t g = 0; g < G; ++g)  // (quantize runs its own threads)
    quantize(x + g * R * C, R, C, t, pow2, q + g * R * C, scales + g * n);
}

void transpose_e4m3_blocks(const uint8_t* q, const float* s, int64_t G, int64_t R, int64_t C,
                           uint8_t* qT, float* sT) {
  if (G < 0) throw std::invalid_argument("transpose_e4m3_blocks: negative group count");
#pragma omp parallel for schedule(static) if (G > 1)
  for (int64_t g = 0; g < G; ++g)
    transpose_e4m3_blocks(q + g * R * C, s + g * blocks128(R, C), R, C, qT + g * R * C,
                          sT + g * blocks128(R, C));
}

void grouped_fp8_linear_wgrad(const int64_t* off, int64_t G, const uint8_t* qdYt, const float* sdYt,
                              const uint8_t* qX, const float* sX, int64_t N, int64_t K, bool pow2_x,
                              float* dW) {
  const std::vector<int64_t> t = row_tile_offsets(off, G);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = off[g], rows = off[g + 1] - off[g];
    if (rows == 0) continue;
    fp8_linear_wgrad(qdYt + r0 * N, sdYt + t[g] * N, qX + r0 * K, sX + r0 * tiles128(K), rows, N, K,
                     pow2_x, dW + g * N * K);
  }
}

void grouped_fp8_linear_wgrad_f32(const int64_t* off, int64_t G, const uint8_t* qdYt,
                                  const float* sdYt, const float* X, int64_t N, int64_t K,
                                  bool pow2_x, float* dW) {
  const std::vector<int64_t> t = row_tile_offsets(off, G);
#pragma omp parallel for schedule(dynamic, 1)
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = off[g], rows = off[g + 1] - off[g];
    if (rows == 0) continue;
    fp8_linear_wgrad_f32(qdYt + r0 * N, sdYt + t[g] * N, X + r0 * K, rows, N, K, pow2_x,
                         dW + g * N * K);
  }
}

template void grouped_gemm<float>(const int64_t*, int64_t, bool, int64_t, int64_t, const float*,
                                  const float*, float*, GemmPrecision);
template void grouped_gemm<double>(const int64_t*, int64_t, bool, int64_t, int64_t, const double*,
                                   const double*, double*, GemmPrecision);
template void grouped_gemm_wgrad<float>(const int64_t*, int64_t, int64_t, int64_t, const float*,
                                        const float*, float*, GemmPrecision);
template void grouped_gemm_wgrad<double>(const int64_t*, int64_t, int64_t, int64_t, const double*,
                                         const double*, double*, GemmPrecision);

}  // namespace moetron::kernels::cpu
