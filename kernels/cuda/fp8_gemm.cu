// The block-scaled FP8 GEMMs of a Linear on the GPU (Fprop, Dgrad, Wgrad, kernels/cpu/fp8.h for
// the layouts) and their grouped forms for the routed experts.
//
// Everything goes through one core, nt_gemm: D [M,N] (+)= A [M,K] B [N,K]^T with A in 1x128
// tiles and B in 128x128 blocks or 1x128 tiles, both K-contiguous, scales as the CPU lays them
// out. Two implementations, chosen per call (MOETRON_FP8_GEMM, fp8_cuda.h):
//
//   cuBLASLt (default): the block-scaled FP8 GEMM of cuBLAS >= 12.9 on Hopper,
//     CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F for 1x128 tiles and BLK128x128_32F for 128x128
//     blocks, fp32 output, fp32 compute, fast accumulation off (cuBLAS promotes each 128-K block's
//     partial into fp32 with the scales: the recipe). cuBLASLt's FP8 GEMMs are "TN" only (both
//     operands K-contiguous), which is our layout: in its column-major terms our D^T [N,M] =
//     B A^T, so its A is our B (m = N) and its B is our A (n = M). Its scale layouts differ from
//     ours (NVIDIA's cuBLAS docs, "scaling factor layouts"; TransformerEngine's GEMM-ready
//     blockwise scales follow them): a 1x128-tiled operand of R rows wants [ceil(K/128),
//     round_up(R,4)] (rows contiguous), a 128x128-blocked one [ceil(R/128), round_up(ceil(K/128),
//     4)] (K blocks contiguous, padded to 16 bytes); lt_scales rewrites ours into scratch.
//     Requirements (from the cuBLAS docs on FP8 tensor-core GEMMs, as TransformerEngine checks
//     them): K % 16 == 0 (16-byte rows), M % 8 == 0 and N % 8 == 0, 16-byte aligned pointers,
//     and an algorithm from the heuristic that cublasLtMatmul accepts. When any fails (odd expert
//     sizes, K = 200, ...) the call runs on the kernel below instead: same recipe, so the results
//     agree to rounding.
//   Kernel: a plain tiled CUDA kernel, the recipe written out (cpu::fp8_gemm_nt_blockwise): per
//     64x64 tile of D, per 128-K block, an fp32 partial of the decoded E4M3 products (exact
//     products, summed in k order: the same partial as the CPU's literal recipe), then
//     acc += partial * sa * sb. Deterministic, any shape.
//
// The layouts (per Linear X [M,K] -> Y [M,N], W [N,K]):
//   Fprop  Y  = X W^T      nt_gemm(X, W (128x128))                  M x N, reduce K
//   Dgrad  dX = dY W       dY quantised 1x128 (or 128x128 blocks, scales repeated over rows),
//                          W transposed into scratch (transpose_e4m3_blocks: both paths need
//                          K-contiguous operands), nt_gemm(dY, W^T)  M x K, reduce N
//   Wgrad  dW += dY^T X    dY given quantised 128x1 token-major (grouped_quantize_128x1_t, which
//                          a Linear runs in its backward_input), X requantised (or quantised)
//                          likewise, nt_gemm(dYt, Xt (1x128))       N x K, reduce M, accumulate
// Scratch: one workspace(ex, bytes) per op, carved here; grouped ops size it for their largest
// group and reuse it group after group (stream order keeps the reuse safe).
#include <algorithm>
#include <atomic>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/cuda/fp8_cuda.h"
#include "kernels/cuda/gemm.cuh"
#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/scalar.h"

namespace moetron::kernels::gpu {

namespace fp8 {

namespace {

std::atomic<int64_t> g_lt_calls{0}, g_kernel_calls{0};

constexpr size_t kAlign = 256;
constexpr size_t aligned(size_t bytes) { return (bytes + kAlign - 1) / kAlign * kAlign; }

// Consecutive pieces of one scratch region, each 256-byte aligned.
class Carver {
 public:
  explicit Carver(void* base) : p_(static_cast<char*>(base)) {}
  template <class T>
  T* take(int64_t n) {
    T* r = reinterpret_cast<T*>(p_);
    p_ += aligned(static_cast<size_t>(n) * sizeof(T));
    return r;
  }
  void* rest() const { return p_; }

