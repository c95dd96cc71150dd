// GEMM: the row-major C = alpha op(A) op(B) + beta C behind every linear layer.
//
// Backends (numbers and the choice are in docs/performance.md, "## GEMM"):
//   double, FP32   -> OpenBLAS cblas_dgemm.
//   double, BF16   -> inputs rounded to bf16 (through float) into scratch copies, then dgemm.
//   float,  FP32   -> oneDNN f32 matmul by default (faster than this OpenBLAS build on the model's
//                     shapes on AVX-512 machines); OpenBLAS sgemm if MOETRON_GEMM_FP32=openblas.
//   float,  BF16   -> inputs converted to bf16 (round to nearest even, scalar.h) into per-thread
//                     scratch buffers, then oneDNN bf16 x bf16 -> f32 matmul (fp32 accumulation;
//                     avx512_bf16 / AMX where the CPU has them). gemm_bf16_weight: the same with
//                     the B operand given in bf16 (a Linear's cached weight copy).
// oneDNN primitives are expensive to create (JIT + blocking decisions), so they are cached per
// (shape, transposes, dtype, alpha != 1, beta != 0, thread count) in a mutex-guarded map; a
// cached primitive is immutable and executes concurrently from any thread (each thread passes its
// own scratchpad). Transposes are
// expressed as strides of the memory descriptors, so no operand is ever copied for layout.
//
// Shapes: A [M,K] (or [K,M] if transA), B [K,N] (or [N,K] if transB), C [M,N]; all contiguous.
#include <cblas.h>
#include <omp.h>

#include <cstdlib>
#include <cstring>
#include <dnnl.hpp>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <unordered_map>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"

