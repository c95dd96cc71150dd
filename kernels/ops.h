// The math ops of moetron: one declaration per kernel, CPU implementations in kernels/cpu/.
//
// Conventions (llm.c style): row-major, contiguous, raw pointers plus sizes. T is float (training)
// or double (gradient checks against finite differences). Every op with a backward has it here,
// next to its forward. "Accumulate" means the op adds into its output (+=); otherwise it writes.
// Shapes in comments use: N rows/tokens, D width, V vocab, H heads, S sequence, E experts,
// K top-k.
#pragma once

#include <cstdint>
#include <vector>

namespace moetron::kernels {

// ---- threads ---------------------------------------------------------------------------------
// Intra-op threads of this process (OpenMP and the BLAS library).
void set_num_threads(int n);
int num_threads();

// ---- GEMM ------------------------------------------------------------------------------------
// How the inputs of one GEMM are rounded. FP32: plain. BF16: both inputs rounded to bf16,
// products accumulated in fp32 (double stays double but inputs are rounded the same way).
enum class GemmPrecision { FP32, BF16 };

// C[M,N] = alpha * op(A)[M,K] * op(B)[K,N] + beta * C.  op(X) = X or X^T.
// A is [M,K] (or [K,M] if transA); B is [K,N] (or [N,K] if transB); all contiguous.
// dynamic: the sizes change from call to call (routed experts: rows per expert vary every step),
// so the backend should not specialise a kernel per shape (oneDNN: one runtime-shape primitive
// instead of a JIT compile for every new size).
template <class T>
void gemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          const T* B, T beta, T* C, GemmPrecision prec = GemmPrecision::FP32, bool dynamic = false);

// ---- elementwise helpers ---------------------------------------------------------------------
template <class T>
void add_inplace(T* y, const T* x, int64_t n);  // y += x
template <class T>
void axpy(T* y, T a, const T* x, int64_t n);  // y += a x

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
struct RopeParams {
  int dim = 64;  // rotary dims (qk_rope_head_dim)
  double theta = 10000.0;
  bool yarn = false;    // YaRN frequency correction
  double factor = 1.0;  // s
  int64_t original_seq_len = 4096;
  double beta_fast = 32.0, beta_slow = 1.0;
};
// freqs[dim/2]: base frequencies with the YaRN correction if enabled (SPEC 1.3).
std::vector<double> rope_frequencies(const RopeParams& p);
// Rotates, in place, `nvec` vectors of `dim` values each: vector v lives at x + v*stride and
// belongs to position pos[v / vecs_per_pos]. inverse=true rotates by -angle (the backward).
template <class T>
void rope_apply(T* x, int64_t nvec, int64_t stride, int64_t vecs_per_pos, const int32_t* pos,
                const std::vector<double>& freqs, bool inverse);

// ---- causal attention ------------------------------------------------------------------------
// Per batch b and head h: o = softmax(q k^T * scale + causal) v. Layout:
//   q, k [B, S, H, Dqk]; v, o [B, S, H, Dv]; lse [B, H, S] (log-sum-exp of scaled scores, saved).
// Computed in tiles with an online softmax: no [S,S] score matrix per head is ever stored.
template <class T>
void attention_forward(const T* q, const T* k, const T* v, int64_t B, int64_t S, int64_t H,
                       int64_t Dqk, int64_t Dv, T scale, T* o, T* lse);
// dq, dk, dv (write) from do, recomputing scores tile by tile from q, k, v, o, lse.
template <class T>
void attention_backward(const T* dout, const T* q, const T* k, const T* v, const T* o, const T* lse,
                        int64_t B, int64_t S, int64_t H, int64_t Dqk, int64_t Dv, T scale, T* dq,
                        T* dk, T* dv);

