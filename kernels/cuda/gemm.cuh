// The GEMM core of the CUDA backend, shared by gemm.cu (the op), grouped_gemm.cu (one GEMM per
// expert) and cross_entropy.cu (three GEMMs per vocabulary chunk).
//
// workspace(ex, bytes) hands out ONE region per stream and may move it when it grows, so an op
// that runs several GEMMs (or keeps its own buffers next to them) asks for the workspace once,
// carves it, and passes each GEMM its part explicitly: gemm_scratch_bytes says how much a GEMM
// needs, gemm_on runs it on a given stream with given scratch (never calling workspace itself).
#pragma once

#include <cublasLt.h>
#include <cuda_runtime_api.h>

#include <cstddef>
#include <cstdint>
#include <map>
#include <mutex>
#include <optional>
#include <vector>

#include "kernels/op_types.h"

namespace moetron::kernels::gpu {

// Scratch regions are carved at this alignment (cuBLASLt's preferred operand alignment).
inline constexpr size_t kScratchAlign = 256;
inline size_t scratch_align(size_t bytes) {
  return (bytes + kScratchAlign - 1) / kScratchAlign * kScratchAlign;
}

// Bytes of scratch gemm_on needs for a row-major C[M,N] = op(A)[M,K] op(B)[K,N] at `prec`:
// cuBLASLt's workspace plus, for BF16, rounded copies of A and B.
template <class T>
size_t gemm_scratch_bytes(int64_t M, int64_t N, int64_t K, GemmPrecision prec);

// C[M,N] = alpha op(A) op(B) + beta C on stream s (semantics of kernels::cpu::gemm), using
// scratch[0, scratch_bytes) (device memory, kScratchAlign-aligned, at least gemm_scratch_bytes).
template <class T>
void gemm_on(cudaStream_t s, bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha,
             const T* A, const T* B, T beta, T* C, GemmPrecision prec, void* scratch,
             size_t scratch_bytes);

// The process's cuBLASLt handle, shared by every GEMM of the backend (FP8 included) and every host
// thread (a cuBLASLt handle holds no stream or workspace: each call passes its own). Made on first
// use, never destroyed; throws when it cannot be made.
cublasLtHandle_t lt_handle();

// cuBLASLt's workspace, per GEMM (every GEMM of the backend, FP8 included).
inline constexpr size_t kLtWorkspaceBytes = size_t(32) << 20;

// cuBLASLt's heuristic: its best algorithm for op on the layouts a, b and c (C and D alike) within
// `workspace` bytes and the minimum alignments of its A, B and C=D. nullopt when there is none;
// *status then says whether that is an answer (SUCCESS: no algorithm; NOT_SUPPORTED) or a failure.
std::optional<cublasLtMatmulAlgo_t> lt_heuristic(cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t a,
                                                 cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                                                 uint32_t align_a, uint32_t align_b,
                                                 uint32_t align_c, uint64_t workspace,
                                                 cublasStatus_t* status);

// The heuristic's answers (an algorithm, or nullopt: none, the fallback runs) per Key (ordered by
// <), for the whole process and every thread. Bounded: a routed expert's row count changes step to
// step, so new keys never stop coming; when full it starts again.
template <class Key>
class LtAlgoCache {
 public:
  using Answer = std::optional<cublasLtMatmulAlgo_t>;
  // the answer for k, or nullopt when k was never asked
  std::optional<Answer> find(const Key& k) {
    std::lock_guard<std::mutex> lk(mu_);
    const auto it = answers_.find(k);
    return it == answers_.end() ? std::optional<Answer>() : std::optional<Answer>(it->second);
  }
  void put(const Key& k, Answer a) {
    std::lock_guard<std::mutex> lk(mu_);
    if (answers_.size() >= kMaxKeys) answers_.clear();
    answers_[k] = a;
  }

 private:
  static constexpr size_t kMaxKeys = 4096;
  std::mutex mu_;
  std::map<Key, Answer> answers_;
};

// The alignment cuBLASLt's heuristic is told of an operand (its MIN_ALIGNMENT preferences): the
// largest power of two dividing the address, capped at 16 bytes — what Hopper's kernels need
// (TMA, 128-bit loads). The cap makes a GEMM's plan, and so its bits, independent of where in a
// buffer its operands start (an expert's rows at any offset, a cached bf16 weight or a scratch
// copy of it); uncapped, a 256-aligned operand could pick another algorithm (another split-K).
inline uint32_t lt_alignment(const void* p) {
  const uintptr_t u = reinterpret_cast<uintptr_t>(p);
  uint32_t a = 16;
  while (a > 1 && u % a != 0) a /= 2;
  return a;
}

// The most rows of any of the G groups of a grouped op (off: host memory, checked by the
// dispatcher). The loop over groups runs on the host, each group its own GEMM with its own sizes.
int64_t max_group_rows(const int64_t* off, int64_t G);

// The same at BF16 with B already in bf16 (gemm_bf16_weight): scratch for cuBLASLt and A's copy.
size_t gemm_bf16_weight_scratch_bytes(int64_t M, int64_t K);
void gemm_bf16_weight_on(cudaStream_t s, bool transA, bool transB, int64_t M, int64_t N, int64_t K,
                         float alpha, const float* A, const uint16_t* B16, float beta, float* C,
                         void* scratch, size_t scratch_bytes);

}  // namespace moetron::kernels::gpu
