// The CPU backend: one implementation per op of kernels/ops.h, the same signature without the
// execution context (OpenMP threads, oneDNN/OpenBLAS GEMMs, AVX-512 FP8 loops). The dispatcher
// (kernels/dispatch.cpp) calls these for the CPU and Guard devices; kernel tests call them
// directly as the reference twins of other backends. FP8 declarations: kernels/cpu/fp8.h.
//
// Conventions (llm.c style): row-major, contiguous, raw pointers plus sizes. T is float (training)
// or double (gradient checks against finite differences). "Accumulate" means the op adds into its
// output (+=); otherwise it writes. Shapes: N rows/tokens, D width, V vocab, H heads, S sequence,
// E experts, K top-k, G groups (experts of a grouped GEMM).
#pragma once

#include <cstddef>
#include <cstdint>

#include "kernels/cpu/fp8.h"
#include "kernels/op_types.h"

namespace moetron::kernels::cpu {

// The parameter types, so that kernels::cpu names a complete backend.
using kernels::AdamWParams;
using kernels::Fp8Gemm;
using kernels::GateParams;
using kernels::GemmPrecision;
using kernels::kTile128x1;
using kernels::kTile128x128;
using kernels::kTile1x128;
using kernels::RopeParams;
using kernels::Tile;

// ---- memory ----------------------------------------------------------------------------------
void fill_zero(void* p, size_t bytes);
void copy(void* dst, const void* src, size_t bytes);  // also host<->device on the CPU

// ---- GEMM ------------------------------------------------------------------------------------
// C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C.  op(X) = X or X^T.
// A is [M,K] (or [K,M] if transA); B is [K,N] (or [N,K] if transB); all contiguous.
// dynamic: the sizes change from call to call (routed experts: rows per expert vary every step),
// so the backend should not specialise a kernel per shape (oneDNN: one runtime-shape primitive
// instead of a JIT compile for every new size).
template <class T>
void gemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          const T* B, T beta, T* C, GemmPrecision prec = GemmPrecision::FP32, bool dynamic = false);

// Grouped GEMM over G row groups (the routed experts): group g owns rows [off[g], off[g+1]) of
// A and C. Forward/input-gradient form: C_g[rows, N] = A_g[rows, K] op(W_g), W_g = W + g*N*K
// ([N,K] with transW, else [K,N]). One group per thread (the experts' GEMMs are small, so running
// them side by side beats splitting each over the threads).
template <class T>
void grouped_gemm(const int64_t* off, int64_t G, bool transW, int64_t N, int64_t K, const T* A,
                  const T* W, T* C, GemmPrecision prec);
// gemm and grouped_gemm at BF16 with the weight operand already in bf16 (op_signatures.inc):
// A is converted as gemm converts it and the same oneDNN primitive runs, so the bits are gemm's.
void gemm_bf16_weight(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                      const float* A, const uint16_t* W16, float beta, float* C,
                      bool dynamic = false);
void grouped_gemm_bf16_weight(const int64_t* off, int64_t G, bool transW, int64_t N, int64_t K,
                              const float* A, const uint16_t* W16, float* C);
// Weight-gradient form: C_g[M, N] += A_g[rows, M]^T B_g[rows, N], C_g = C + g*M*N.
template <class T>
void grouped_gemm_wgrad(const int64_t* off, int64_t G, int64_t M, int64_t N, const T* A, const T* B,
                        T* C, GemmPrecision prec);
// The FP8 Linear GEMMs per group (kernels/cpu/fp8.h for the layouts): weights of group g at
// qW + g*N*K, sW + g*ceil(N/128)*ceil(K/128). X/dY/Y/dX rows grouped as above.
void grouped_fp8_fprop(const int64_t* off, int64_t G, const uint8_t* qX, const float* sX,
                       const uint8_t* qW, const float* sW, int64_t N, int64_t K, float* Y);
// Dgrad reads the weights transposed: group g's W^T [K,N] at qWt + g*K*N, sWt + g*ceil(K/128)*
// ceil(N/128) (transpose_e4m3_blocks below).
void grouped_fp8_linear_dgrad(const int64_t* off, int64_t G, const float* dY, int64_t N, int64_t K,
                              const uint8_t* qWt, const float* sWt, bool pow2, bool blocks128,
                              float* dX);