 private:
  char* p_;
};

// ---- the kernel path ----------------------------------------------------------------------------

constexpr int kBM = 64, kBN = 64, kBK = 32;  // D tile, K step (4 steps per 128-K block)

// D [M,N] (+)= A [M,K] B [N,K]^T; 256 threads as 16 x 16, each 4 x 4 outputs (rows ty + 16 i,
// columns tx + 16 j). Per 128-K block: part = sum_k a_k b_k (k in order), acc += part * sa * sb.
__global__ __launch_bounds__(256) void fp8_gemm_nt_kernel(const uint8_t* A, const float* sA,
                                                          const uint8_t* B, const float* sB,
                                                          int64_t b_tile_rows, int64_t M, int64_t N,
                                                          int64_t K, float* D, bool accumulate) {
  __shared__ float As[kBK][kBM + 1];
  __shared__ float Bs[kBK][kBN + 1];
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const int64_t m0 = int64_t(blockIdx.x) * kBM, n0 = int64_t(blockIdx.y) * kBN;
  const int64_t KB = cdiv(K, 128);
  float acc[4][4] = {};
  for (int64_t kb = 0; kb < KB; ++kb) {
    float part[4][4] = {};
    const int64_t kend = std::min(K, kb * 128 + 128);
    for (int64_t k0 = kb * 128; k0 < kend; k0 += kBK) {
      for (int i = threadIdx.x; i < kBM * kBK; i += blockDim.x) {
        const int row = i / kBK, kk = i % kBK;  // kk fastest: a warp reads 32 bytes of one row
        const int64_t k = k0 + kk, m = m0 + row, n = n0 + row;
        As[kk][row] = (m < M && k < kend) ? e4m3_to_f32(A[m * K + k]) : 0.f;
        Bs[kk][row] = (n < N && k < kend) ? e4m3_to_f32(B[n * K + k]) : 0.f;
      }
      __syncthreads();
      const int kn = static_cast<int>(std::min<int64_t>(kBK, kend - k0));
      for (int kk = 0; kk < kn; ++kk) {
        float a[4], b[4];
        for (int i = 0; i < 4; ++i) a[i] = As[kk][ty + 16 * i];
        for (int j = 0; j < 4; ++j) b[j] = Bs[kk][tx + 16 * j];
        for (int i = 0; i < 4; ++i)
          for (int j = 0; j < 4; ++j)
            part[i][j] = fmaf(a[i], b[j], part[i][j]);  // the product is exact in fp32
      }
      __syncthreads();  // As / Bs are overwritten next step
    }
    float sa[4], sb[4];
    for (int i = 0; i < 4; ++i) {
      const int64_t m = m0 + ty + 16 * i;
      sa[i] = m < M ? sA[m * KB + kb] : 0.f;
    }
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      sb[j] = n < N ? sB[(n / b_tile_rows) * KB + kb] : 0.f;
    }
    for (int i = 0; i < 4; ++i)  // promotion to the fp32 accumulator, no fused rounding
      for (int j = 0; j < 4; ++j)
        acc[i][j] = __fadd_rn(acc[i][j], __fmul_rn(__fmul_rn(part[i][j], sa[i]), sb[j]));
  }
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + ty + 16 * i;
    if (m >= M) continue;
    for (int j = 0; j < 4; ++j) {
      const int64_t n = n0 + tx + 16 * j;
      if (n >= N) continue;
      float* d = D + m * N + n;
      *d = accumulate ? __fadd_rn(acc[i][j], *d) : acc[i][j];  // D = A B + D, as beta = 1
    }
  }
}

void kernel_gemm(cudaStream_t st, const uint8_t* A, const float* sA, const uint8_t* B,
                 const float* sB, Tile tB, int64_t M, int64_t N, int64_t K, float* D,
                 bool accumulate) {
  const int64_t gy = cdiv(N, kBN);
  if (gy > 65535 || cdiv(M, kBM) > 0x7fffffff)
    throw std::invalid_argument("fp8 GEMM kernel: D too large for the grid");
  const dim3 grid(static_cast<unsigned>(cdiv(M, kBM)), static_cast<unsigned>(gy));
  fp8_gemm_nt_kernel<<<grid, 256, 0, st>>>(A, sA, B, sB, tB.rows, M, N, K, D, accumulate);
  MOETRON_CUDA_LAUNCHED("fp8_gemm_nt_kernel");
}

// ---- scale layouts for cuBLASLt -----------------------------------------------------------------

// 1x128 tiles: ours s [R, KB] (row-major) -> out [KB, Rp] (rows contiguous), Rp = round_up(R, 4);
// padding 1.
__global__ void vec128_scales_kernel(const float* s, int64_t R, int64_t KB, int64_t Rp,
                                     float* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < KB * Rp;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t kb = i / Rp, r = i % Rp;
    out[i] = r < R ? s[r * KB + kb] : 1.f;
  }
}
// 128x128 blocks: ours s [RB, KB] -> out [RB, KBp], KBp = round_up(KB, 4); padding 1.
__global__ void blk128_scales_kernel(const float* s, int64_t RB, int64_t KB, int64_t KBp,
                                     float* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < RB * KBp;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t rb = i / KBp, kb = i % KBp;
    out[i] = kb < KB ? s[rb * KB + kb] : 1.f;
  }
}