namespace moetron::kernels::cpu {
namespace {

// ---- small helpers ---------------------------------------------------------------------------

// C[n] *= beta (beta == 0 writes exact zeros so that NaN/Inf in an uninitialised C cannot leak).
template <class T>
void scale_inplace(T* C, int64_t n, T beta) {
  if (beta == T(1)) return;
#pragma omp parallel for simd if (n > (1 << 16))
  for (int64_t i = 0; i < n; ++i) C[i] = beta == T(0) ? T(0) : C[i] * beta;
}

// dst[n] = bf16(src[n]).
void to_bf16(const float* src, int64_t n, uint16_t* dst) {
#pragma omp parallel for simd if (n > (1 << 15))
  for (int64_t i = 0; i < n; ++i) dst[i] = f32_to_bf16(src[i]);
}

// dst[n] = bf16-rounded src[n] (through float), kept in double.
void round_bf16_copy(const double* src, int64_t n, double* dst) {
#pragma omp parallel for simd if (n > (1 << 15))
  for (int64_t i = 0; i < n; ++i) dst[i] = round_bf16(static_cast<float>(src[i]));
}

// Per-thread scratch that only grows: no allocation once a shape has been seen.
template <class T>
T* scratch(std::vector<T>& buf, int64_t n) {
  if (static_cast<int64_t>(buf.size()) < n) buf.resize(n);
  return buf.data();
}

// ---- oneDNN matmul with a primitive cache ----------------------------------------------------

struct PrimKey {
  int64_t M, N, K;
  bool ta, tb, bf16, scaled, accumulate;
  int nthr;
  bool operator==(const PrimKey&) const = default;
};
struct PrimKeyHash {
  size_t operator()(const PrimKey& k) const {
    size_t h = std::hash<int64_t>()(k.M);
    auto mix = [&h](size_t v) { h ^= v + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2); };
    mix(std::hash<int64_t>()(k.N));
    mix(std::hash<int64_t>()(k.K));
    mix((k.ta ? 1u : 0u) | (k.tb ? 2u : 0u) | (k.bf16 ? 4u : 0u) | (k.scaled ? 8u : 0u) |
        (k.accumulate ? 16u : 0u));
    mix(static_cast<size_t>(k.nthr));
    return h;
  }
};
struct Prim {
  dnnl::matmul prim;
  dnnl::memory::desc a, b, c, scratch;
};

dnnl::engine& cpu_engine() {
  static dnnl::engine eng(dnnl::engine::kind::cpu, 0);
  return eng;
}

// Row-major operand descriptors of C[M,N] = op(A)[M,K] op(B)[K,N] (a transpose is a stride).
void descs(const PrimKey& k, dnnl::memory::desc& a, dnnl::memory::desc& b, dnnl::memory::desc& c) {
  using dnnl::memory;
  const auto dt = k.bf16 ? memory::data_type::bf16 : memory::data_type::f32;
  a = memory::desc({k.M, k.K}, dt, k.ta ? memory::dims{1, k.M} : memory::dims{k.K, 1});
  b = memory::desc({k.K, k.N}, dt, k.tb ? memory::dims{1, k.K} : memory::dims{k.N, 1});
  c = memory::desc({k.M, k.N}, memory::data_type::f32, memory::dims{k.N, 1});
}

// Dynamic-shape keys carry DNNL_RUNTIME_DIM_VAL for M, N, K: one primitive serves every size.
std::shared_ptr<const Prim> make_prim(const PrimKey& k) {
  auto p = std::make_shared<Prim>();
  descs(k, p->a, p->b, p->c);
  dnnl::primitive_attr attr;
  // user scratchpad: the caller passes per-thread scratch memory, so the same cached primitive
  // can run in several threads at once (the library-owned scratchpad is shared and races).
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  if (k.scaled) attr.set_output_scales(0, {DNNL_RUNTIME_F32_VAL});
  if (k.accumulate) {
    dnnl::post_ops po;
    po.append_sum(1.0f);
    attr.set_post_ops(po);
  }
  dnnl::matmul::desc desc(p->a, p->b, p->c);
  dnnl::matmul::primitive_desc pd(desc, attr, cpu_engine());
  p->prim = dnnl::matmul(pd);
  p->scratch = pd.scratchpad_desc();
  return p;
}

std::shared_ptr<const Prim> get_prim(const PrimKey& k) {
  static std::mutex mu;
  static std::unordered_map<PrimKey, std::shared_ptr<const Prim>, PrimKeyHash> cache;
  {
    std::lock_guard<std::mutex> lock(mu);
    auto it = cache.find(k);
    if (it != cache.end()) return it->second;
  }
  // Created outside the lock: creation takes ~0.1-1 ms and other shapes should not wait on it.
  auto p = make_prim(k);
  std::lock_guard<std::mutex> lock(mu);
  return cache.emplace(k, std::move(p)).first->second;  // a racing twin wins; ours is dropped
}

// C[M,N] = alpha op(A) op(B) + beta C with A, B either f32 or bf16 (bit patterns), C f32.
void onednn_matmul(bool bf16, bool ta, bool tb, int64_t M, int64_t N, int64_t K, float alpha,
                   const void* A, const void* B, float beta, float* C, bool dynamic) {
  if (beta != 0.0f && beta != 1.0f) scale_inplace(C, M * N, beta);
  const PrimKey real{M, N, K, ta, tb, bf16, alpha != 1.0f, beta != 0.0f, omp_get_max_threads()};
  PrimKey key = real;
  if (dynamic) key.M = key.N = key.K = DNNL_RUNTIME_DIM_VAL;
  const auto p = get_prim(key);
  dnnl::engine& eng = cpu_engine();
  thread_local dnnl::stream stream(eng);
  dnnl::memory::desc a = p->a, b = p->b, c = p->c;
  if (dynamic) descs(real, a, b, c);  // the actual sizes, at execution
  std::unordered_map<int, dnnl::memory> args;
  args.emplace(DNNL_ARG_SRC, dnnl::memory(a, eng, const_cast<void*>(A)));
  args.emplace(DNNL_ARG_WEIGHTS, dnnl::memory(b, eng, const_cast<void*>(B)));
  args.emplace(DNNL_ARG_DST, dnnl::memory(c, eng, C));
  thread_local std::vector<uint8_t> scratch;
  const size_t sbytes = p->scratch.get_size();
  if (scratch.size() < sbytes) scratch.resize(sbytes);
  args.emplace(DNNL_ARG_SCRATCHPAD, dnnl::memory(p->scratch, eng, scratch.data()));
  if (key.scaled) {
    dnnl::memory::desc sd({1}, dnnl::memory::data_type::f32, dnnl::memory::dims{1});
    args.emplace(DNNL_ARG_ATTR_OUTPUT_SCALES, dnnl::memory(sd, eng, &alpha));
  }
  p->prim.execute(stream, args);
  stream.wait();
}

enum class F32Backend { OneDNN, OpenBLAS };

F32Backend f32_backend() {
  static const F32Backend b = [] {
    const char* e = std::getenv("MOETRON_GEMM_FP32");
    if (e && std::string(e) == "openblas") return F32Backend::OpenBLAS;
    return F32Backend::OneDNN;
  }();
  return b;
}

CBLAS_TRANSPOSE tr(bool t) { return t ? CblasTrans : CblasNoTrans; }

}  // namespace