// G matrices of 128x128 blocks at once (kernels/cpu/fp8.h's transpose_e4m3_blocks per matrix).
void transpose_e4m3_blocks(const uint8_t* q, const float* s, int64_t G, int64_t R, int64_t C,
                           uint8_t* qT, float* sT);
// G matrices x [G,R,C] each quantised on its own (kernels/cpu/fp8.h's quantize per matrix).
void quantize_batched(const float* x, int64_t G, int64_t R, int64_t C, Tile t, bool pow2,
                      uint8_t* q, float* scales);
// The weight gradients from dY quantised per group by grouped_quantize_128x1_t (kernels/ops.h).
void grouped_fp8_linear_wgrad(const int64_t* off, int64_t G, const uint8_t* qdYt, const float* sdYt,
                              const uint8_t* qX, const float* sX, int64_t N, int64_t K, bool pow2_x,
                              float* dW);
void grouped_fp8_linear_wgrad_f32(const int64_t* off, int64_t G, const uint8_t* qdYt,
                                  const float* sdYt, const float* X, int64_t N, int64_t K,
                                  bool pow2_x, float* dW);
// x [rows, C] of each group as Wgrad's token-major 128x1 tiles (the layout of kernels/ops.h)
void grouped_quantize_128x1_t(const int64_t* off, int64_t G, const float* x, int64_t C, bool pow2,
                              uint8_t* qT, float* sT);

// ---- elementwise and layout ------------------------------------------------------------------
template <class T>
void add_inplace(T* y, const T* x, int64_t n);  // y += x
template <class T>
void axpy(T* y, T a, const T* x, int64_t n);  // y += a x
// y[n] = x[n] rounded to bf16 (nearest even; bit patterns) and back (exact): activations kept
// for the backward in bf16 (PrecisionPolicy::store_bf16) and bf16 gradient reduction.
void narrow_to_bf16(const float* x, int64_t n, uint16_t* y);
void widen_from_bf16(const uint16_t* x, int64_t n, float* y);
void narrow_to_e5m6(const float* x, int64_t n, uint8_t* y);
void widen_from_e5m6(const uint8_t* x, int64_t n, float* y);
// dst[r, 0:cols] (+)= src[r / repeat, 0:cols] for r < rows; rows strided by src_ld / dst_ld
// elements. Column split and concat (pointer offsets select the columns), and broadcast of one
// row to `repeat` rows (MLA's shared RoPE key to every head).
template <class T>
void copy_2d(const T* src, int64_t src_ld, T* dst, int64_t dst_ld, int64_t rows, int64_t cols,
             int64_t repeat, bool accumulate);
// dst[r, 0:cols] = sum_{g < group} src[r*group + g, 0:cols], summed in g order (the backward of
// copy_2d's broadcast).
template <class T>
void sum_row_groups(const T* src, int64_t src_ld, T* dst, int64_t dst_ld, int64_t rows,
                    int64_t cols, int64_t group);

// ---- tokens ----------------------------------------------------------------------------------
// From tokens [B, S+1]: ids[b,s] = tokens[b, s+shift] (0 past the end), targets[b,s] =
// tokens[b, s+shift+1] (-1 past the end: ignored by the loss), pos[b,s] = s (pos may be null).
// shift 0: the model's inputs; shift k: MTP depth k's.
void shift_tokens(const int32_t* tokens, int64_t B, int64_t S, int64_t shift, int32_t* ids,
                  int32_t* targets, int32_t* pos);

// ---- embedding -------------------------------------------------------------------------------
// out[N,D] = table[ids[n], :]
template <class T>
void embedding_forward(const int32_t* ids, int64_t N, const T* table, int64_t D, T* out);
// dtable[ids[n], :] += dout[n, :]   (accumulate)
template <class T>
void embedding_backward(const int32_t* ids, int64_t N, const T* dout, int64_t D, T* dtable);

// ---- RMSNorm ---------------------------------------------------------------------------------
// y[N,D] = x / sqrt(mean(x^2) + eps) * w;  rstd[N] saved for the backward.
template <class T>
void rmsnorm_forward(const T* x, const T* w, int64_t N, int64_t D, T eps, T* y, T* rstd);
// dx[N,D] (write) from dy, x, w, rstd.
template <class T>
void rmsnorm_backward_input(const T* dy, const T* x, const T* w, const T* rstd, int64_t N,
                            int64_t D, T* dx);