// floats of cuBLASLt's scale tensor of an operand [R, K] with tiles t (1x128 or 128x128)
int64_t lt_scale_count(int64_t R, int64_t K, Tile t) {
  const int64_t KB = cdiv(K, 128);
  return t.rows == 1 ? KB * round_up(R, 4) : cdiv(R, 128) * round_up(KB, 4);
}

void lt_scales(cudaStream_t st, const float* s, int64_t R, int64_t K, Tile t, float* out) {
  const int64_t KB = cdiv(K, 128), n = lt_scale_count(R, K, t);
  if (t.rows == 1)
    vec128_scales_kernel<<<blocks_for(n), kThreads, 0, st>>>(s, R, KB, round_up(R, 4), out);
  else
    blk128_scales_kernel<<<blocks_for(n), kThreads, 0, st>>>(s, cdiv(R, 128), KB, round_up(KB, 4),
                                                             out);
  MOETRON_CUDA_LAUNCHED("fp8 cuBLASLt scales");
}

bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// cuBLASLt's shape and alignment requirements for the block-scaled FP8 GEMM (top of this file)
bool lt_shape_ok(const uint8_t* A, const uint8_t* B, const float* D, int64_t M, int64_t N,
                 int64_t K) {
  return K % 16 == 0 && M % 8 == 0 && N % 8 == 0 && aligned16(A) && aligned16(B) && aligned16(D);
}

// ---- per-op scratch sizes and bodies (one group of a grouped op = one call) ---------------------

size_t fprop_bytes(int64_t M, int64_t N, int64_t K) {
  return nt_gemm_scratch_bytes(M, N, K, kTile128x128);
}

void fprop_run(cudaStream_t st, const uint8_t* qX, const float* sX, const uint8_t* qW,
               const float* sW, int64_t M, int64_t N, int64_t K, float* Y, void* scratch) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // an empty sum
    MOETRON_CUDA_CHECK(cudaMemsetAsync(Y, 0, static_cast<size_t>(M * N) * sizeof(float), st));
    return;
  }
  nt_gemm(st, qX, sX, qW, sW, kTile128x128, M, N, K, Y, false, scratch);
}

// sdY [M, NB] = s128 [ceil(M/128), NB] repeated over each block's rows
__global__ void repeat_block_scales_kernel(const float* s128, int64_t M, int64_t NB, float* s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < M * NB;
       i += int64_t(gridDim.x) * blockDim.x)
    s[i] = s128[(i / NB / 128) * NB + i % NB];
}

size_t dgrad_bytes(int64_t M, int64_t N, int64_t K, bool blocks128) {
  const int64_t NB = cdiv(N, 128), KB = cdiv(K, 128);
  return aligned(M * N) + aligned(M * NB * 4) + (blocks128 ? aligned(cdiv(M, 128) * NB * 4) : 0) +
         aligned(K * N) + aligned(KB * NB * 4) + nt_gemm_scratch_bytes(M, K, N, kTile128x128);
}