namespace {

// C = alpha op(A) op(B16) + beta C, B already in bf16: A converted, the bf16 matmul (K > 0).
void bf16_matmul(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                 const float* A, const uint16_t* B16, float beta, float* C, bool dynamic) {
  thread_local std::vector<uint16_t> abuf;
  uint16_t* a16 = scratch(abuf, M * K);
  to_bf16(A, M * K, a16);
  onednn_matmul(true, transA, transB, M, N, K, alpha, a16, B16, beta, C, dynamic);
}

// Handles the shapes with nothing to multiply (true: done, C = beta C where K == 0).
template <class T>
bool empty_product(int64_t M, int64_t N, int64_t K, T beta, T* C) {
  if (M < 0 || N < 0 || K < 0) throw std::invalid_argument("gemm: negative dimension");
  if (M == 0 || N == 0) return true;
  if (K == 0) scale_inplace(C, M * N, beta);
  return K == 0;
}

void gemm_f32(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
              const float* A, const float* B, float beta, float* C, GemmPrecision prec,
              bool dynamic) {
  if (prec == GemmPrecision::BF16) {
    thread_local std::vector<uint16_t> bbuf;
    uint16_t* b16 = scratch(bbuf, K * N);
    to_bf16(B, K * N, b16);
    return bf16_matmul(transA, transB, M, N, K, alpha, A, b16, beta, C, dynamic);
  }
  if (f32_backend() == F32Backend::OneDNN) {
    return onednn_matmul(false, transA, transB, M, N, K, alpha, A, B, beta, C, dynamic);
  }
  cblas_sgemm(CblasRowMajor, tr(transA), tr(transB), M, N, K, alpha, A, transA ? M : K, B,
              transB ? K : N, beta, C, N);
}

void gemm_f64(bool transA, bool transB, int64_t M, int64_t N, int64_t K, double alpha,
              const double* A, const double* B, double beta, double* C, GemmPrecision prec) {
  if (prec == GemmPrecision::BF16) {
    thread_local std::vector<double> abuf, bbuf;
    double* ar = scratch(abuf, M * K);
    double* br = scratch(bbuf, K * N);
    round_bf16_copy(A, M * K, ar);
    round_bf16_copy(B, K * N, br);
    A = ar;
    B = br;
  }
  cblas_dgemm(CblasRowMajor, tr(transA), tr(transB), M, N, K, alpha, A, transA ? M : K, B,
              transB ? K : N, beta, C, N);
}

}  // namespace

template <class T>
void gemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, T alpha, const T* A,
          const T* B, T beta, T* C, GemmPrecision prec, bool dynamic) {
  if (empty_product(M, N, K, beta, C)) return;
  if constexpr (std::is_same_v<T, float>) {
    gemm_f32(transA, transB, M, N, K, alpha, A, B, beta, C, prec, dynamic);
  } else {
    gemm_f64(transA, transB, M, N, K, alpha, A, B, beta, C, prec);
  }
}

void gemm_bf16_weight(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha,
                      const float* A, const uint16_t* W16, float beta, float* C, bool dynamic) {
  if (!empty_product(M, N, K, beta, C))
    bf16_matmul(transA, transB, M, N, K, alpha, A, W16, beta, C, dynamic);
}

template void gemm<float>(bool, bool, int64_t, int64_t, int64_t, float, const float*, const float*,
                          float, float*, GemmPrecision, bool);
template void gemm<double>(bool, bool, int64_t, int64_t, int64_t, double, const double*,
                           const double*, double, double*, GemmPrecision, bool);

}  // namespace moetron::kernels::cpu
