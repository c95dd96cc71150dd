// GEMM on the GPU: the row-major C[M,N] = alpha op(A) op(B) + beta C behind every linear layer,
// through cuBLASLt.
//
// Row-major to cuBLASLt's column-major: a row-major X[r,c] is, read column-major, X^T[c,r] with
// the same leading dimension. So we ask cuBLASLt for C^T[N,M] = op(B)^T[N,K] op(A)^T[K,M]: its
// "A" is our B and its "B" is our A, with the same transpose flags and the leading dimensions of
// the row-major buffers (B: transB ? K : N, A: transA ? M : K, C: N). No operand is copied for
// layout.
//
// Precisions (the CPU twin, kernels/cpu/gemm.cpp, defines them):
//   float  FP32  CUDA_R_32F operands, CUBLAS_COMPUTE_32F: true fp32 (TF32 is NOT allowed: it is
//                opt-in through CUBLAS_COMPUTE_32F_FAST_TF32, which parity runs must not get).
//   float  BF16  A and B rounded to bf16 (nearest even, scalar.h's f32_to_bf16) into scratch
//                copies, then CUDA_R_16BF x CUDA_R_16BF -> CUDA_R_32F C/D, fp32 accumulation.
//   double FP32  CUDA_R_64F everything, CUBLAS_COMPUTE_64F.
//   double BF16  as the CPU: copies of A and B rounded to bf16 (through float) kept in double, then
//                the 64F GEMM.
// Edge cases as the CPU: M or N == 0 does nothing; K == 0 is C = beta C (beta == 0 writes zeros).
//
// cuBLASLt objects: one handle per process (created on first use, thread-safe static). Matmul and
// layout descriptors are created per call (host-only and cheap), the heuristic's algorithm choice
// is cached per (shape, transposes, types, operand alignments) in a mutex-guarded map, since the
// heuristic query is the expensive part of the set-up. Where the heuristic has no algorithm (an
// unusual layout or alignment), a simple one-thread-per-element kernel computes the same product
// (same input rounding, fp32/fp64 accumulation) and stderr says so once. The `dynamic` hint of
// ops.h (a CPU concern: oneDNN JIT-compiles per shape) has no use here. The cuBLASLt workspace (32
// MiB) and the bf16 copies come from the caller's scratch (gemm.cuh); the op itself takes it from
// workspace(ex, bytes) in one call.
#include <cublasLt.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "kernels/cuda/cublaslt_api.h"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/op_instantiate.h"
#include "kernels/scalar.h"

namespace moetron::kernels::gpu {

namespace {

void lt_check(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS)
    throw std::runtime_error(std::string("cuBLASLt: ") + what + ": " +
                             cublaslt().GetStatusString(st));
}

// ---- element kernels --------------------------------------------------------------------------

// y[n] = bf16(x[n]) (bit patterns, nearest even).
__global__ void to_bf16_kernel(const float* x, int64_t n, uint16_t* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = f32_to_bf16(x[i]);
}
// y[n] = x[n] rounded to bf16 through float, kept in double (the CPU's round_bf16_copy).
__global__ void round_bf16_kernel(const double* x, int64_t n, double* y) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    y[i] = round_bf16(static_cast<float>(x[i]));
}
// C[n] *= beta, beta == 0 writing exact zeros (NaN in an unwritten C must not leak).
template <class T>
__global__ void scale_kernel(T* C, int64_t n, T beta) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x)
    C[i] = beta == T(0) ? T(0) : C[i] * beta;
}

// ---- cuBLASLt plans -----------------------------------------------------------------------------

enum class Kind : int { F32, BF16, F64 };  // operand types: f32, bf16 -> f32, f64

struct AlgoKey {
  int64_t M, N, K;
  bool ta, tb;
  Kind kind;
  uint32_t align_a, align_b, align_c;
  auto operator<=>(const AlgoKey&) const = default;
};