void dgrad_run(cudaStream_t st, const float* dY, int64_t M, int64_t N, int64_t K, const uint8_t* qW,
               const float* sW, bool pow2, bool blocks128, float* dX, bool accumulate,
               void* scratch) {
  if (M == 0 || K == 0) return;
  if (N == 0) {  // an empty sum
    if (!accumulate)
      MOETRON_CUDA_CHECK(cudaMemsetAsync(dX, 0, static_cast<size_t>(M * K) * sizeof(float), st));
    return;
  }
  const int64_t NB = cdiv(N, 128), KB = cdiv(K, 128);
  Carver c(scratch);
  uint8_t* q = c.take<uint8_t>(M * N);  // dY [M,N] codes
  float* s = c.take<float>(M * NB);     // [M, NB]: the 1x128 grid the GEMM reads
  float* s128 = blocks128 ? c.take<float>(cdiv(M, 128) * NB) : nullptr;
  uint8_t* qWt = c.take<uint8_t>(K * N);  // W^T [K,N]
  float* sWt = c.take<float>(KB * NB);    // [KB, NB]
  if (blocks128) {  // App. B.2: 128x128 blocks of dY, each block's scale repeated over its rows
    quantize(st, dY, M, N, kTile128x128, pow2, q, s128);
    repeat_block_scales_kernel<<<blocks_for(M * NB), kThreads, 0, st>>>(s128, M, NB, s);
    MOETRON_CUDA_LAUNCHED("repeat_block_scales");
  } else {
    quantize(st, dY, M, N, kTile1x128, pow2, q, s);
  }
  transpose_e4m3_blocks(st, qW, sW, N, K, qWt, sWt);
  nt_gemm(st, q, s, qWt, sWt, kTile128x128, M, K, N, dX, accumulate, c.rest());
}

size_t wgrad_bytes(int64_t M, int64_t N, int64_t K) {
  const int64_t MB = cdiv(M, 128);
  return aligned(K * M) + aligned(K * MB * 4) + nt_gemm_scratch_bytes(N, K, M, kTile1x128);
}

// dW [N,K] += dY^T X; dY already token-major (qdYt [N,M], sdYt [N, MB]); X from the cached 1x128
// FP8 (qX, sX) or from fp32 (X32)
void wgrad_run(cudaStream_t st, const uint8_t* qdYt, const float* sdYt, const uint8_t* qX,
               const float* sX, const float* X32, int64_t M, int64_t N, int64_t K, bool pow2_x,
               float* dW, void* scratch) {
  if (M == 0 || N == 0 || K == 0) return;
  const int64_t MB = cdiv(M, 128);
  Carver c(scratch);
  uint8_t* qXt = c.take<uint8_t>(K * M);  // Xt [K,M]
  float* sXt = c.take<float>(K * MB);     // [K, MB]
  if (X32)
    quantize_128x1_t(st, X32, M, K, pow2_x, qXt, sXt);
  else
    requantize_1x128_to_128x1(st, qX, sX, M, K, pow2_x, qXt, sXt);
  nt_gemm(st, qdYt, sdYt, qXt, sXt, kTile1x128, N, K, M, dW, /*accumulate=*/true, c.rest());
}

}  // namespace

// ---- the core -----------------------------------------------------------------------------------

GemmPath gemm_path_from_env() {
  const char* e = std::getenv("MOETRON_FP8_GEMM");
  if (e == nullptr || *e == '\0' || std::strcmp(e, "cublaslt") == 0) return GemmPath::CublasLt;
  if (std::strcmp(e, "kernel") == 0) return GemmPath::Kernel;
  throw std::invalid_argument(std::string("MOETRON_FP8_GEMM=") + e +
                              ": expected cublaslt or kernel");
}

GemmCounts gemm_counts() { return GemmCounts{g_lt_calls.load(), g_kernel_calls.load()}; }

size_t nt_gemm_scratch_bytes(int64_t M, int64_t N, int64_t K, Tile tB) {
  return aligned(lt_scale_count(N, K, tB) * 4) + aligned(lt_scale_count(M, K, kTile1x128) * 4) +
         kLtWorkspaceBytes;
}