// ---- SwiGLU ----------------------------------------------------------------------------------
// gu [N, 2F] holds [gate(F) | up(F)] per row; out[N,F] = silu(gate) * up * (row_scale ? s[n] : 1)
template <class T>
void swiglu_forward(const T* gu, int64_t N, int64_t F, const T* row_scale, T* out);
// dgu[N,2F] (write); if row_scale: drow_scale[N] (write) = sum_f dout * silu(g) * u.
template <class T>
void swiglu_backward(const T* dout, const T* gu, int64_t N, int64_t F, const T* row_scale, T* dgu,
                     T* drow_scale);

// ---- MoE gate (sigmoid, bias for selection only, group-limited top-k) --------------------------
struct GateParams {
  int64_t n_experts = 0, topk = 0, n_group = 1, topk_group = 1;
  double route_scale = 1.0;
};
// logits[N,E] -> scores[N,E] = sigmoid(logits) (saved); selection on scores + bias with
// group-limited routing (group score = sum of the top (topk/topk_group) biased scores, keep
// topk_group groups), then top-k; weights[N,K] = scores[idx] / sum * route_scale; idx[N,K].
// Ties break to the lower expert index.
template <class T>
void gate_forward(const T* logits, const float* bias, int64_t N, const GateParams& p, T* scores,
                  int32_t* idx, T* weights);
// dlogits[N,E] (write) from dweights[N,K] through the normalisation and the sigmoid.
template <class T>
void gate_backward(const T* dweights, const T* scores, const int32_t* idx, const T* weights,
                   int64_t N, const GateParams& p, T* dlogits);

// ---- token permutation by expert -------------------------------------------------------------
// From idx[N,K]: counts[E], offsets[E+1] (exclusive prefix), and for each of the N*K assignments
// its row in the expert-sorted order: slot[n*K+k] = row. idx = -1 marks a slot whose expert is in
// another process (expert parallelism): it gets no row and slot -1. Stable: within an expert, rows
// follow (n, k) order. row_token[row] = n, row_slot[row] = n*K+k.
struct ExpertRouting {
  std::vector<int64_t> counts, offsets;
  std::vector<int64_t> slot, row_token, row_slot;
};
ExpertRouting route_by_expert(const int32_t* idx, int64_t N, int64_t K, int64_t E);
// out[rows, D] = x[row_token[row], :]
template <class T>
void permute_rows(const T* x, const ExpertRouting& r, int64_t D, T* out);
// dx[n, :] += sum over rows of token n of drows[row, :]   (accumulate; backward of permute and
// forward of combine are the same scatter-add)
template <class T>
void unpermute_add(const T* rows, const ExpertRouting& r, int64_t N, int64_t D, T* out);

// ---- fused output head + cross-entropy, chunked over the vocabulary --------------------------
// logits = h[N,D] W[V,D]^T are produced one [N, chunk] block at a time; never all at once.
// loss[n] = lse_n - logit[n, target[n]] for target >= 0; targets < 0 are ignored (loss 0).
// lse[N] saved. Returns the sum of losses over valid rows.
template <class T>
double lm_head_ce_forward(const T* h, const T* W, const int32_t* target, int64_t N, int64_t D,
                          int64_t V, int64_t chunk, T* lse, GemmPrecision prec);
// With g = dloss per valid row (same scale for all rows, e.g. 1/count):
// dh[N,D] (write) and dW[V,D] (accumulate), recomputing logits chunk by chunk.
template <class T>
void lm_head_ce_backward(const T* h, const T* W, const int32_t* target, const T* lse, T g,
                         int64_t N, int64_t D, int64_t V, int64_t chunk, T* dh, T* dW,
                         GemmPrecision prec);

// ---- AdamW -----------------------------------------------------------------------------------
struct AdamWParams {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
  int64_t step = 1;  // 1-based, for bias correction
};
// Moments in fp32 (M = float) or bf16 (M = uint16_t bit pattern, rounded to nearest even).
template <class M>
void adamw_update(float* param, const float* grad, M* m, M* v, int64_t n, const AdamWParams& p);

}  // namespace moetron::kernels