// Descriptors of one call, destroyed with it.
struct Descs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr;  // cuBLASLt's A, B, C=D
  Descs() = default;
  Descs(const Descs&) = delete;
  Descs& operator=(const Descs&) = delete;
  ~Descs() {
    if (c) cublaslt().MatrixLayoutDestroy(c);
    if (b) cublaslt().MatrixLayoutDestroy(b);
    if (a) cublaslt().MatrixLayoutDestroy(a);
    if (op) cublaslt().MatmulDescDestroy(op);
  }
};

// cuBLASLt's view (column-major) of the row-major C[M,N] = op(A) op(B): C^T = op(B)^T op(A)^T,
// m = N, n = M, k = K. Its A is our B: stored [N,K] column-major (ld N) when !transB (op N), or
// [K,N] column-major (ld K) when transB (op T). Its B is our A: [K,M] (ld K) when !transA, or
// [M,K] (ld M) when transA. C/D: [N,M] (ld N).
void make_descs(Descs& d, Kind kind, bool ta, bool tb, int64_t M, int64_t N, int64_t K) {
  const cudaDataType_t in = kind == Kind::F32    ? CUDA_R_32F
                            : kind == Kind::BF16 ? CUDA_R_16BF
                                                 : CUDA_R_64F;
  const cudaDataType_t out = kind == Kind::F64 ? CUDA_R_64F : CUDA_R_32F;
  const cublasComputeType_t compute = kind == Kind::F64 ? CUBLAS_COMPUTE_64F : CUBLAS_COMPUTE_32F;
  lt_check(cublaslt().MatmulDescCreate(&d.op, compute, out), "cublasLtMatmulDescCreate");
  const cublasOperation_t opa = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
  const cublasOperation_t opb = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
  lt_check(cublaslt().MatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSA, &opa, sizeof(opa)),
           "set TRANSA");
  lt_check(cublaslt().MatmulDescSetAttribute(d.op, CUBLASLT_MATMUL_DESC_TRANSB, &opb, sizeof(opb)),
           "set TRANSB");
  const uint64_t u = static_cast<uint64_t>(M), v = static_cast<uint64_t>(N),
                 w = static_cast<uint64_t>(K);
  // rows, cols, ld of each stored (pre-op) matrix, column-major
  if (tb) {
    lt_check(cublaslt().MatrixLayoutCreate(&d.a, in, w, v, K), "layout A");
  } else {
    lt_check(cublaslt().MatrixLayoutCreate(&d.a, in, v, w, N), "layout A");
  }
  if (ta) {
    lt_check(cublaslt().MatrixLayoutCreate(&d.b, in, u, w, M), "layout B");
  } else {
    lt_check(cublaslt().MatrixLayoutCreate(&d.b, in, w, u, K), "layout B");
  }
  lt_check(cublaslt().MatrixLayoutCreate(&d.c, out, v, u, N), "layout C");
}

// The heuristic's best algorithm for the key, or nullopt when cuBLASLt has none (the caller
// then runs the fallback kernel). Both outcomes are cached.
std::optional<cublasLtMatmulAlgo_t> find_algo(const AlgoKey& key, const Descs& d) {
  static auto& cache = *new LtAlgoCache<AlgoKey>;  // never destroyed (plain data; see lt_handle)
  if (const auto hit = cache.find(key)) return *hit;
  cublasStatus_t st = CUBLAS_STATUS_SUCCESS;
  // A/B of cuBLASLt are our B/A
  const std::optional<cublasLtMatmulAlgo_t> algo = lt_heuristic(
      d.op, d.a, d.b, d.c, key.align_b, key.align_a, key.align_c, kLtWorkspaceBytes, &st);
  if (!algo && st != CUBLAS_STATUS_SUCCESS && st != CUBLAS_STATUS_NOT_SUPPORTED)
    lt_check(st, "cublasLtMatmulAlgoGetHeuristic");
  if (!algo) {
    // No algorithm for this configuration: say so once per process (the fallback is slow).
    static std::once_flag warned;
    std::call_once(warned, [&] {
      std::fprintf(stderr,
                   "moetron: cuBLASLt has no algorithm for a %lldx%lldx%lld GEMM (kind %d, "
                   "transposes %d%d, alignments %u/%u/%u); using the simple fallback kernel "
                   "(reported once)\n",
                   static_cast<long long>(key.M), static_cast<long long>(key.N),
                   static_cast<long long>(key.K), static_cast<int>(key.kind), int(key.ta),
                   int(key.tb), key.align_a, key.align_b, key.align_c);
    });
  }
  cache.put(key, algo);
  return algo;
}