void nt_gemm(cudaStream_t st, const uint8_t* A, const float* sA, const uint8_t* B, const float* sB,
             Tile tB, int64_t M, int64_t N, int64_t K, float* D, bool accumulate, void* scratch) {
  if (M < 0 || N < 0 || K < 0 || tB.cols != 128 || (tB.rows != 1 && tB.rows != 128))
    throw std::invalid_argument("fp8 nt_gemm: bad sizes or B tile");
  if (M == 0 || N == 0) return;
  if (K > 0 && gemm_path_from_env() == GemmPath::CublasLt && lt_shape_ok(A, B, D, M, N, K)) {
    Carver c(scratch);
    float* lt_a = c.take<float>(lt_scale_count(N, K, tB));          // cuBLASLt's A: our B
    float* lt_b = c.take<float>(lt_scale_count(M, K, kTile1x128));  // its B: our A
    lt_scales(st, sB, N, K, tB, lt_a);
    lt_scales(st, sA, M, K, kTile1x128, lt_b);
    if (cublaslt_gemm_tn(st, B, lt_a, tB.rows == 128, A, lt_b, N, M, K, D, accumulate, c.rest(),
                         kLtWorkspaceBytes)) {
      ++g_lt_calls;
      return;
    }
  }
  ++g_kernel_calls;
  kernel_gemm(st, A, sA, B, sB, tB, M, N, K, D, accumulate);
}

}  // namespace fp8

// ---- the ops ------------------------------------------------------------------------------------

void fp8_fprop(const Exec& ex, const uint8_t* qX, const float* sX, const uint8_t* qW,
               const float* sW, int64_t M, int64_t N, int64_t K, float* Y) {
  if (M < 0 || N < 0 || K < 0) throw std::invalid_argument("fp8_fprop: negative size");
  if (M == 0 || N == 0) return;
  fp8::fprop_run(stream_of(ex), qX, sX, qW, sW, M, N, K, Y,
                 workspace(ex, fp8::fprop_bytes(M, N, K)));
}

void fp8_linear_dgrad(const Exec& ex, const float* dY, int64_t M, int64_t N, int64_t K,
                      const uint8_t* qW, const float* sW, bool pow2, bool blocks128, float* dX,
                      bool accumulate) {
  if (M < 0 || N < 0 || K < 0) throw std::invalid_argument("fp8_linear_dgrad: negative size");
  if (M == 0 || K == 0) return;
  fp8::dgrad_run(stream_of(ex), dY, M, N, K, qW, sW, pow2, blocks128, dX, accumulate,
                 workspace(ex, fp8::dgrad_bytes(M, N, K, blocks128)));
}

void fp8_linear_wgrad(const Exec& ex, const uint8_t* qdYt, const float* sdYt, const uint8_t* qX,
                      const float* sX, int64_t M, int64_t N, int64_t K, bool pow2_x, float* dW) {
  if (M < 0 || N < 0 || K < 0) throw std::invalid_argument("fp8_linear_wgrad: negative size");
  if (M == 0 || N == 0 || K == 0) return;
  fp8::wgrad_run(stream_of(ex), qdYt, sdYt, qX, sX, nullptr, M, N, K, pow2_x, dW,
                 workspace(ex, fp8::wgrad_bytes(M, N, K)));
}

void fp8_linear_wgrad_f32(const Exec& ex, const uint8_t* qdYt, const float* sdYt, const float* X,
                          int64_t M, int64_t N, int64_t K, bool pow2_x, float* dW) {
  if (M < 0 || N < 0 || K < 0) throw std::invalid_argument("fp8_linear_wgrad_f32: negative size");
  if (M == 0 || N == 0 || K == 0) return;
  fp8::wgrad_run(stream_of(ex), qdYt, sdYt, nullptr, nullptr, X, M, N, K, pow2_x, dW,
                 workspace(ex, fp8::wgrad_bytes(M, N, K)));
}

