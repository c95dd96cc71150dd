// cuBLASLt's block-scaled FP8 GEMM (cuBLAS >= 12.9, Hopper): the host calls behind
// fp8::cublaslt_gemm_tn (kernels/cuda/fp8_cuda.h; the layouts and the fallback rules are at the
// top of kernels/cuda/fp8_gemm.cu).
//
//   D (m x n, column-major, ld m, fp32) = A^T B (+ D), A: k x m column-major (= [m,k] row-major,
//   k contiguous, ld k) with TRANSA = T, B: k x n column-major (= [n,k] row-major) with TRANSB = N
//   ("TN", the only FP8 layout Hopper's cuBLASLt runs). Compute and scale type fp32; fast
//   accumulation off, so each 128-K block's partial is promoted with its scales into fp32.
//   Scale modes: A CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F (a weight's 128x128 blocks) or
//   VEC128_32F; B VEC128_32F (1x128 tiles along k). 2D x 2D is not supported by cuBLASLt and
//   never asked for.
//
// Descriptors are made per call (their scale pointers change with each call); the heuristic's
// answer, an algorithm or none, is cached per shape, scale mode and alignments, through the same
// query and bounded cache as the BF16/FP32 GEMMs' (kernels/cuda/gemm.cuh: lt_heuristic,
// LtAlgoCache): the routed experts make thousands of these calls a step, and a heuristic query
// costs tens of microseconds of host time.
// The handle is the backend's one (kernels/cuda/gemm.cuh: lt_handle), which throws when it cannot
// be made rather than quietly sending every FP8 GEMM to the fallback kernel.
#include <cublasLt.h>

#include <cstdint>
#include <cstdio>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <tuple>

#include "kernels/cuda/cublaslt_api.h"
#include "kernels/cuda/fp8_cuda.h"
#include "kernels/cuda/gemm.cuh"