// dw[D] += sum_n dy * x * rstd   (accumulate)
template <class T>
void rmsnorm_backward_weight(const T* dy, const T* x, const T* rstd, int64_t N, int64_t D, T* dw);

// ---- RoPE (interleaved pairs (2i, 2i+1), as DeepSeek-V3) -------------------------------------
// Rotates, in place, `nvec` vectors of `dim` values each (freqs [dim/2]): vector v lives at
// x + v*stride and belongs to position pos[v / vecs_per_pos]. inverse: rotates by -angle (the
// backward).
template <class T>
void rope_apply(T* x, int64_t nvec, int64_t stride, int64_t vecs_per_pos, const int32_t* pos,
                const double* freqs, int64_t dim, bool inverse);

// ---- causal attention ------------------------------------------------------------------------
// Per batch b and head h: o = softmax(q k^T * scale + causal) v. Layout:
//   q, k [B, S, H, Dqk]; v, o [B, S, H, Dv]; lse [B, H, S] (log-sum-exp of scaled scores, saved).
// Computed in tiles with an online softmax: no [S,S] score matrix per head is ever stored.
// prec BF16: every product's operands rounded to bf16 (attention.cpp), fp32 softmax.
template <class T>
void attention_forward(const T* q, const T* k, const T* v, int64_t B, int64_t S, int64_t H,
                       int64_t Dqk, int64_t Dv, T scale, T* o, T* lse,
                       GemmPrecision prec = GemmPrecision::FP32);
// dq, dk, dv (write) from do, recomputing scores tile by tile from q, k, v, o, lse.
template <class T>
void attention_backward(const T* dout, const T* q, const T* k, const T* v, const T* o, const T* lse,
                        int64_t B, int64_t S, int64_t H, int64_t Dqk, int64_t Dv, T scale, T* dq,
                        T* dk, T* dv, GemmPrecision prec = GemmPrecision::FP32);

// ---- attention over a latent cache (MLA decoding, model/decode.h) ---------------------------
// M new tokens over a cache kv [past + M, Dk] of one key per position shared by all H heads,
// whose first Dv values are also its value: o[m, h] = softmax_t(scale q[m, h] . kv[t]) kv[t, :Dv]
// over the rows t <= past + m (token m is at position past + m: causal among the new tokens).
// q [M, H, Dk], o [M, H, Dv].
template <class T>
void latent_attention_forward(const T* q, const T* kv, int64_t M, int64_t past, int64_t H,
                              int64_t Dk, int64_t Dv, T scale, T* o);

// ---- SwiGLU ----------------------------------------------------------------------------------
// gu [N, 2F] holds [gate(F) | up(F)] per row; out[N,F] = silu(gate) * up * (row_scale ? s[n] : 1)
template <class T>
void swiglu_forward(const T* gu, int64_t N, int64_t F, const T* row_scale, T* out);
// dgu[N,2F] (write); if row_scale: drow_scale[N] (write) = sum_f dout * silu(g) * u.
template <class T>
void swiglu_backward(const T* dout, const T* gu, int64_t N, int64_t F, const T* row_scale, T* dgu,
                     T* drow_scale);

// ---- MoE gate (sigmoid, bias for selection only, group-limited top-k) --------------------------
// logits[N,E] -> scores[N,E] = sigmoid(logits) (saved); selection on scores + bias with
// group-limited routing (group score = sum of the top (topk/topk_group) biased scores, keep
// topk_group groups), then top-k; weights[N,K] = scores[idx] / sum * route_scale; idx[N,K].
// Ties break to the lower expert index. The bias is read as T (the parameter's type).
template <class T>
void gate_forward(const T* logits, const T* bias, int64_t N, const GateParams& p, T* scores,
                  int32_t* idx, T* weights);
// dlogits[N,E] (write) from dweights[N,K] through the normalisation and the sigmoid.
template <class T>
void gate_backward(const T* dweights, const T* scores, const int32_t* idx, const T* weights,
                   int64_t N, const GateParams& p, T* dlogits);