// ---- fallback: one thread per element of C ----------------------------------------------------
// Used only where cuBLASLt's heuristic offers no algorithm (a warning says so): correct, not fast.
// In is the operand storage (float, bf16 bits, double), Acc the accumulation and C type.
__device__ __forceinline__ float load_op(const float* p, int64_t i) { return p[i]; }
__device__ __forceinline__ float load_op(const uint16_t* p, int64_t i) { return bf16_to_f32(p[i]); }
__device__ __forceinline__ double load_op(const double* p, int64_t i) { return p[i]; }

template <class In, class Acc>
__global__ void fallback_gemm_kernel(bool ta, bool tb, int64_t M, int64_t N, int64_t K, Acc alpha,
                                     const In* A, const In* B, Acc beta, Acc* C) {
  for (int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; idx < M * N;
       idx += int64_t(gridDim.x) * blockDim.x) {
    const int64_t i = idx / N, j = idx - i * N;
    Acc sum = 0;
    for (int64_t k = 0; k < K; ++k) {
      const Acc a = load_op(A, ta ? k * M + i : i * K + k);  // op(A)[i, k]
      const Acc b = load_op(B, tb ? j * K + k : k * N + j);  // op(B)[k, j]
      sum += a * b;
    }
    C[idx] = beta == Acc(0) ? alpha * sum : alpha * sum + beta * C[idx];
  }
}

// One cuBLASLt matmul: C[M,N] = alpha op(A) op(B) + beta C, A/B of type In (`kind`'s operand
// type), C and the scales of type S; the fallback kernel where cuBLASLt has no algorithm.
template <class In, class S>
void lt_matmul(cudaStream_t s, Kind kind, bool ta, bool tb, int64_t M, int64_t N, int64_t K,
               S alpha, const In* A, const In* B, S beta, S* C, void* lt_ws) {
  Descs d;
  make_descs(d, kind, ta, tb, M, N, K);
  const AlgoKey key{M, N, K, ta, tb, kind, lt_alignment(A), lt_alignment(B), lt_alignment(C)};
  // MOETRON_CUDA_GEMM_FALLBACK=1 forces the fallback (its tests; read per call so they can set it)
  const char* force = std::getenv("MOETRON_CUDA_GEMM_FALLBACK");
  const bool forced = force && force[0] == '1';
  const std::optional<cublasLtMatmulAlgo_t> algo = forced ? std::nullopt : find_algo(key, d);
  if (!algo) {
    fallback_gemm_kernel<In, S>
        <<<blocks_for(M * N), kThreads, 0, s>>>(ta, tb, M, N, K, alpha, A, B, beta, C);
    MOETRON_CUDA_LAUNCHED("gemm: fallback kernel");
    return;
  }
  lt_check(cublaslt().Matmul(lt_handle(), d.op, &alpha, B, d.a, A, d.b, &beta, C, d.c, C, d.c,
                             &*algo, lt_ws, kLtWorkspaceBytes, s),
           "cublasLtMatmul");
}

}  // namespace

namespace {

// Handles the shapes with nothing to multiply (true: done; C = beta C on s where K == 0).
template <class T>
bool empty_product(cudaStream_t s, int64_t M, int64_t N, int64_t K, T beta, T* C) {
  if (M < 0 || N < 0 || K < 0) throw std::invalid_argument("gemm: negative dimension");
  if (M == 0 || N == 0) return true;
  if (K != 0) return false;
  if (beta != T(1)) {
    scale_kernel<T><<<blocks_for(M * N), kThreads, 0, s>>>(C, M * N, beta);
    MOETRON_CUDA_LAUNCHED("gemm (K == 0)");
  }
  return true;
}

}  // namespace