namespace moetron::kernels::gpu::fp8 {

namespace {

// Owners of the descriptors, so that every early return frees them.
struct MatmulDesc {
  cublasLtMatmulDesc_t d = nullptr;
  ~MatmulDesc() {
    if (d) cublaslt().MatmulDescDestroy(d);
  }
};
struct MatrixLayout {
  cublasLtMatrixLayout_t d = nullptr;
  ~MatrixLayout() {
    if (d) cublaslt().MatrixLayoutDestroy(d);
  }
};

bool ok(cublasStatus_t s) { return s == CUBLAS_STATUS_SUCCESS; }

template <class V>
bool set(cublasLtMatmulDesc_t d, cublasLtMatmulDescAttributes_t a, const V& v) {
  return ok(cublaslt().MatmulDescSetAttribute(d, a, &v, sizeof(v)));
}

// What the heuristic's choice depends on: m, n, k, A's scale mode, the alignments of A, B and D,
// the workspace it may use; and whether the call accumulates (beta 1), which the heuristic does not
// see but cublasLtMatmul may refuse.
using AlgoKey =
    std::tuple<int64_t, int64_t, int64_t, bool, uint32_t, uint32_t, uint32_t, uint64_t, bool>;

LtAlgoCache<AlgoKey>& algo_cache() {
  static auto& c = *new LtAlgoCache<AlgoKey>;  // never destroyed (plain data; see lt_handle)
  return c;
}

// The heuristic's best algorithm for the key (nullopt: none, or the query failed: the caller
// falls back), asked once.
std::optional<cublasLtMatmulAlgo_t> find_algo(const AlgoKey& key, const MatmulDesc& op,
                                              const MatrixLayout& la, const MatrixLayout& lb,
                                              const MatrixLayout& ld) {
  if (const auto hit = algo_cache().find(key)) return *hit;
  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;  // any failure: the kernel runs it, as with none
  const std::optional<cublasLtMatmulAlgo_t> algo =
      lt_heuristic(op.d, la.d, lb.d, ld.d, std::get<4>(key), std::get<5>(key), std::get<6>(key),
                   std::get<7>(key), &st);
  algo_cache().put(key, algo);
  return algo;
}

// cublasLtMatmul refused the heuristic's algorithm at validation (nothing was enqueued): this
// configuration falls back to the kernel from now on, said once per process.
void refuse(const AlgoKey& key, cublasStatus_t s) {
  algo_cache().put(key, std::nullopt);
  static std::once_flag said;
  std::call_once(said, [&] {
    std::fprintf(stderr,
                 "moetron: cuBLASLt refused a block-scaled FP8 GEMM %lldx%lldx%lld (%s, %s): "
                 "the FP8 kernel runs it instead (reported once)\n",
                 static_cast<long long>(std::get<0>(key)), static_cast<long long>(std::get<1>(key)),
                 static_cast<long long>(std::get<2>(key)),
                 std::get<8>(key) ? "accumulating" : "beta 0", cublaslt().GetStatusString(s));
  });
}

}  // namespace

bool cublaslt_gemm_tn(cudaStream_t st, const uint8_t* A, const float* a_scale, bool a_blocks,
                      const uint8_t* B, const float* b_scale, int64_t m, int64_t n, int64_t k,
                      float* D, bool accumulate, void* workspace, size_t workspace_bytes) {
  if (cublaslt().GetVersion() < 120900) return false;  // block scaling arrived in cuBLAS 12.9
  cublasLtHandle_t h = lt_handle();

  MatmulDesc op;
  if (!ok(cublaslt().MatmulDescCreate(&op.d, CUBLAS_COMPUTE_32F, CUDA_R_32F))) return false;
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  const int8_t fast_accum = 0;
  const int32_t a_mode = a_blocks ? CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F
                                  : CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
  const int32_t b_mode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
  const void* a_scale_ptr = a_scale;
  const void* b_scale_ptr = b_scale;
  if (!set(op.d, CUBLASLT_MATMUL_DESC_TRANSA, ta) || !set(op.d, CUBLASLT_MATMUL_DESC_TRANSB, tb) ||
      !set(op.d, CUBLASLT_MATMUL_DESC_FAST_ACCUM, fast_accum) ||
      !set(op.d, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, a_mode) ||
      !set(op.d, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, b_mode) ||
      !set(op.d, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, a_scale_ptr) ||
      !set(op.d, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, b_scale_ptr))
    return false;

  MatrixLayout la, lb, ld;
  if (!ok(cublaslt().MatrixLayoutCreate(&la.d, CUDA_R_8F_E4M3, static_cast<uint64_t>(k),
                                        static_cast<uint64_t>(m), k)) ||
      !ok(cublaslt().MatrixLayoutCreate(&lb.d, CUDA_R_8F_E4M3, static_cast<uint64_t>(k),
                                        static_cast<uint64_t>(n), k)) ||
      !ok(cublaslt().MatrixLayoutCreate(&ld.d, CUDA_R_32F, static_cast<uint64_t>(m),
                                        static_cast<uint64_t>(n), m)))
    return false;

  const uint32_t al_a = lt_alignment(A), al_b = lt_alignment(B), al_d = lt_alignment(D);
  const AlgoKey key{m, n, k, a_blocks, al_a, al_b, al_d, workspace_bytes, accumulate};
  const std::optional<cublasLtMatmulAlgo_t> algo = find_algo(key, op, la, lb, ld);
  if (!algo) return false;

  const float alpha = 1.f, beta = accumulate ? 1.f : 0.f;
  const cublasStatus_t s = cublaslt().Matmul(h, op.d, &alpha, A, la.d, B, lb.d, &beta, D, ld.d, D,
                                             ld.d, &*algo, workspace, workspace_bytes, st);
  // NOT_SUPPORTED is a refusal at validation, before anything is enqueued: the kernel runs it.
  // Any other failure after a successful heuristic is unexpected, and the GEMM may have been
  // partly enqueued (an accumulating fallback would then add twice): an error, not a fallback.
  // MOETRON_FP8_GEMM=kernel runs without cuBLASLt.
  if (s == CUBLAS_STATUS_NOT_SUPPORTED) {
    refuse(key, s);
    return false;
  }
  if (!ok(s))
    throw std::runtime_error(std::string("cublasLtMatmul (block-scaled FP8): ") +
                             cublaslt().GetStatusString(s) +
                             " (MOETRON_FP8_GEMM=kernel avoids it)");
  return true;
}

}  // namespace moetron::kernels::gpu::fp8