// ---- MoE balancing ---------------------------------------------------------------------------
// Sequence-wise balance loss (SPEC §1.4) over B sequences of S positions, scores [B*S, E], of
// which the first V <= S of each sequence count (the rest have no target: MTP depth k runs on
// V = S - k positions, SPEC §1.5; V = S elsewhere):
// f[b,i] = E/(K V) * #{t < V : i in plain top-K of s_t} (top-K of the unbiased scores, no groups),
// P[b,i] = mean_{t<V} s_it / sum_j s_jt;  loss[0] = alpha * mean_b sum_i f[b,i] P[b,i] (double).
// V == 0: f = 0 and the loss is 0.
template <class T>
void seq_balance_loss_forward(const T* scores, int64_t B, int64_t S, int64_t V, int64_t E,
                              int64_t K, double alpha, T* f, double* loss);
// dlogits[n,E] += c (f_i / Z_t - sum_j f_j s_jt / Z_t^2) s_it (1 - s_it) for the positions t < V
// of each sequence (through the sigmoid); the others are left as they are
template <class T>
void seq_balance_loss_backward(const T* scores, const T* f, int64_t B, int64_t S, int64_t V,
                               int64_t E, double c, T* dlogits);
// load[e] (+)= #{i < n : idx[i] == e and i % period < valid} (accumulate: adds to load). With
// idx [B*S, K]: period = S K, valid = V K counts the first V positions of each sequence.
void expert_histogram(const int32_t* idx, int64_t n, int64_t period, int64_t valid, int64_t E,
                      int64_t* load, bool accumulate);
// Auxiliary-loss-free bias update: b_i += gamma * sign(mean(load) - load_i)
template <class T>
void bias_sign_update(T* bias, const int64_t* load, int64_t E, double gamma);

// ---- token permutation by expert -------------------------------------------------------------
// From idx[N,K]: counts[E], offsets[E+1] (exclusive prefix of the counts, each rounded up to a
// multiple of align >= 1), and for each of the N*K assignments its row in the expert-sorted
// order: slot[n*K+k] = row. idx = -1 marks a slot whose expert is in another process (expert
// parallelism): it gets no row and slot -1. Stable: within an expert, rows follow (n, k) order.
// row_token[row] = n, row_slot[row] = n*K+k; an expert's align padding rows (after its own) have
// -1 in both. offsets[E] <= N*K + E*(align-1) rows. align 16 makes every expert's row count and
// first row a multiple of 16: what cuBLASLt's FP8 GEMMs need (kernels/cuda/fp8_gemm.cu).
void route_by_expert(const int32_t* idx, int64_t N, int64_t K, int64_t E, int64_t align,
                     int64_t* counts, int64_t* offsets, int64_t* slot, int64_t* row_token,
                     int64_t* row_slot);
// dst[i, :] = idx[i] >= 0 ? src[idx[i], :] : 0, i < n, rows of D (dispatch into expert order)
template <class T>
void gather_rows(const T* src, const int64_t* idx, int64_t n, int64_t D, T* dst);
// out[n, :] += sum_k rows[slot[n*K + k], :] over slot >= 0, in k order (combine; the backward of
// gather_rows by row_token)
template <class T>
void unpermute_add(const T* rows, const int64_t* slot, int64_t N, int64_t K, int64_t D, T* out);

// ---- fused output head + cross-entropy, chunked over the vocabulary --------------------------
// logits = h[N,D] W[V,D]^T are produced one [N, chunk] block at a time; never all at once.
// loss[n] = lse_n - logit[n, target[n]] for target >= 0; targets < 0 are ignored (loss 0).
// lse[N] saved. loss_sum[0] (double) = the sum of losses over valid rows.
// W16: optional bf16 copy of W (float, BF16 only), read instead of converting W per chunk.
template <class T>
void lm_head_ce_forward(const T* h, const T* W, const int32_t* target, int64_t N, int64_t D,
                        int64_t V, int64_t chunk, T* lse, GemmPrecision prec, double* loss_sum,
                        const uint16_t* W16 = nullptr);
// With g = dloss per valid row (same scale for all rows, e.g. 1/count):
// dh[N,D] (write) and dW[V,D] (accumulate), recomputing logits chunk by chunk.
template <class T>
void lm_head_ce_backward(const T* h, const T* W, const int32_t* target, const T* lse, T g,
                         int64_t N, int64_t D, int64_t V, int64_t chunk, T* dh, T* dW,
                         GemmPrecision prec, const uint16_t* W16 = nullptr);

