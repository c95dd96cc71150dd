// Grouped GEMMs of the routed experts on the GPU (fp32/bf16/double; the FP8 forms are in
// fp8_gemm.cu): one cuBLASLt GEMM per non-empty group over its rows of the expert-sorted
// activations, issued in group order on the op's stream.
//
// Shapes: off [G+1] int64 row offsets (HOST memory); group g owns rows [off[g], off[g+1]).
//   grouped_gemm        C_g[rows, N] = A_g[rows, K] op(W_g), W_g = W + g*N*K ([N,K] if transW,
//                       else [K,N]); A [rows total, K], C [rows total, N].
//                       grouped_gemm_bf16_weight: the same at BF16 with W already in bf16 (only A
//                       is converted).
//   grouped_gemm_wgrad  C_g[M, N] += A_g[rows, M]^T B_g[rows, N], C_g = C + g*M*N (accumulates;
//                       a group with no rows leaves its C_g as it is).
// Each per-group cuBLASLt call needs its row count on the host: the offsets come in host memory
// (the MoE layer reads them from the device once per forward), so no op here waits for the
// stream. The workspace is taken once, sized for the largest group, and every group's GEMM reuses
// it in stream order.
#include <algorithm>

#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/op_instantiate.h"

namespace moetron::kernels::gpu {

int64_t max_group_rows(const int64_t* off, int64_t G) {
  int64_t m = 0;
  for (int64_t g = 0; g < G; ++g) m = std::max(m, off[g + 1] - off[g]);
  return m;
}

template <class T>
void grouped_gemm(const Exec& ex, const int64_t* off, int64_t G, bool transW, int64_t N, int64_t K,
                  const T* A, const T* W, T* C, GemmPrecision prec) {
  if (G <= 0) return;
  cudaStream_t s = stream_of(ex);
  const int64_t rmax = max_group_rows(off, G);
  if (rmax == 0 || N == 0) return;
  const size_t bytes = gemm_scratch_bytes<T>(rmax, N, K, prec);
  void* ws = workspace(ex, bytes);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = off[g], rows = off[g + 1] - off[g];
    if (rows == 0) continue;
    gemm_on<T>(s, false, transW, rows, N, K, T(1), A + r0 * K, W + g * N * K, T(0), C + r0 * N,
               prec, ws, bytes);
  }
}

void grouped_gemm_bf16_weight(const Exec& ex, const int64_t* off, int64_t G, bool transW, int64_t N,
                              int64_t K, const float* A, const uint16_t* W16, float* C) {
  if (G <= 0) return;
  cudaStream_t s = stream_of(ex);
  const int64_t rmax = max_group_rows(off, G);
  if (rmax == 0 || N == 0) return;
  const size_t bytes = gemm_bf16_weight_scratch_bytes(rmax, K);
  void* ws = workspace(ex, bytes);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = off[g], rows = off[g + 1] - off[g];
    if (rows == 0) continue;
    gemm_bf16_weight_on(s, false, transW, rows, N, K, 1.f, A + r0 * K, W16 + g * N * K, 0.f,
                        C + r0 * N, ws, bytes);
  }
}

template <class T>
void grouped_gemm_wgrad(const Exec& ex, const int64_t* off, int64_t G, int64_t M, int64_t N,
                        const T* A, const T* B, T* C, GemmPrecision prec) {
  if (G <= 0) return;
  cudaStream_t s = stream_of(ex);
  const int64_t rmax = max_group_rows(off, G);
  if (rmax == 0 || M == 0 || N == 0) return;
  const size_t bytes = gemm_scratch_bytes<T>(M, N, rmax, prec);
  void* ws = workspace(ex, bytes);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = off[g], rows = off[g + 1] - off[g];
    if (rows == 0) continue;
    gemm_on<T>(s, true, false, M, N, rows, T(1), A + r0 * M, B + r0 * N, T(1), C + g * M * N, prec,
               ws, bytes);
  }
}

MOETRON_OPS_GROUPED_GEMM(float)
MOETRON_OPS_GROUPED_GEMM(double)

}  // namespace moetron::kernels::gpu
