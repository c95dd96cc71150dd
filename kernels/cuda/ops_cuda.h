// The CUDA backend: one implementation per op of kernels/ops.h, the same signatures (the
// execution context first: its stream, its workspace), in namespace kernels::gpu. The dispatcher
// (kernels/dispatch.cpp) calls these for Device::CUDA; tests/test_cuda_*.cpp run each against its
// CPU twin (kernels/cpu/ops_cpu.h, where the semantics of every op are written). Pointers are
// device memory unless ops.h says host. Per-element math comes from kernels/scalar.h, compiled for
// the device, so the CPU tests cover the arithmetic the GPU runs.
//
// Files: runtime (streams, allocator), memory.cu, elementwise.cu, norm_rope.cu, ... one family of
// ops per file, as in kernels/cpu/.
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cuda/runtime.h"
#include "kernels/exec.h"
#include "kernels/op_types.h"

namespace moetron::kernels::gpu {

// ---- memory between host and device ----------------------------------------------------------
// dst (device) <- src (host), and dst (host) <- src (device); synchronous.
void copy_from_host(const Exec& ex, void* dst, const void* host_src, size_t bytes);
void copy_to_host(const Exec& ex, void* host_dst, const void* src, size_t bytes);

// dst <- src, both on ex.device; p[0, bytes) = 0
void copy(const Exec& ex, void* dst, const void* src, size_t bytes);
void fill_zero(const Exec& ex, void* p, size_t bytes);

// ---- GEMM ------------------------------------------------------------------------------------
template <class T>
void gemm(const Exec& ex, bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha,
          const T* A, const T* B, T beta, T* C, GemmPrecision prec, bool dynamic);

template <class T>
void grouped_gemm(const Exec& ex, const int64_t* off, int64_t G, bool transW, int64_t N, int64_t K,
                  const T* A, const T* W, T* C, GemmPrecision prec);
template <class T>
void grouped_gemm_wgrad(const Exec& ex, const int64_t* off, int64_t G, int64_t M, int64_t N,
                        const T* A, const T* B, T* C, GemmPrecision prec);
void grouped_fp8_fprop(const Exec& ex, const int64_t* off, int64_t G, const uint8_t* qX,
                       const float* sX, const uint8_t* qW, const float* sW, int64_t N, int64_t K,
                       float* Y);
void grouped_fp8_linear_dgrad(const Exec& ex, const int64_t* off, int64_t G, const float* dY,
                              int64_t N, int64_t K, const uint8_t* qW, const float* sW, bool pow2,
                              bool blocks128, float* dX);
void grouped_fp8_linear_wgrad(const Exec& ex, const int64_t* off, int64_t G, const float* dY,
                              const uint8_t* qX, const float* sX, int64_t N, int64_t K,
                              bool pow2_dy, bool pow2_x, float* dW);
void grouped_fp8_linear_wgrad_f32(const Exec& ex, const int64_t* off, int64_t G, const float* dY,
                                  const float* X, int64_t N, int64_t K, bool pow2_dy, bool pow2_x,
                                  float* dW);

// ---- elementwise and layout ------------------------------------------------------------------
template <class T>
void add_inplace(const Exec& ex, T* y, const T* x, int64_t n);  // y += x
template <class T>
void axpy(const Exec& ex, T* y, T a, const T* x, int64_t n);                   // y += a x
void narrow_to_bf16(const Exec& ex, const float* x, int64_t n, uint16_t* y);   // y = bf16(x), RNE
void widen_from_bf16(const Exec& ex, const uint16_t* x, int64_t n, float* y);  // y = x (exact)
template <class T>
void copy_2d(const Exec& ex, const T* src, int64_t src_ld, T* dst, int64_t dst_ld, int64_t rows,
             int64_t cols, int64_t repeat, bool accumulate);
template <class T>
void sum_row_groups(const Exec& ex, const T* src, int64_t src_ld, T* dst, int64_t dst_ld,
                    int64_t rows, int64_t cols, int64_t group);

// ---- tokens ----------------------------------------------------------------------------------
void shift_tokens(const Exec& ex, const int32_t* tokens, int64_t B, int64_t S, int64_t shift,
                  int32_t* ids, int32_t* targets, int32_t* pos);

// ---- embedding -------------------------------------------------------------------------------
template <class T>
void embedding_forward(const Exec& ex, const int32_t* ids, int64_t N, const T* table, int64_t D,
                       T* out);
template <class T>
void embedding_backward(const Exec& ex, const int32_t* ids, int64_t N, const T* dout, int64_t D,
                        T* dtable);

// ---- RMSNorm ---------------------------------------------------------------------------------
template <class T>
void rmsnorm_forward(const Exec& ex, const T* x, const T* w, int64_t N, int64_t D, T eps, T* y,
                     T* rstd);
template <class T>
void rmsnorm_backward_input(const Exec& ex, const T* dy, const T* x, const T* w, const T* rstd,
                            int64_t N, int64_t D, T* dx);
template <class T>
void rmsnorm_backward_weight(const Exec& ex, const T* dy, const T* x, const T* rstd, int64_t N,
                             int64_t D, T* dw);

// ---- RoPE (interleaved pairs (2i, 2i+1), as DeepSeek-V3) -------------------------------------
template <class T>
void rope_apply(const Exec& ex, T* x, int64_t nvec, int64_t stride, int64_t vecs_per_pos,
                const int32_t* pos, const double* freqs, int64_t dim, bool inverse);

// ---- causal attention ------------------------------------------------------------------------
template <class T>
void attention_forward(const Exec& ex, const T* q, const T* k, const T* v, int64_t B, int64_t S,
                       int64_t H, int64_t Dqk, int64_t Dv, T scale, T* o, T* lse);
template <class T>
void attention_backward(const Exec& ex, const T* dout, const T* q, const T* k, const T* v,
                        const T* o, const T* lse, int64_t B, int64_t S, int64_t H, int64_t Dqk,
                        int64_t Dv, T scale, T* dq, T* dk, T* dv);

// ---- attention over a latent cache (MLA decoding) --------------------------------------------
template <class T>
void latent_attention_forward(const Exec& ex, const T* q, const T* kv, int64_t M, int64_t past,
                              int64_t H, int64_t Dk, int64_t Dv, T scale, T* o);

// ---- SwiGLU ----------------------------------------------------------------------------------
template <class T>
void swiglu_forward(const Exec& ex, const T* gu, int64_t N, int64_t F, const T* row_scale, T* out);
template <class T>
void swiglu_backward(const Exec& ex, const T* dout, const T* gu, int64_t N, int64_t F,
                     const T* row_scale, T* dgu, T* drow_scale);

// ---- MoE gate (sigmoid, bias for selection only, group-limited top-k) --------------------------
template <class T>
void gate_forward(const Exec& ex, const T* logits, const T* bias, int64_t N, const GateParams& p,
                  T* scores, int32_t* idx, T* weights);
template <class T>
void gate_backward(const Exec& ex, const T* dweights, const T* scores, const int32_t* idx,
                   const T* weights, int64_t N, const GateParams& p, T* dlogits);

// ---- MoE balancing ---------------------------------------------------------------------------
template <class T>
void seq_balance_loss_forward(const Exec& ex, const T* scores, int64_t B, int64_t S, int64_t E,
                              int64_t K, double alpha, T* f, double* loss);
template <class T>
void seq_balance_loss_backward(const Exec& ex, const T* scores, const T* f, int64_t B, int64_t S,
                               int64_t E, double c, T* dlogits);
void expert_histogram(const Exec& ex, const int32_t* idx, int64_t n, int64_t E, int64_t* load,
                      bool accumulate);
template <class T>
void bias_sign_update(const Exec& ex, T* bias, const int64_t* load, int64_t E, double gamma);

// ---- token permutation by expert -------------------------------------------------------------
void route_by_expert(const Exec& ex, const int32_t* idx, int64_t N, int64_t K, int64_t E,
                     int64_t* counts, int64_t* offsets, int64_t* slot, int64_t* row_token,
                     int64_t* row_slot);
template <class T>
void gather_rows(const Exec& ex, const T* src, const int64_t* idx, int64_t n, int64_t D, T* dst);
template <class T>
void unpermute_add(const Exec& ex, const T* rows, const int64_t* slot, int64_t N, int64_t K,
                   int64_t D, T* out);

// ---- fused output head + cross-entropy, chunked over the vocabulary --------------------------
template <class T>
void lm_head_ce_forward(const Exec& ex, const T* h, const T* W, const int32_t* target, int64_t N,
                        int64_t D, int64_t V, int64_t chunk, T* lse, GemmPrecision prec,
                        double* loss_sum);
template <class T>
void lm_head_ce_backward(const Exec& ex, const T* h, const T* W, const int32_t* target,
                         const T* lse, T g, int64_t N, int64_t D, int64_t V, int64_t chunk, T* dh,
                         T* dW, GemmPrecision prec);

// ---- AdamW -----------------------------------------------------------------------------------
template <class M>
void adamw_update(const Exec& ex, float* param, const float* grad, M* m, M* v, int64_t n,
                  const AdamWParams& p);

// ---- FP8 (kernels/cpu/fp8.h: tiles, layouts and the recipe) -----------------------------------
void quantize(const Exec& ex, const float* x, int64_t R, int64_t C, Tile t, bool pow2, uint8_t* q,
              float* scales);
void dequantize(const Exec& ex, const uint8_t* q, const float* scales, int64_t R, int64_t C, Tile t,
                float* x);
void fp8_fprop(const Exec& ex, const uint8_t* qX, const float* sX, const uint8_t* qW,
               const float* sW, int64_t M, int64_t N, int64_t K, float* Y);
void fp8_linear_dgrad(const Exec& ex, const float* dY, int64_t M, int64_t N, int64_t K,
                      const uint8_t* qW, const float* sW, bool pow2, bool blocks128, float* dX,
                      bool accumulate);
void fp8_linear_wgrad(const Exec& ex, const float* dY, const uint8_t* qX, const float* sX,
                      int64_t M, int64_t N, int64_t K, bool pow2_dy, bool pow2_x, float* dW);
void fp8_linear_wgrad_f32(const Exec& ex, const float* dY, const float* X, int64_t M, int64_t N,
                          int64_t K, bool pow2_dy, bool pow2_x, float* dW);

// ---- expert-parallel wire (kernels/cpu/ops_cpu.h for the semantics) --------------------------
// All pointers on ex.device (node_of_peer too); the plan's counts come back to the host with
// copy_to_host for the all-to-all's sizes.
void ep_dispatch_plan(const Exec& ex, const int32_t* idx, int64_t N, int64_t K, int64_t El,
                      int64_t P, const int32_t* node_of_peer, int64_t* counts, int64_t* slot,
                      int64_t* send_token);
template <class T>
void ep_encode_rows(const Exec& ex, RowEncoding e, const T* src, const int64_t* rows, int64_t n,
                    int64_t D, uint8_t* wire, int64_t stride);
template <class T>
void ep_decode_rows(const Exec& ex, RowEncoding e, const uint8_t* wire, int64_t stride, int64_t n,
                    int64_t D, T* dst);
template <class T>
void ep_decode_add_rows(const Exec& ex, RowEncoding e, const uint8_t* wire, int64_t stride,
                        const int64_t* slot, int64_t N, int64_t P, int64_t D, T* out);
template <class T>
void ep_pack_routes(const Exec& ex, const int32_t* idx, const T* w, const int64_t* slot, int64_t N,
                    int64_t K, int64_t P, int64_t El, uint8_t* wire, int64_t stride);
template <class T>
void ep_unpack_routes(const Exec& ex, const uint8_t* wire, int64_t stride, int64_t R, int64_t K,
                      int32_t* ridx, T* rw);

}  // namespace moetron::kernels::gpu
