// The op dispatcher: every op of kernels/ops.h runs the backend of its execution context's device.
// CPU and Guard run kernels/cpu/ (Guard with its memory unlocked for the duration of the op:
// GuardAccess); CUDA runs kernels/cuda/ (kernels::gpu, the context passed on: its stream) in a
// build with the CUDA backend; Meta runs nothing. Each op is one line here (the GEMM-type ops one
// more: their FLOPs for the counter, kernels/flop_counter.h, so every backend is counted the same
// way); explicit instantiations at the end.
#include <cstring>
#include <stdexcept>
#include <string>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/flop_counter.h"
#include "kernels/host_waits.h"
#include "kernels/op_instantiate.h"
#include "kernels/op_profile.h"
#include "kernels/ops.h"
#if MOETRON_HAVE_CUDA
#include "kernels/cuda/fp8_cuda.h"
#include "kernels/cuda/ops_cuda.h"
#endif

namespace moetron::kernels {

namespace {
[[noreturn]] void no_backend(const Exec& ex, const char* op) {
  throw std::logic_error(std::string("op ") + op + ": no backend for device " +
                         device_name(ex.device) + " in this build");
}

// The GEMM FLOP counter (kernels/flop_counter.h): nothing on Meta (it runs nothing), nothing while
// counting is off.
void count(const Exec& ex, int64_t flops, bool recompute = false) {
  if (ex.device != Device::Meta) flop_counter::add(flops, recompute);
}
// A grouped op's row offsets (host memory, every backend): G >= 0, off[0] >= 0, nondecreasing
// (std::invalid_argument naming the op otherwise).
void check_groups(const Exec& ex, const int64_t* off, int64_t G, const char* op) {
  if (ex.device == Device::Meta) return;  // runs nothing (no_backend)
  if (G < 0) throw std::invalid_argument(std::string(op) + ": negative group count");
  if (G > 0 && off[0] < 0) throw std::invalid_argument(std::string(op) + ": negative row offset");
  for (int64_t g = 0; g < G; ++g)
    if (off[g + 1] < off[g])
      throw std::invalid_argument(std::string(op) + ": row offsets decrease at group " +
                                  std::to_string(g));
}
// The same, then the FLOP count: 2 x (rows of all G groups) x n x k, the rows being
// off[G] - off[0].
void check_and_count_groups(const Exec& ex, const int64_t* off, int64_t G, int64_t n, int64_t k,
                            const char* op) {
  check_groups(ex, off, G, op);
  if (ex.device != Device::Meta && flop_counter::counting() && G > 0)
    flop_counter::add(2 * (off[G] - off[0]) * n * k);
}
}  // namespace

#define MOETRON_DISPATCH_HOST(name, ...) \
  case Device::CPU:                      \
    return cpu::name(__VA_ARGS__);       \
  case Device::Guard: {                  \
    GuardAccess access;                  \
    return cpu::name(__VA_ARGS__);       \
  }

#if MOETRON_HAVE_CUDA
#define MOETRON_DISPATCH_GPU(gpu_call) \
  case Device::CUDA:                   \
    return gpu::gpu_call;
#else
#define MOETRON_DISPATCH_GPU(gpu_call)
#endif

// An op of both backends: cpu::name(args) or gpu::name(ex, args).
#define MOETRON_DISPATCH(name, ...)             \
  switch (ex.device) {                          \
    MOETRON_DISPATCH_HOST(name, __VA_ARGS__)    \
    MOETRON_DISPATCH_GPU(name(ex, __VA_ARGS__)) \
    default:                                    \
      break;                                    \
  }                                             \
  no_backend(ex, #name)

Fp8GemmPaths fp8_gemm_paths() {
#if MOETRON_HAVE_CUDA
  return gpu::fp8::gemm_counts();
#else
  return {};
#endif
}

int64_t gpu_kernel_launches() {
#if MOETRON_HAVE_CUDA
  return gpu::kernel_launches();
#else
  return 0;
#endif
}

std::map<std::string, int64_t> gpu_kernel_launches_by_name() {
#if MOETRON_HAVE_CUDA
  return gpu::launch_tally();
#else
  return {};
#endif
}

void copy_from_host(const Exec& ex, void* dst, const void* host_src, size_t bytes) {
  const op_profile::Scope timed(ex, "copy_from_host");
  switch (ex.device) {
    MOETRON_DISPATCH_HOST(copy, dst, host_src, bytes)
    MOETRON_DISPATCH_GPU(copy_from_host(ex, dst, host_src, bytes))
    default:
      break;
  }
  no_backend(ex, "copy_from_host");
}
void copy_to_host(const Exec& ex, void* host_dst, const void* src, size_t bytes) {
  const op_profile::Scope timed(ex, "copy_to_host");
  if (ex.device != Device::CPU) host_waits::add();
  switch (ex.device) {
    MOETRON_DISPATCH_HOST(copy, host_dst, src, bytes)
    MOETRON_DISPATCH_GPU(copy_to_host(ex, host_dst, src, bytes))
    default:
      break;
  }
  no_backend(ex, "copy_to_host");
}

HostRead copy_to_host_start(const Exec& ex, void* host_dst, const void* src, size_t bytes) {
  const op_profile::Scope timed(ex, "copy_to_host_start");
  switch (ex.device) {
    MOETRON_DISPATCH_GPU(copy_to_host_start(ex, host_dst, src, bytes))
    case Device::CPU:  // done at once (no stream to wait for: not a host wait)
      cpu::copy(host_dst, src, bytes);
      return HostRead();
    case Device::Guard: {
      GuardAccess access;
      cpu::copy(host_dst, src, bytes);
      return HostRead();
    }
    default:
      break;
  }
  no_backend(ex, "copy_to_host_start");
}

void copy(const Exec& ex, void* dst, const void* src, size_t bytes) {
  const op_profile::Scope timed(ex, "copy");
  MOETRON_DISPATCH(copy, dst, src, bytes);
}

void fill_zero(const Exec& ex, void* p, size_t bytes) {
  const op_profile::Scope timed(ex, "fill_zero");
  MOETRON_DISPATCH(fill_zero, p, bytes);
}
void narrow_to_bf16(const Exec& ex, const float* x, int64_t n, uint16_t* y) {
  const op_profile::Scope timed(ex, "narrow_to_bf16");
  MOETRON_DISPATCH(narrow_to_bf16, x, n, y);
}
void widen_from_bf16(const Exec& ex, const uint16_t* x, int64_t n, float* y) {
  const op_profile::Scope timed(ex, "widen_from_bf16");
  MOETRON_DISPATCH(widen_from_bf16, x, n, y);
}

template <class T>
void gemm(const Exec& ex, bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha,
          const T* A, const T* B, T beta, T* C, GemmPrecision prec, bool dynamic) {
  const op_profile::Scope timed(ex, "gemm");
  count(ex, 2 * M * N * K);
  MOETRON_DISPATCH(gemm, transA, transB, M, N, K, alpha, A, B, beta, C, prec, dynamic);
}

template <class T>
void grouped_gemm(const Exec& ex, const int64_t* off, int64_t G, bool transW, int64_t N, int64_t K,
                  const T* A, const T* W, T* C, GemmPrecision prec) {
  const op_profile::Scope timed(ex, "grouped_gemm");
  check_and_count_groups(ex, off, G, N, K, "grouped_gemm");
  MOETRON_DISPATCH(grouped_gemm, off, G, transW, N, K, A, W, C, prec);
}

void gemm_bf16_weight(const Exec& ex, bool transA, bool transB, int64_t M, int64_t N, int64_t K,
                      float alpha, const float* A, const uint16_t* W16, float beta, float* C) {
  const op_profile::Scope timed(ex, "gemm_bf16_weight");
  count(ex, 2 * M * N * K);
  MOETRON_DISPATCH(gemm_bf16_weight, transA, transB, M, N, K, alpha, A, W16, beta, C);
}

void grouped_gemm_bf16_weight(const Exec& ex, const int64_t* off, int64_t G, bool transW, int64_t N,
                              int64_t K, const float* A, const uint16_t* W16, float* C) {
  const op_profile::Scope timed(ex, "grouped_gemm_bf16_weight");
  check_and_count_groups(ex, off, G, N, K, "grouped_gemm_bf16_weight");
  MOETRON_DISPATCH(grouped_gemm_bf16_weight, off, G, transW, N, K, A, W16, C);
}

template <class T>
void grouped_gemm_wgrad(const Exec& ex, const int64_t* off, int64_t G, int64_t M, int64_t N,
                        const T* A, const T* B, T* C, GemmPrecision prec) {
  const op_profile::Scope timed(ex, "grouped_gemm_wgrad");
  check_and_count_groups(ex, off, G, M, N, "grouped_gemm_wgrad");
  MOETRON_DISPATCH(grouped_gemm_wgrad, off, G, M, N, A, B, C, prec);
}

void grouped_fp8_fprop(const Exec& ex, const int64_t* off, int64_t G, const uint8_t* qX,
                       const float* sX, const uint8_t* qW, const float* sW, int64_t N, int64_t K,
                       float* Y) {
  const op_profile::Scope timed(ex, "grouped_fp8_fprop");
  check_and_count_groups(ex, off, G, N, K, "grouped_fp8_fprop");
  MOETRON_DISPATCH(grouped_fp8_fprop, off, G, qX, sX, qW, sW, N, K, Y);
}

void grouped_fp8_linear_dgrad(const Exec& ex, const int64_t* off, int64_t G, const float* dY,
                              int64_t N, int64_t K, const uint8_t* qWt, const float* sWt, bool pow2,
                              bool blocks128, float* dX) {
  const op_profile::Scope timed(ex, "grouped_fp8_linear_dgrad");
  check_and_count_groups(ex, off, G, N, K, "grouped_fp8_linear_dgrad");
  MOETRON_DISPATCH(grouped_fp8_linear_dgrad, off, G, dY, N, K, qWt, sWt, pow2, blocks128, dX);
}

void grouped_fp8_linear_wgrad(const Exec& ex, const int64_t* off, int64_t G, const uint8_t* qdYt,
                              const float* sdYt, const uint8_t* qX, const float* sX, int64_t N,
                              int64_t K, bool pow2_x, float* dW) {
  const op_profile::Scope timed(ex, "grouped_fp8_linear_wgrad");
  check_and_count_groups(ex, off, G, N, K, "grouped_fp8_linear_wgrad");
  MOETRON_DISPATCH(grouped_fp8_linear_wgrad, off, G, qdYt, sdYt, qX, sX, N, K, pow2_x, dW);
}

void grouped_fp8_linear_wgrad_f32(const Exec& ex, const int64_t* off, int64_t G,
                                  const uint8_t* qdYt, const float* sdYt, const float* X, int64_t N,
                                  int64_t K, bool pow2_x, float* dW) {
  const op_profile::Scope timed(ex, "grouped_fp8_linear_wgrad_f32");
  check_and_count_groups(ex, off, G, N, K, "grouped_fp8_linear_wgrad_f32");
  MOETRON_DISPATCH(grouped_fp8_linear_wgrad_f32, off, G, qdYt, sdYt, X, N, K, pow2_x, dW);
}

template <class T>
void add_inplace(const Exec& ex, T* y, const T* x, int64_t n) {
  const op_profile::Scope timed(ex, "add_inplace");
  MOETRON_DISPATCH(add_inplace, y, x, n);
}

template <class T>
void axpy(const Exec& ex, T* y, T a, const T* x, int64_t n) {
  const op_profile::Scope timed(ex, "axpy");
  MOETRON_DISPATCH(axpy, y, a, x, n);
}

template <class T>
void copy_2d(const Exec& ex, const T* src, int64_t src_ld, T* dst, int64_t dst_ld, int64_t rows,
             int64_t cols, int64_t repeat, bool accumulate) {
  const op_profile::Scope timed(ex, "copy_2d");
  MOETRON_DISPATCH(copy_2d, src, src_ld, dst, dst_ld, rows, cols, repeat, accumulate);
}

template <class T>
void sum_row_groups(const Exec& ex, const T* src, int64_t src_ld, T* dst, int64_t dst_ld,
                    int64_t rows, int64_t cols, int64_t group) {
  const op_profile::Scope timed(ex, "sum_row_groups");
  MOETRON_DISPATCH(sum_row_groups, src, src_ld, dst, dst_ld, rows, cols, group);
}

void shift_tokens(const Exec& ex, const int32_t* tokens, int64_t B, int64_t S, int64_t shift,
                  int32_t* ids, int32_t* targets, int32_t* pos) {
  const op_profile::Scope timed(ex, "shift_tokens");
  MOETRON_DISPATCH(shift_tokens, tokens, B, S, shift, ids, targets, pos);
}

template <class T>
void embedding_forward(const Exec& ex, const int32_t* ids, int64_t N, const T* table, int64_t D,
                       T* out) {
  const op_profile::Scope timed(ex, "embedding_forward");
  MOETRON_DISPATCH(embedding_forward, ids, N, table, D, out);
}

template <class T>
void embedding_backward(const Exec& ex, const int32_t* ids, int64_t N, const T* dout, int64_t D,
                        T* dtable) {
  const op_profile::Scope timed(ex, "embedding_backward");
  MOETRON_DISPATCH(embedding_backward, ids, N, dout, D, dtable);
}

template <class T>
void rmsnorm_forward(const Exec& ex, const T* x, const T* w, int64_t N, int64_t D, T eps, T* y,
                     T* rstd) {
  const op_profile::Scope timed(ex, "rmsnorm_forward");
  MOETRON_DISPATCH(rmsnorm_forward, x, w, N, D, eps, y, rstd);
}

template <class T>
void rmsnorm_backward_input(const Exec& ex, const T* dy, const T* x, const T* w, const T* rstd,
                            int64_t N, int64_t D, T* dx) {
  const op_profile::Scope timed(ex, "rmsnorm_backward_input");
  MOETRON_DISPATCH(rmsnorm_backward_input, dy, x, w, rstd, N, D, dx);
}

template <class T>
void rmsnorm_backward_weight(const Exec& ex, const T* dy, const T* x, const T* rstd, int64_t N,
                             int64_t D, T* dw) {
  const op_profile::Scope timed(ex, "rmsnorm_backward_weight");
  MOETRON_DISPATCH(rmsnorm_backward_weight, dy, x, rstd, N, D, dw);
}

template <class T>
void rope_apply(const Exec& ex, T* x, int64_t nvec, int64_t stride, int64_t vecs_per_pos,
                const int32_t* pos, const double* freqs, int64_t dim, bool inverse) {
  const op_profile::Scope timed(ex, "rope_apply");
  MOETRON_DISPATCH(rope_apply, x, nvec, stride, vecs_per_pos, pos, freqs, dim, inverse);
}

template <class T>
void attention_forward(const Exec& ex, const T* q, const T* k, const T* v, int64_t B, int64_t S,
                       int64_t H, int64_t Dqk, int64_t Dv, T scale, T* o, T* lse,
                       GemmPrecision prec) {
  const op_profile::Scope timed(ex, "attention_forward");
  MOETRON_DISPATCH(attention_forward, q, k, v, B, S, H, Dqk, Dv, scale, o, lse, prec);
}

template <class T>
void attention_backward(const Exec& ex, const T* dout, const T* q, const T* k, const T* v,
                        const T* o, const T* lse, int64_t B, int64_t S, int64_t H, int64_t Dqk,
                        int64_t Dv, T scale, T* dq, T* dk, T* dv, GemmPrecision prec) {
  const op_profile::Scope timed(ex, "attention_backward");
  MOETRON_DISPATCH(attention_backward, dout, q, k, v, o, lse, B, S, H, Dqk, Dv, scale, dq, dk, dv,
                   prec);
}

template <class T>
void latent_attention_forward(const Exec& ex, const T* q, const T* kv, int64_t M, int64_t past,
                              int64_t H, int64_t Dk, int64_t Dv, T scale, T* o) {
  const op_profile::Scope timed(ex, "latent_attention_forward");
  MOETRON_DISPATCH(latent_attention_forward, q, kv, M, past, H, Dk, Dv, scale, o);
}

template <class T>
void swiglu_forward(const Exec& ex, const T* gu, int64_t N, int64_t F, const T* row_scale, T* out) {
  const op_profile::Scope timed(ex, "swiglu_forward");
  MOETRON_DISPATCH(swiglu_forward, gu, N, F, row_scale, out);
}

template <class T>
void swiglu_backward(const Exec& ex, const T* dout, const T* gu, int64_t N, int64_t F,
                     const T* row_scale, T* dgu, T* drow_scale) {
  const op_profile::Scope timed(ex, "swiglu_backward");
  MOETRON_DISPATCH(swiglu_backward, dout, gu, N, F, row_scale, dgu, drow_scale);
}

template <class T>
void gate_forward(const Exec& ex, const T* logits, const T* bias, int64_t N, const GateParams& p,
                  T* scores, int32_t* idx, T* weights) {
  const op_profile::Scope timed(ex, "gate_forward");
  MOETRON_DISPATCH(gate_forward, logits, bias, N, p, scores, idx, weights);
}

template <class T>
void gate_backward(const Exec& ex, const T* dweights, const T* scores, const int32_t* idx,
                   const T* weights, int64_t N, const GateParams& p, T* dlogits) {
  const op_profile::Scope timed(ex, "gate_backward");
  MOETRON_DISPATCH(gate_backward, dweights, scores, idx, weights, N, p, dlogits);
}

template <class T>
void seq_balance_loss_forward(const Exec& ex, const T* scores, int64_t B, int64_t S, int64_t V,
                              int64_t E, int64_t K, double alpha, T* f, double* loss) {
  const op_profile::Scope timed(ex, "seq_balance_loss_forward");
  MOETRON_DISPATCH(seq_balance_loss_forward, scores, B, S, V, E, K, alpha, f, loss);
}

template <class T>
void seq_balance_loss_backward(const Exec& ex, const T* scores, const T* f, int64_t B, int64_t S,
                               int64_t V, int64_t E, double c, T* dlogits) {
  const op_profile::Scope timed(ex, "seq_balance_loss_backward");
  MOETRON_DISPATCH(seq_balance_loss_backward, scores, f, B, S, V, E, c, dlogits);
}

void expert_histogram(const Exec& ex, const int32_t* idx, int64_t n, int64_t period, int64_t valid,
                      int64_t E, int64_t* load, bool accumulate) {
  const op_profile::Scope timed(ex, "expert_histogram");
  MOETRON_DISPATCH(expert_histogram, idx, n, period, valid, E, load, accumulate);
}

template <class T>
void bias_sign_update(const Exec& ex, T* bias, const int64_t* load, int64_t E, double gamma) {
  const op_profile::Scope timed(ex, "bias_sign_update");
  MOETRON_DISPATCH(bias_sign_update, bias, load, E, gamma);
}

void route_by_expert(const Exec& ex, const int32_t* idx, int64_t N, int64_t K, int64_t E,
                     int64_t align, int64_t* counts, int64_t* offsets, int64_t* slot,
                     int64_t* row_token, int64_t* row_slot) {
  const op_profile::Scope timed(ex, "route_by_expert");
  MOETRON_DISPATCH(route_by_expert, idx, N, K, E, align, counts, offsets, slot, row_token,
                   row_slot);
}

template <class T>
void gather_rows(const Exec& ex, const T* src, const int64_t* idx, int64_t n, int64_t D, T* dst) {
  const op_profile::Scope timed(ex, "gather_rows");
  MOETRON_DISPATCH(gather_rows, src, idx, n, D, dst);
}

template <class T>
void unpermute_add(const Exec& ex, const T* rows, const int64_t* slot, int64_t N, int64_t K,
                   int64_t D, T* out) {
  const op_profile::Scope timed(ex, "unpermute_add");
  MOETRON_DISPATCH(unpermute_add, rows, slot, N, K, D, out);
}

template <class T>
void lm_head_ce_forward(const Exec& ex, const T* h, const T* W, const int32_t* target, int64_t N,
                        int64_t D, int64_t V, int64_t chunk, T* lse, GemmPrecision prec,
                        double* loss_sum, const uint16_t* W16) {
  const op_profile::Scope timed(ex, "lm_head_ce_forward");
  count(ex, 2 * N * D * V);
  MOETRON_DISPATCH(lm_head_ce_forward, h, W, target, N, D, V, chunk, lse, prec, loss_sum, W16);
}

template <class T>
void lm_head_ce_backward(const Exec& ex, const T* h, const T* W, const int32_t* target,
                         const T* lse, T g, int64_t N, int64_t D, int64_t V, int64_t chunk, T* dh,
                         T* dW, GemmPrecision prec, const uint16_t* W16) {
  const op_profile::Scope timed(ex, "lm_head_ce_backward");
  count(ex, 2 * N * D * V, /*recompute=*/true);  // the logits again
  count(ex, 4 * N * D * V);                      // dh and dW
  MOETRON_DISPATCH(lm_head_ce_backward, h, W, target, lse, g, N, D, V, chunk, dh, dW, prec, W16);
}

template <class M>
void adamw_update(const Exec& ex, float* param, const float* grad, M* m, M* v, int64_t n,
                  const AdamWParams& p) {
  const op_profile::Scope timed(ex, "adamw_update");
  MOETRON_DISPATCH(adamw_update, param, grad, m, v, n, p);
}

template <class M>
void adamw_update_segments(const Exec& ex, const AdamWSegment<M>* segs, int64_t n,
                           const AdamWParams& p) {
  const op_profile::Scope timed(ex, "adamw_update");
  MOETRON_DISPATCH(adamw_update_segments, segs, n, p);
}

void segment_sum_squares(const Exec& ex, const float* x, const int64_t* begin, const int64_t* len,
                         int64_t n, double* out) {
  const op_profile::Scope timed(ex, "segment_sum_squares");
  MOETRON_DISPATCH(segment_sum_squares, x, begin, len, n, out);
}
void count_nonfinite(const Exec& ex, const float* x, int64_t n, int64_t* out) {
  const op_profile::Scope timed(ex, "count_nonfinite");
  MOETRON_DISPATCH(count_nonfinite, x, n, out);
}
void scale_inplace(const Exec& ex, float* x, float c, int64_t n) {
  const op_profile::Scope timed(ex, "scale_inplace");
  MOETRON_DISPATCH(scale_inplace, x, c, n);
}
void round_bf16_inplace(const Exec& ex, float* x, int64_t n) {
  const op_profile::Scope timed(ex, "round_bf16_inplace");
  MOETRON_DISPATCH(round_bf16_inplace, x, n);
}

void narrow_to_e5m6(const Exec& ex, const float* x, int64_t n, uint8_t* y) {
  const op_profile::Scope timed(ex, "narrow_to_e5m6");
  MOETRON_DISPATCH(narrow_to_e5m6, x, n, y);
}
void widen_from_e5m6(const Exec& ex, const uint8_t* x, int64_t n, float* y) {
  const op_profile::Scope timed(ex, "widen_from_e5m6");
  MOETRON_DISPATCH(widen_from_e5m6, x, n, y);
}

void quantize(const Exec& ex, const float* x, int64_t R, int64_t C, Tile t, bool pow2, uint8_t* q,
              float* scales) {
  const op_profile::Scope timed(ex, "quantize");
  MOETRON_DISPATCH(quantize, x, R, C, t, pow2, q, scales);
}

void quantize_batched(const Exec& ex, const float* x, int64_t G, int64_t R, int64_t C, Tile t,
                      bool pow2, uint8_t* q, float* scales) {
  const op_profile::Scope timed(ex, "quantize_batched");
  MOETRON_DISPATCH(quantize_batched, x, G, R, C, t, pow2, q, scales);
}

void quantize_gathered(const Exec& ex, const float* x, const int64_t* idx, int64_t R, int64_t C,
                       bool pow2, uint8_t* q, float* scales) {
  const op_profile::Scope timed(ex, "quantize_gathered");
  MOETRON_DISPATCH(quantize_gathered, x, idx, R, C, pow2, q, scales);
}

void dequantize(const Exec& ex, const uint8_t* q, const float* scales, int64_t R, int64_t C, Tile t,
                float* x) {
  const op_profile::Scope timed(ex, "dequantize");
  MOETRON_DISPATCH(dequantize, q, scales, R, C, t, x);
}

void fp8_fprop(const Exec& ex, const uint8_t* qX, const float* sX, const uint8_t* qW,
               const float* sW, int64_t M, int64_t N, int64_t K, float* Y) {
  const op_profile::Scope timed(ex, "fp8_fprop");
  count(ex, 2 * M * N * K);
  MOETRON_DISPATCH(fp8_fprop, qX, sX, qW, sW, M, N, K, Y);
}

void transpose_e4m3_blocks(const Exec& ex, const uint8_t* q, const float* s, int64_t G, int64_t R,
                           int64_t C, uint8_t* qT, float* sT) {
  const op_profile::Scope timed(ex, "transpose_e4m3_blocks");
  MOETRON_DISPATCH(transpose_e4m3_blocks, q, s, G, R, C, qT, sT);
}

void fp8_linear_dgrad(const Exec& ex, const float* dY, int64_t M, int64_t N, int64_t K,
                      const uint8_t* qWt, const float* sWt, bool pow2, bool blocks128, float* dX,
                      bool accumulate) {
  const op_profile::Scope timed(ex, "fp8_linear_dgrad");
  count(ex, 2 * M * N * K);
  MOETRON_DISPATCH(fp8_linear_dgrad, dY, M, N, K, qWt, sWt, pow2, blocks128, dX, accumulate);
}

void grouped_quantize_128x1_t(const Exec& ex, const int64_t* off, int64_t G, const float* x,
                              int64_t C, bool pow2, uint8_t* qT, float* sT) {
  const op_profile::Scope timed(ex, "grouped_quantize_128x1_t");
  check_groups(ex, off, G, "grouped_quantize_128x1_t");
  MOETRON_DISPATCH(grouped_quantize_128x1_t, off, G, x, C, pow2, qT, sT);
}

void fp8_linear_wgrad(const Exec& ex, const uint8_t* qdYt, const float* sdYt, const uint8_t* qX,
                      const float* sX, int64_t M, int64_t N, int64_t K, bool pow2_x, float* dW) {
  const op_profile::Scope timed(ex, "fp8_linear_wgrad");
  count(ex, 2 * M * N * K);
  MOETRON_DISPATCH(fp8_linear_wgrad, qdYt, sdYt, qX, sX, M, N, K, pow2_x, dW);
}

void fp8_linear_wgrad_f32(const Exec& ex, const uint8_t* qdYt, const float* sdYt, const float* X,
                          int64_t M, int64_t N, int64_t K, bool pow2_x, float* dW) {
  const op_profile::Scope timed(ex, "fp8_linear_wgrad_f32");
  count(ex, 2 * M * N * K);
  MOETRON_DISPATCH(fp8_linear_wgrad_f32, qdYt, sdYt, X, M, N, K, pow2_x, dW);
}

// ---- expert-parallel wire ----------------------------------------------------------------------
void ep_dispatch_plan(const Exec& ex, const int32_t* idx, int64_t N, int64_t K, int64_t El,
                      int64_t P, const int32_t* node_of_peer, int64_t* counts, int64_t* slot,
                      int64_t* send_token, int64_t* bad) {
  const op_profile::Scope timed(ex, "ep_dispatch_plan");
  MOETRON_DISPATCH(ep_dispatch_plan, idx, N, K, El, P, node_of_peer, counts, slot, send_token, bad);
}

template <class T>
void ep_encode_rows(const Exec& ex, RowEncoding e, const T* src, const int64_t* rows, int64_t n,
                    int64_t D, uint8_t* wire, int64_t stride) {
  const op_profile::Scope timed(ex, "ep_encode_rows");
  MOETRON_DISPATCH(ep_encode_rows<T>, e, src, rows, n, D, wire, stride);
}

template <class T>
void ep_decode_rows(const Exec& ex, RowEncoding e, const uint8_t* wire, int64_t stride, int64_t n,
                    int64_t D, T* dst) {
  const op_profile::Scope timed(ex, "ep_decode_rows");
  MOETRON_DISPATCH(ep_decode_rows<T>, e, wire, stride, n, D, dst);
}

template <class T>
void ep_decode_add_rows(const Exec& ex, RowEncoding e, const uint8_t* wire, int64_t stride,
                        const int64_t* slot, int64_t N, int64_t P, int64_t D, T* out) {
  const op_profile::Scope timed(ex, "ep_decode_add_rows");
  MOETRON_DISPATCH(ep_decode_add_rows<T>, e, wire, stride, slot, N, P, D, out);
}

template <class T>
void ep_pack_routes(const Exec& ex, const int32_t* idx, const T* w, const int64_t* slot, int64_t N,
                    int64_t K, int64_t P, int64_t El, uint8_t* wire, int64_t stride) {
  const op_profile::Scope timed(ex, "ep_pack_routes");
  MOETRON_DISPATCH(ep_pack_routes<T>, idx, w, slot, N, K, P, El, wire, stride);
}

template <class T>
void ep_unpack_routes(const Exec& ex, const uint8_t* wire, int64_t stride, int64_t R, int64_t K,
                      int32_t* ridx, T* rw) {
  const op_profile::Scope timed(ex, "ep_unpack_routes");
  MOETRON_DISPATCH(ep_unpack_routes<T>, wire, stride, R, K, ridx, rw);
}

MOETRON_OPS_ALL(float)
MOETRON_OPS_ALL(double)
MOETRON_OPS_ADAMW(float)
MOETRON_OPS_ADAMW(uint16_t)

}  // namespace moetron::kernels