// Grouped: group g owns rows [off[g], off[g+1]) of the activations (off: host memory), weights
// W + g*N*K (scales + g*ceil(N/128)*ceil(K/128)); groups without rows are skipped (their dW left
// as it is).
namespace {
int64_t blocks128(int64_t R, int64_t C) { return fp8::cdiv(R, 128) * fp8::cdiv(C, 128); }
}  // namespace

void grouped_fp8_fprop(const Exec& ex, const int64_t* off, int64_t G, const uint8_t* qX,
                       const float* sX, const uint8_t* qW, const float* sW, int64_t N, int64_t K,
                       float* Y) {
  cudaStream_t st = stream_of(ex);
  size_t bytes = 0;
  for (int64_t g = 0; g < G; ++g)
    if (off[g + 1] > off[g]) bytes = std::max(bytes, fp8::fprop_bytes(off[g + 1] - off[g], N, K));
  if (bytes == 0) return;
  void* scratch = workspace(ex, bytes);
  const int64_t KB = fp8::cdiv(K, 128);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = off[g], rows = off[g + 1] - off[g];
    if (rows == 0) continue;
    fp8::fprop_run(st, qX + r0 * K, sX + r0 * KB, qW + g * N * K, sW + g * blocks128(N, K), rows, N,
                   K, Y + r0 * N, scratch);
  }
}

void grouped_fp8_linear_dgrad(const Exec& ex, const int64_t* off, int64_t G, const float* dY,
                              int64_t N, int64_t K, const uint8_t* qW, const float* sW, bool pow2,
                              bool blocks, float* dX) {
  cudaStream_t st = stream_of(ex);
  size_t bytes = 0;
  for (int64_t g = 0; g < G; ++g)
    if (off[g + 1] > off[g])
      bytes = std::max(bytes, fp8::dgrad_bytes(off[g + 1] - off[g], N, K, blocks));
  if (bytes == 0) return;
  void* scratch = workspace(ex, bytes);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = off[g], rows = off[g + 1] - off[g];
    if (rows == 0) continue;
    fp8::dgrad_run(st, dY + r0 * N, rows, N, K, qW + g * N * K, sW + g * blocks128(N, K), pow2,
                   blocks, dX + r0 * K, /*accumulate=*/false, scratch);
  }
}

namespace {
void grouped_wgrad(const Exec& ex, const int64_t* off, int64_t G, const uint8_t* qdYt,
                   const float* sdYt, const uint8_t* qX, const float* sX, const float* X32,
                   int64_t N, int64_t K, bool pow2_x, float* dW) {
  cudaStream_t st = stream_of(ex);
  size_t bytes = 0;
  for (int64_t g = 0; g < G; ++g)
    if (off[g + 1] > off[g]) bytes = std::max(bytes, fp8::wgrad_bytes(off[g + 1] - off[g], N, K));
  if (bytes == 0) return;
  void* scratch = workspace(ex, bytes);
  const int64_t KB = fp8::cdiv(K, 128);
  const std::vector<int64_t> t = row_tile_offsets(off, G);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = off[g], rows = off[g + 1] - off[g];
    if (rows == 0) continue;
    fp8::wgrad_run(st, qdYt + r0 * N, sdYt + t[g] * N, X32 ? nullptr : qX + r0 * K,
                   X32 ? nullptr : sX + r0 * KB, X32 ? X32 + r0 * K : nullptr, rows, N, K, pow2_x,
                   dW + g * N * K, scratch);
  }
}
}  // namespace

void grouped_fp8_linear_wgrad(const Exec& ex, const int64_t* off, int64_t G, const uint8_t* qdYt,
                              const float* sdYt, const uint8_t* qX, const float* sX, int64_t N,
                              int64_t K, bool pow2_x, float* dW) {
  grouped_wgrad(ex, off, G, qdYt, sdYt, qX, sX, nullptr, N, K, pow2_x, dW);
}

void grouped_fp8_linear_wgrad_f32(const Exec& ex, const int64_t* off, int64_t G,
                                  const uint8_t* qdYt, const float* sdYt, const float* X, int64_t N,
                                  int64_t K, bool pow2_x, float* dW) {
  grouped_wgrad(ex, off, G, qdYt, sdYt, nullptr, nullptr, X, N, K, pow2_x, dW);
}

}  // namespace moetron::kernels::gpu
