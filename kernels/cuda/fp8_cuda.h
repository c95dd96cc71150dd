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
#include <vector>

#include "kernels/op_types.h"

namespace moetron::kernels::gpu::fp8 {

// constexpr: usable in device code too (nvcc --expt-relaxed-constexpr)
constexpr int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// ---- quantiser and layouts (fp8_quant.cu) -------------------------------------------------------

// x [R,C] -> q [R,C], scales [ceil(R/t.rows), ceil(C/t.cols)] (cpu::quantize); lt: 1x128 tiles
// with R % 4 == 0 only, the scales also in cuBLASLt's layout (lt_vec_scales's, below), so that a
// GEMM of q needs no launch for it
void quantize(cudaStream_t st, const float* x, int64_t R, int64_t C, Tile t, bool pow2, uint8_t* q,
              float* scales, float* lt = nullptr);
// G matrices x [G,R,C] each quantised on its own (kernels/ops.h quantize_batched): one launch
void quantize_batched(cudaStream_t st, const float* x, int64_t G, int64_t R, int64_t C, Tile t,
                      bool pow2, uint8_t* q, float* scales, float* lt = nullptr);
// rows x[idx[r]] (idx[r] < 0: zeros) of x [*,C] -> q [R,C], scales [R, ceil(C/128)]
// (cpu::quantize_gathered)
void quantize_gathered(cudaStream_t st, const float* x, const int64_t* idx, int64_t R, int64_t C,
                       bool pow2, uint8_t* q, float* scales);
// x [R,C] -> qT [C,R], sT [C, ceil(R/128)] (cpu::quantize_128x1_t); lt as requantize's, below
void quantize_128x1_t(cudaStream_t st, const float* x, int64_t R, int64_t C, bool pow2, uint8_t* qT,
                      float* sT, float* lt = nullptr);
// q [R,C] 1x128 (s [R, ceil(C/128)]) -> qT [C,R], sT [C, ceil(R/128)]
// (cpu::requantize_1x128_to_128x1); lt (C % 4 == 0): sT also in cuBLASLt's layout of qT's 1x128
// tiles
void requantize_1x128_to_128x1(cudaStream_t st, const uint8_t* q, const float* s, int64_t R,
                               int64_t C, bool pow2, uint8_t* qT, float* sT, float* lt = nullptr);
// The 128x1 token-major tiles of G row groups (off: G + 1 host offsets from x's first row; the
// layout of kernels/ops.h's grouped_quantize_128x1_t) of fp32 x [off[G], C], or (x null) of the
// 1x128 FP8 q, s requantised: one launch per 64 groups with rows.
void grouped_128x1_t(cudaStream_t st, const float* x, const uint8_t* q, const float* s,
                     const int64_t* off, int64_t G, int64_t C, bool pow2, uint8_t* qT, float* sT);
// G matrices q [G,R,C] of 128x128 blocks (s [G, ceil(R/128), ceil(C/128)]) -> qT [G,C,R], sT
// [G, ceil(C/128), ceil(R/128)] (cpu::transpose_e4m3_blocks): two launches
void transpose_e4m3_blocks(cudaStream_t st, const uint8_t* q, const float* s, int64_t G, int64_t R,
                           int64_t C, uint8_t* qT, float* sT);

// ---- block-scaled GEMM core (fp8_gemm.cu) -------------------------------------------------------

// D [M,N] (+)= A [M,K] B [N,K]^T, A 1x128 (sA [M, ceil(K/128)]), B 128x128 or 1x128 (tB; sB
// [ceil(N/tB.rows), ceil(K/128)]): the promotion recipe (cpu::fp8_gemm_nt_blockwise up to fp32
// summation order). Scratch: nt_gemm_scratch_bytes(M, N, K, tB) bytes at `scratch`
// (256-aligned).
// `made`: the cuBLASLt layouts of A's and B's scales when the caller made them (a grouped op, for
// all its groups at once; below); null ones nt_gemm makes in its scratch.
struct LtScales {
  const float* a = nullptr;  // of A's scales (lt_vec_scales)
  const float* b = nullptr;  // of B's (lt_vec_scales or lt_blk_scales, as tB)
};
size_t nt_gemm_scratch_bytes(int64_t M, int64_t N, int64_t K, Tile tB);
void nt_gemm(cudaStream_t st, const uint8_t* A, const float* sA, const uint8_t* B, const float* sB,
             Tile tB, int64_t M, int64_t N, int64_t K, float* D, bool accumulate, void* scratch,
             LtScales made = {});

// cuBLASLt's scale layouts (its docs, "scaling factor layouts"): an operand [R, K] in 1x128 tiles
// wants [ceil(K/128), round_up(R, 4)] (rows contiguous), one in 128x128 blocks [ceil(R/128),
// round_up(ceil(K/128), 4)]; padding 1. Each operand's layout starts 256-byte aligned.
//   LtVecOperand  1x128 tiles: `rows` rows of K columns, our scales at s + src ([rows,
//                 ceil(K/128)]). lt_vec_offsets: where each operand's layout starts in `out`
//                 (floats), the total last. lt_vec_scales: all of them, one launch per 64.
//   lt_blk_scales G operands of RB x CB 128x128 blocks, operand g's scales at s + g RB CB ([RB,
//                 CB]), lt_blk_slot floats apart: one launch.
struct LtVecOperand {
  int64_t src, rows, K;
};
std::vector<int64_t> lt_vec_offsets(const std::vector<LtVecOperand>& ops);
void lt_vec_scales(cudaStream_t st, const float* s, const std::vector<LtVecOperand>& ops,
                   float* out);
int64_t lt_blk_slot(int64_t RB, int64_t CB);
void lt_blk_scales(cudaStream_t st, const float* s, int64_t G, int64_t RB, int64_t CB, float* out);

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