size_t gemm_bf16_weight_scratch_bytes(int64_t M, int64_t K) {
  return kLtWorkspaceBytes + scratch_align(size_t(M) * size_t(K) * sizeof(uint16_t));
}

void gemm_bf16_weight_on(cudaStream_t s, bool transA, bool transB, int64_t M, int64_t N, int64_t K,
                         float alpha, const float* A, const uint16_t* B16, float beta, float* C,
                         void* scratch, size_t scratch_bytes) {
  if (empty_product(s, M, N, K, beta, C)) return;
  if (scratch_bytes < gemm_bf16_weight_scratch_bytes(M, K))
    throw std::logic_error("gemm: scratch smaller than gemm_bf16_weight_scratch_bytes");
  uint8_t* ws = static_cast<uint8_t*>(scratch);
  uint16_t* a16 = reinterpret_cast<uint16_t*>(ws + kLtWorkspaceBytes);
  to_bf16_kernel<<<blocks_for(M * K), kThreads, 0, s>>>(A, M * K, a16);
  MOETRON_CUDA_LAUNCHED("gemm: A to bf16");
  lt_matmul<uint16_t, float>(s, Kind::BF16, transA, transB, M, N, K, alpha, a16, B16, beta, C, ws);
}

template <class T>
size_t gemm_scratch_bytes(int64_t M, int64_t N, int64_t K, GemmPrecision prec) {
  size_t b = kLtWorkspaceBytes;
  if (prec == GemmPrecision::BF16) {
    const size_t e = std::is_same_v<T, float> ? sizeof(uint16_t) : sizeof(double);
    b += scratch_align(size_t(M) * size_t(K) * e) + scratch_align(size_t(K) * size_t(N) * e);
  }
  return b;
}

template <class T>
void gemm_on(cudaStream_t s, bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha,
             const T* A, const T* B, T beta, T* C, GemmPrecision prec, void* scratch,
             size_t scratch_bytes) {
  if (empty_product(s, M, N, K, beta, C)) return;
  if (scratch_bytes < gemm_scratch_bytes<T>(M, N, K, prec))
    throw std::logic_error("gemm: scratch smaller than gemm_scratch_bytes");
  uint8_t* ws = static_cast<uint8_t*>(scratch);
  uint8_t* copies = ws + kLtWorkspaceBytes;
  const int64_t na = M * K, nb = K * N;
  if constexpr (std::is_same_v<T, float>) {
    if (prec == GemmPrecision::BF16) {  // B's copy after the region gemm_bf16_weight_on uses
      const size_t used = gemm_bf16_weight_scratch_bytes(M, K);
      uint16_t* b16 = reinterpret_cast<uint16_t*>(ws + used);
      to_bf16_kernel<<<blocks_for(nb), kThreads, 0, s>>>(B, nb, b16);
      MOETRON_CUDA_LAUNCHED("gemm: B to bf16");
      gemm_bf16_weight_on(s, transA, transB, M, N, K, alpha, A, b16, beta, C, ws, used);
    } else {
      lt_matmul<float, float>(s, Kind::F32, transA, transB, M, N, K, alpha, A, B, beta, C, ws);
    }
  } else {
    if (prec == GemmPrecision::BF16) {
      double* ar = reinterpret_cast<double*>(copies);
      double* br = reinterpret_cast<double*>(copies + scratch_align(na * sizeof(double)));
      round_bf16_kernel<<<blocks_for(na), kThreads, 0, s>>>(A, na, ar);
      MOETRON_CUDA_LAUNCHED("gemm: A rounded to bf16");
      round_bf16_kernel<<<blocks_for(nb), kThreads, 0, s>>>(B, nb, br);
      MOETRON_CUDA_LAUNCHED("gemm: B rounded to bf16");
      A = ar;
      B = br;
    }
    lt_matmul<double, double>(s, Kind::F64, transA, transB, M, N, K, alpha, A, B, beta, C, ws);
  }
}

