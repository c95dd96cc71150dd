// Internals of the CUDA FP8 recipe (kernels/cuda/fp8_quant.cu, fp8_gemm.cu, fp8_cublaslt.cpp),
// shared between those files and tests/test_cuda_fp8.cpp. The public ops are in ops_cuda.h; the
// semantics of everything here are those of the CPU functions of the same names in
// kernels/cpu/fp8.h (codes and scales bit for bit, NaN and inf inputs included).
//
// All functions enqueue on `st` and return at once; none allocates (scratch comes from the caller,
// which takes it from workspace(ex, bytes) once per op).
#pragma once

#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>

#include "kernels/op_types.h"

namespace moetron::kernels::gpu::fp8 {

// constexpr: usable in device code too (nvcc --expt-relaxed-constexpr)
constexpr int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- quantiser and layouts (fp8_quant.cu) -------------------------------------------------------

// x [R,C] -> q [R,C], scales [ceil(R/t.rows), ceil(C/t.cols)] (cpu::quantize)
void quantize(cudaStream_t st, const float* x, int64_t R, int64_t C, Tile t, bool pow2, uint8_t* q,
              float* scales);
// rows x[idx[r]] (idx[r] < 0: zeros) of x [*,C] -> q [R,C], scales [R, ceil(C/128)]
// (cpu::quantize_gathered)
void quantize_gathered(cudaStream_t st, const float* x, const int64_t* idx, int64_t R, int64_t C,
                       bool pow2, uint8_t* q, float* scales);
// x [R,C] -> qT [C,R], sT [C, ceil(R/128)] (cpu::quantize_128x1_t)
void quantize_128x1_t(cudaStream_t st, const float* x, int64_t R, int64_t C, bool pow2, uint8_t* qT,
                      float* sT);
// q [R,C] 1x128 (s [R, ceil(C/128)]) -> qT [C,R], sT [C, ceil(R/128)]
// (cpu::requantize_1x128_to_128x1)
void requantize_1x128_to_128x1(cudaStream_t st, const uint8_t* q, const float* s, int64_t R,
                               int64_t C, bool pow2, uint8_t* qT, float* sT);
// q [R,C] 128x128 (s [ceil(R/128), ceil(C/128)]) -> qT [C,R], sT = s^T (cpu::transpose_e4m3_blocks)
void transpose_e4m3_blocks(cudaStream_t st, const uint8_t* q, const float* s, int64_t R, int64_t C,
                           uint8_t* qT, float* sT);

// ---- block-scaled GEMM core (fp8_gemm.cu) -------------------------------------------------------

// D [M,N] (+)= A [M,K] B [N,K]^T, A 1x128 (sA [M, ceil(K/128)]), B 128x128 or 1x128 (tB; sB
// [ceil(N/tB.rows), ceil(K/128)]): the promotion recipe (cpu::fp8_gemm_nt_blockwise up to fp32
// summation order). Scratch: nt_gemm_scratch_bytes(M, N, K, tB) bytes at `scratch`
// (256-aligned).
size_t nt_gemm_scratch_bytes(int64_t M, int64_t N, int64_t K, Tile tB);
void nt_gemm(cudaStream_t st, const uint8_t* A, const float* sA, const uint8_t* B, const float* sB,
             Tile tB, int64_t M, int64_t N, int64_t K, float* D, bool accumulate, void* scratch);

// Which implementation nt_gemm uses, from the environment variable MOETRON_FP8_GEMM, read on every
// call: "kernel" = the plain CUDA kernel always; unset, empty or "cublaslt" = cuBLASLt's
// block-scaled GEMM when the shape, the alignment and its heuristic allow, else the kernel. Any
// other value is an error (std::invalid_argument).
enum class GemmPath { CublasLt, Kernel };
GemmPath gemm_path_from_env();

// How many nt_gemm calls ran on each implementation so far in this process (tests read it to
// know which path a result came from).
using GemmCounts = Fp8GemmPaths;
GemmCounts gemm_counts();

// ---- cuBLASLt (fp8_cublaslt.cpp) ----------------------------------------------------------------

// Column-major cuBLASLt terms, "TN": D (m x n, ld m, fp32) = A^T B (+ D when accumulate), A
// stored [m rows, k] with row stride k (each row k-contiguous), B stored [n rows, k] likewise.
// Scales in cuBLASLt's layouts (fp8_gemm.cu, lt_scales): A 128x128 blocks when a_blocks
// (BLK128x128_32F) else 1x128 (VEC128_32F); B always 1x128 (VEC128_32F). Returns false, having
// enqueued nothing, when cuBLASLt cannot run it (unsupported by the library, no algorithm from
// its heuristic, or cublasLtMatmul's NOT_SUPPORTED); the caller then runs the kernel.
bool cublaslt_gemm_tn(cudaStream_t st, const uint8_t* A, const float* a_scale, bool a_blocks,
                      const uint8_t* B, const float* b_scale, int64_t m, int64_t n, int64_t k,
                      float* D, bool accumulate, void* workspace, size_t workspace_bytes);

}  // namespace moetron::kernels::gpu::fp8