// ---- AdamW -----------------------------------------------------------------------------------
// Moments in fp32 (M = float) or bf16 (M = uint16_t bit pattern, rounded to nearest even).
template <class M>
void adamw_update(float* param, const float* grad, M* m, M* v, int64_t n, const AdamWParams& p);
// The segments one after another, each with p.weight_decay or none (segment.decay).
template <class M>
void adamw_update_segments(const AdamWSegment<M>* segs, int64_t n, const AdamWParams& p);

// ---- the optimizer's vectors (kernels/cpu/optim_vec.cpp) ---------------------------------------
// out[s] = sum of x[begin[s] + i]^2 over i < len[s], accumulated in double in index order (each
// segment on one thread: the gradient norm is the same bits at any thread count); out[0] = count
// of non-finite x[i]; x *= c; x = bf16(x).
void segment_sum_squares(const float* x, const int64_t* begin, const int64_t* len, int64_t n,
                         double* out);
void count_nonfinite(const float* x, int64_t n, int64_t* out);
void scale_inplace(float* x, float c, int64_t n);
void round_bf16_inplace(float* x, int64_t n);

// ---- expert-parallel wire (kernels/cpu/ep_wire.cpp) -------------------------------------------
// The plan, packing and unpacking of the EP dispatcher's all-to-all rows (parallel/ep_dispatch.h).
// P peers; peer p holds the global experts [p El, (p+1) El). Wire rows are `stride` bytes apart
// and need no alignment (an op reads and writes them bytewise); a row's parts are placed by
// offsetting the wire pointer. Row encodings: RowEncoding (op_types.h); BF16 and FP8 need
// T = float (std::invalid_argument otherwise).
using kernels::RowEncoding;

// From idx [N,K] (global expert ids): the rows this process sends, each token once to every peer
// holding one of its experts. Rows are grouped by peer, in token order inside a peer.
//   counts [P+1]      counts[p] = rows to peer p; counts[P] = the most distinct nodes any token
//                     goes to (node_of_peer [P]: the node of each peer; 0 when N == 0)
//   slot [N,P]        the row of token n to peer p, -1 when none of its experts is there
//   send_token [N*P]  sent row -> origin token (the first sum(counts[0:P]) entries)
// An expert id outside [0, P El): std::out_of_range, or, when bad is given, *bad = the number of
// such ids (0 when none) and they are skipped — for a caller that reads the flag with the counts
// (on a GPU, checking it in the op would wait for the stream).
void ep_dispatch_plan(const int32_t* idx, int64_t N, int64_t K, int64_t El, int64_t P,
                      const int32_t* node_of_peer, int64_t* counts, int64_t* slot,
                      int64_t* send_token, int64_t* bad = nullptr);
// wire row i = enc(src[rows ? rows[i] : i, 0:D]), i < n (the gather into send order).
template <class T>
void ep_encode_rows(RowEncoding e, const T* src, const int64_t* rows, int64_t n, int64_t D,
                    uint8_t* wire, int64_t stride);
// dst[i, 0:D] = dec(wire row i), i < n (write).
template <class T>
void ep_decode_rows(RowEncoding e, const uint8_t* wire, int64_t stride, int64_t n, int64_t D,
                    T* dst);
// out[t, 0:D] += dec(wire row slot[t*P + p]) over p < P with slot >= 0, added in p order (the
// combine's scatter-add into origin tokens; deterministic).
template <class T>
void ep_decode_add_rows(RowEncoding e, const uint8_t* wire, int64_t stride, const int64_t* slot,
                        int64_t N, int64_t P, int64_t D, T* out);
// The routes that travel with a dispatched row, exactly, as 2K values of T: for the row
// slot[t*P + p] >= 0, [K local expert ids (idx - p El where idx is on p, else -1) | K gate
// weights (w where the expert is on p, else 0)]. idx, w [N,K].
template <class T>
void ep_pack_routes(const int32_t* idx, const T* w, const int64_t* slot, int64_t N, int64_t K,
                    int64_t P, int64_t El, uint8_t* wire, int64_t stride);
// ridx [R,K] (int32), rw [R,K] (write) from the routes of R received rows.
template <class T>
void ep_unpack_routes(const uint8_t* wire, int64_t stride, int64_t R, int64_t K, int32_t* ridx,
                      T* rw);

}  // namespace moetron::kernels::cpu