template <class T>
void gemm(const Exec& ex, bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha,
          const T* A, const T* B, T beta, T* C, GemmPrecision prec, bool dynamic) {
  (void)dynamic;  // see the note at the top
  if (M < 0 || N < 0 || K < 0) throw std::invalid_argument("gemm: negative dimension");
  if (M == 0 || N == 0) return;
  const size_t bytes = K == 0 ? 0 : gemm_scratch_bytes<T>(M, N, K, prec);
  void* scratch = bytes ? workspace(ex, bytes) : nullptr;
  gemm_on<T>(stream_of(ex), transA, transB, M, N, K, alpha, A, B, beta, C, prec, scratch, bytes);
}

void gemm_bf16_weight(const Exec& ex, bool transA, bool transB, int64_t M, int64_t N, int64_t K,
                      float alpha, const float* A, const uint16_t* W16, float beta, float* C) {
  if (M < 0 || N < 0 || K < 0) throw std::invalid_argument("gemm: negative dimension");
  if (M == 0 || N == 0) return;
  const size_t bytes = K == 0 ? 0 : gemm_bf16_weight_scratch_bytes(M, K);
  void* scratch = bytes ? workspace(ex, bytes) : nullptr;
  gemm_bf16_weight_on(stream_of(ex), transA, transB, M, N, K, alpha, A, W16, beta, C, scratch,
                      bytes);
}

template size_t gemm_scratch_bytes<float>(int64_t, int64_t, int64_t, GemmPrecision);
template size_t gemm_scratch_bytes<double>(int64_t, int64_t, int64_t, GemmPrecision);
template void gemm_on<float>(cudaStream_t, bool, bool, int64_t, int64_t, int64_t, float,
                             const float*, const float*, float, float*, GemmPrecision, void*,
                             size_t);
template void gemm_on<double>(cudaStream_t, bool, bool, int64_t, int64_t, int64_t, double,
                              const double*, const double*, double, double*, GemmPrecision, void*,
                              size_t);
MOETRON_OPS_GEMM(float)
MOETRON_OPS_GEMM(double)

cublasLtHandle_t lt_handle() {
  // Never destroyed: destroying at exit would race the CUDA runtime's own teardown.
  static const cublasLtHandle_t h = [] {
    cublasLtHandle_t x = nullptr;
    lt_check(cublaslt().Create(&x), "cublasLtCreate");
    return x;
  }();
  return h;
}

std::optional<cublasLtMatmulAlgo_t> lt_heuristic(cublasLtMatmulDesc_t op, cublasLtMatrixLayout_t a,
                                                 cublasLtMatrixLayout_t b, cublasLtMatrixLayout_t c,
                                                 uint32_t align_a, uint32_t align_b,
                                                 uint32_t align_c, uint64_t workspace,
                                                 cublasStatus_t* status) {
  cublasLtMatmulPreference_t pref = nullptr;
  cublasStatus_t st = cublaslt().MatmulPreferenceCreate(&pref);
  const uint32_t align[4] = {align_a, align_b, align_c, align_c};  // C and D: one buffer
  const cublasLtMatmulPreferenceAttributes_t attr[4] = {
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES,
      CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES};
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublaslt().MatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES,
                                                 &workspace, sizeof(workspace));
  for (int i = 0; i < 4 && st == CUBLAS_STATUS_SUCCESS; ++i)
    st = cublaslt().MatmulPreferenceSetAttribute(pref, attr[i], &align[i], sizeof(align[i]));
  cublasLtMatmulHeuristicResult_t res;
  std::memset(&res, 0, sizeof(res));
  int count = 0;
  if (st == CUBLAS_STATUS_SUCCESS)
    st = cublaslt().MatmulAlgoGetHeuristic(lt_handle(), op, a, b, c, c, pref, 1, &res, &count);
  if (pref) cublaslt().MatmulPreferenceDestroy(pref);
  *status = st;
  if (st == CUBLAS_STATUS_SUCCESS && count >= 1 && res.state == CUBLAS_STATUS_SUCCESS)
    return res.algo;
  return std::nullopt;
}

}  // namespace moetron::kernels::gpu
