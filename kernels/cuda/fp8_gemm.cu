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
//                          W given transposed (the weight cache's transpose_e4m3_blocks: both
//                          paths need N-contiguous operands), nt_gemm(dY, W^T)  M x K, reduce N
//   Wgrad  dW += dY^T X    dY given quantised 128x1 token-major (grouped_quantize_128x1_t, which
//                          a Linear runs in its backward_input), X requantised (or quantised)
//                          likewise, nt_gemm(dYt, Xt (1x128))       N x K, reduce M, accumulate
// Scratch: one workspace(ex, bytes) per op, carved here; grouped ops size the GEMMs' part for
// their largest group and reuse it group after group (stream order keeps the reuse safe).
// Launches: a routed expert's GEMM is microseconds of GPU time, about what its launch costs the
// host, so a grouped op launches only the GEMM per group: it makes the operands it quantises
// for all its groups at once (Dgrad's dY in 1x128 tiles: one launch, a tile lies within a row;
// Wgrad's X^T in 128x1 tiles: one launch per 64 groups, as grouped_quantize_128x1_t) and the
// cuBLASLt scale layouts of every group's operands in one or two launches (before: per group 3,
// 6 and 4 launches, then 1, 3 and 2; tests/test_cuda_fp8.cpp). Its scratch holds those operands
// for all groups (Dgrad: rows x N codes; Wgrad: rows x K), then one group's GEMM scratch.
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

// The scales' layouts cuBLASLt reads, for any number of operands per launch: a grouped op makes
// them for all its groups before its first GEMM, so that each expert's Fprop is one launch instead
// of three. Each operand's layout starts 256-byte aligned in `out`, as a single call's scratch
// carves it.
constexpr int kVecBatch = 64;
struct LtVecBatch {  // up to kVecBatch operands, a kernel argument (2 KiB)
  int n;
  int64_t src[kVecBatch], rows[kVecBatch], kb[kVecBatch], end[kVecBatch];
};

// 1x128 tiles: operand j's scales s + src[j] [rows, kb] (row-major) -> [kb, round_up(rows, 4)]
// (rows contiguous), padding 1, at out + (j ? end[j-1] : 0).
__global__ void vec128_scales_kernel(const float* s, LtVecBatch b, float* out) {
  const int64_t total = b.end[b.n - 1];
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int j = range_of(b.end, b.n, i);  // the operand i falls in
    const int64_t at = i - (j ? b.end[j - 1] : 0), R = b.rows[j], Rp = round_up(R, 4);
    if (at >= b.kb[j] * Rp) continue;  // the gap up to the next 256 bytes
    const int64_t kb = at / Rp, r = at % Rp;
    out[i] = r < R ? s[b.src[j] + r * b.kb[j] + kb] : 1.f;
  }
}
// 128x128 blocks of G operands alike: operand g's scales [RB, CB] at s + g RB CB -> [RB, CBp] at
// out + g slot, padding 1 (CBp = round_up(CB, 4): cuBLASLt's layout).
__global__ void blk128_scales_kernel(const float* s, int64_t G, int64_t RB, int64_t CB, int64_t CBp,
                                     int64_t slot, float* out) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < G * slot;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t g = i / slot, at = i % slot;
    if (at >= RB * CBp) continue;
    const int64_t rb = at / CBp, cb = at % CBp;
    out[i] = cb < CB ? s[(g * RB + rb) * CB + cb] : 1.f;
  }
}

int64_t lt_aligned_floats(int64_t n) { return static_cast<int64_t>(aligned(size_t(n) * 4) / 4); }

// floats of cuBLASLt's scale tensor of an operand [R, K] with tiles t (1x128 or 128x128)
int64_t lt_scale_count(int64_t R, int64_t K, Tile t) {
  const int64_t KB = cdiv(K, 128);
  return t.rows == 1 ? KB * round_up(R, 4) : cdiv(R, 128) * round_up(KB, 4);
}

void lt_scales(cudaStream_t st, const float* s, int64_t R, int64_t K, Tile t, float* out) {
  if (t.rows == 1) {
    lt_vec_scales(st, s, {LtVecOperand{0, R, K}}, out);
  } else {
    const int64_t RB = cdiv(R, 128), KB = cdiv(K, 128);
    lt_blk_scales(st, s, 1, RB, KB, out);
  }
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
               const float* sW, int64_t M, int64_t N, int64_t K, float* Y, void* scratch,
               LtScales lt = {}) {
  if (M == 0 || N == 0) return;
  if (K == 0) {  // an empty sum
    MOETRON_CUDA_CHECK(cudaMemsetAsync(Y, 0, static_cast<size_t>(M * N) * sizeof(float), st));
    return;
  }
  nt_gemm(st, qX, sX, qW, sW, kTile128x128, M, N, K, Y, false, scratch, lt);
}

// sdY [M, NB] = s128 [ceil(M/128), NB] repeated over each block's rows
__global__ void repeat_block_scales_kernel(const float* s128, int64_t M, int64_t NB, float* s) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < M * NB;
       i += int64_t(gridDim.x) * blockDim.x)
    s[i] = s128[(i / NB / 128) * NB + i % NB];
}

// The quantisers write the scales of a GEMM's operand in cuBLASLt's layout too (one launch less
// per GEMM) when cuBLASLt may run it and the layout has no padding (rows % 4 == 0).
bool quantize_lt_too(int64_t rows) {
  return rows % 4 == 0 && gemm_path_from_env() == GemmPath::CublasLt;
}

size_t dgrad_bytes(int64_t M, int64_t N, int64_t K, bool blocks128) {
  const int64_t NB = cdiv(N, 128);
  return aligned(M * N) + aligned(M * NB * 4) + (blocks128 ? aligned(cdiv(M, 128) * NB * 4) : 0) +
         aligned(M * NB * 4) + nt_gemm_scratch_bytes(M, K, N, kTile128x128);
}

// dX [M,K] (+)= dY [M,N] W from W^T [K,N] (qWt, sWt [KB, NB]: the weight cache's transpose);
// lt_wt: sWt in cuBLASLt's layout when the caller made it (a grouped op, all groups at once)
void dgrad_run(cudaStream_t st, const float* dY, int64_t M, int64_t N, int64_t K,
               const uint8_t* qWt, const float* sWt, bool pow2, bool blocks128, float* dX,
               bool accumulate, void* scratch, const float* lt_wt = nullptr) {
  if (M == 0 || K == 0) return;
  if (N == 0) {  // an empty sum
    if (!accumulate)
      MOETRON_CUDA_CHECK(cudaMemsetAsync(dX, 0, static_cast<size_t>(M * K) * sizeof(float), st));
    return;
  }
  const int64_t NB = cdiv(N, 128);
  Carver c(scratch);
  uint8_t* q = c.take<uint8_t>(M * N);  // dY [M,N] codes
  float* s = c.take<float>(M * NB);     // [M, NB]: the 1x128 grid the GEMM reads
  float* s128 = blocks128 ? c.take<float>(cdiv(M, 128) * NB) : nullptr;
  float* lt_s =
      !blocks128 && quantize_lt_too(M) ? c.take<float>(M * NB) : nullptr;  // s, cuBLASLt's
  if (blocks128) {  // App. B.2: 128x128 blocks of dY, each block's scale repeated over its rows
    quantize(st, dY, M, N, kTile128x128, pow2, q, s128);
    repeat_block_scales_kernel<<<blocks_for(M * NB), kThreads, 0, st>>>(s128, M, NB, s);
    MOETRON_CUDA_LAUNCHED("repeat_block_scales");
  } else {
    quantize(st, dY, M, N, kTile1x128, pow2, q, s, lt_s);
  }
  nt_gemm(st, q, s, qWt, sWt, kTile128x128, M, K, N, dX, accumulate, c.rest(),
          LtScales{.a = lt_s, .b = lt_wt});
}

size_t wgrad_bytes(int64_t M, int64_t N, int64_t K) {
  const int64_t MB = cdiv(M, 128);
  return aligned(K * M) + 2 * aligned(K * MB * 4) + nt_gemm_scratch_bytes(N, K, M, kTile1x128);
}

// dW [N,K] += dY^T X; dY already token-major (qdYt [N,M], sdYt [N, MB]); X from the cached 1x128
// FP8 (qX, sX) or from fp32 (X32)
void wgrad_run(cudaStream_t st, const uint8_t* qdYt, const float* sdYt, const uint8_t* qX,
               const float* sX, const float* X32, int64_t M, int64_t N, int64_t K, bool pow2_x,
               float* dW, void* scratch, const float* lt_dyt = nullptr) {
  if (M == 0 || N == 0 || K == 0) return;
  const int64_t MB = cdiv(M, 128);
  Carver c(scratch);
  uint8_t* qXt = c.take<uint8_t>(K * M);                               // Xt [K,M]
  float* sXt = c.take<float>(K * MB);                                  // [K, MB]
  float* lt_s = quantize_lt_too(K) ? c.take<float>(K * MB) : nullptr;  // sXt, cuBLASLt's
  if (X32)
    quantize_128x1_t(st, X32, M, K, pow2_x, qXt, sXt, lt_s);
  else
    requantize_1x128_to_128x1(st, qX, sX, M, K, pow2_x, qXt, sXt, lt_s);
  nt_gemm(st, qdYt, sdYt, qXt, sXt, kTile1x128, N, K, M, dW, /*accumulate=*/true, c.rest(),
          LtScales{.a = lt_dyt, .b = lt_s});
}

}  // namespace

// ---- the core -----------------------------------------------------------------------------------

std::vector<int64_t> lt_vec_offsets(const std::vector<LtVecOperand>& ops) {
  std::vector<int64_t> at(ops.size() + 1, 0);
  for (size_t j = 0; j < ops.size(); ++j)
    at[j + 1] = at[j] + lt_aligned_floats(lt_scale_count(ops[j].rows, ops[j].K, kTile1x128));
  return at;
}

void lt_vec_scales(cudaStream_t st, const float* s, const std::vector<LtVecOperand>& ops,
                   float* out) {
  const std::vector<int64_t> at = lt_vec_offsets(ops);
  for (size_t first = 0; first < ops.size(); first += kVecBatch) {
    LtVecBatch b{};
    b.n = static_cast<int>(std::min<size_t>(kVecBatch, ops.size() - first));
    for (int j = 0; j < b.n; ++j) {
      const LtVecOperand& o = ops[first + j];
      b.src[j] = o.src, b.rows[j] = o.rows, b.kb[j] = cdiv(o.K, 128);
      b.end[j] = at[first + j + 1] - at[first];
    }
    if (b.end[b.n - 1] == 0) continue;
    vec128_scales_kernel<<<blocks_for(b.end[b.n - 1]), kThreads, 0, st>>>(s, b, out + at[first]);
    MOETRON_CUDA_LAUNCHED("fp8 cuBLASLt scales (1x128)");
  }
}

int64_t lt_blk_slot(int64_t RB, int64_t CB) { return lt_aligned_floats(RB * round_up(CB, 4)); }

void lt_blk_scales(cudaStream_t st, const float* s, int64_t G, int64_t RB, int64_t CB, float* out) {
  const int64_t slot = lt_blk_slot(RB, CB);
  if (G <= 0 || slot == 0) return;
  blk128_scales_kernel<<<blocks_for(G * slot), kThreads, 0, st>>>(s, G, RB, CB, round_up(CB, 4),
                                                                  slot, out);
  MOETRON_CUDA_LAUNCHED("fp8 cuBLASLt scales (128x128)");
}

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
             Tile tB, int64_t M, int64_t N, int64_t K, float* D, bool accumulate, void* scratch,
             LtScales made) {
  if (M < 0 || N < 0 || K < 0 || tB.cols != 128 || (tB.rows != 1 && tB.rows != 128))
    throw std::invalid_argument("fp8 nt_gemm: bad sizes or B tile");
  if (M == 0 || N == 0) return;
  if (K > 0 && gemm_path_from_env() == GemmPath::CublasLt && lt_shape_ok(A, B, D, M, N, K)) {
    Carver c(scratch);
    const float* lt_a = made.b;  // cuBLASLt's A: our B
    const float* lt_b = made.a;  // its B: our A
    if (!lt_a) {
      float* p = c.take<float>(lt_scale_count(N, K, tB));
      lt_scales(st, sB, N, K, tB, p);
      lt_a = p;
    }
    if (!lt_b) {
      float* p = c.take<float>(lt_scale_count(M, K, kTile1x128));
      lt_scales(st, sA, M, K, kTile1x128, p);
      lt_b = p;
    }
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
                      const uint8_t* qWt, const float* sWt, bool pow2, bool blocks128, float* dX,
                      bool accumulate) {
  if (M < 0 || N < 0 || K < 0) throw std::invalid_argument("fp8_linear_dgrad: negative size");
  if (M == 0 || K == 0) return;
  fp8::dgrad_run(stream_of(ex), dY, M, N, K, qWt, sWt, pow2, blocks128, dX, accumulate,
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

// A grouped op's scratch, one workspace: the operands it makes for all its groups at once
// (`operands`, carved by the op, which enqueues their making), the cuBLASLt layouts of every
// group's scales (when cuBLASLt may run the GEMMs; made by make_layouts once the operands they
// read are enqueued), then one group's GEMM scratch, reused group after group (stream order).
struct GroupedScratch {
  std::vector<std::vector<fp8::LtVecOperand>> lists;  // the 1x128 operands, one per group
  std::vector<std::vector<int64_t>> vec_at;           // with rows, in order, per list
  std::vector<float*> vec;                            // their layouts (lt_vec_scales), per list
  float* blk = nullptr;                               // lt_blk_scales of the G weights
  int64_t G = 0, RB = 0, CB = 0, blk_slot = 0;
  void* operands = nullptr;
  void* group = nullptr;

  // weights: the G weights' blocks RB x CB (0: no weight operand)
  GroupedScratch(const Exec& ex, size_t operand_bytes,
                 std::vector<std::vector<fp8::LtVecOperand>> v, int64_t groups, int64_t rb,
                 int64_t cb, size_t group_bytes)
      : lists(std::move(v)), G(groups), RB(rb), CB(cb) {
    const bool lt = fp8::gemm_path_from_env() == fp8::GemmPath::CublasLt;
    size_t bytes = fp8::aligned(operand_bytes) + group_bytes;
    for (const auto& l : lists) {
      vec_at.push_back(lt ? fp8::lt_vec_offsets(l) : std::vector<int64_t>(l.size() + 1, 0));
      bytes += fp8::aligned(size_t(vec_at.back().back()) * 4);
    }
    blk_slot = lt && RB * CB > 0 ? fp8::lt_blk_slot(RB, CB) : 0;
    bytes += fp8::aligned(size_t(G * blk_slot) * 4);
    fp8::Carver c(workspace(ex, bytes));
    operands = c.take<char>(static_cast<int64_t>(operand_bytes));
    for (const auto& at : vec_at) vec.push_back(at.back() > 0 ? c.take<float>(at.back()) : nullptr);
    if (blk_slot > 0) blk = c.take<float>(G * blk_slot);
    group = c.rest();
  }
  // enqueues the layouts: list i's scales at sv[i], the weights' at sb
  void make_layouts(cudaStream_t st, const std::vector<const float*>& sv, const float* sb) const {
    for (size_t i = 0; i < lists.size(); ++i)
      if (vec[i]) fp8::lt_vec_scales(st, sv[i], lists[i], vec[i]);
    if (blk) fp8::lt_blk_scales(st, sb, G, RB, CB, blk);
  }
  const float* vec_of(size_t list, size_t j) const {
    return vec[list] ? vec[list] + vec_at[list][j] : nullptr;
  }
  const float* blk_of(int64_t g) const { return blk ? blk + g * blk_slot : nullptr; }
};

void grouped_fp8_fprop(const Exec& ex, const int64_t* off, int64_t G, const uint8_t* qX,
                       const float* sX, const uint8_t* qW, const float* sW, int64_t N, int64_t K,
                       float* Y) {
  cudaStream_t st = stream_of(ex);
  const int64_t KB = fp8::cdiv(K, 128);
  size_t bytes = 0;
  std::vector<fp8::LtVecOperand> xs;  // X's rows of each group with rows
  for (int64_t g = 0; g < G; ++g)
    if (off[g + 1] > off[g]) {
      bytes = std::max(bytes, fp8::fprop_bytes(off[g + 1] - off[g], N, K));
      xs.push_back({off[g] * KB, off[g + 1] - off[g], K});
    }
  if (bytes == 0) return;
  const GroupedScratch sc(ex, 0, {xs}, G, fp8::cdiv(N, 128), KB, bytes);
  sc.make_layouts(st, {sX}, sW);
  size_t j = 0;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = off[g], rows = off[g + 1] - off[g];
    if (rows == 0) continue;
    fp8::fprop_run(st, qX + r0 * K, sX + r0 * KB, qW + g * N * K, sW + g * blocks128(N, K), rows, N,
                   K, Y + r0 * N, sc.group, fp8::LtScales{sc.vec_of(0, j++), sc.blk_of(g)});
  }
}

namespace {
// The App. B.2 experiment (dY in 128x128 blocks, which start at each group's first row) and empty
// reductions: dY quantised group by group
void grouped_dgrad_per_group(const Exec& ex, const int64_t* off, int64_t G, const float* dY,
                             int64_t N, int64_t K, const uint8_t* qWt, const float* sWt, bool pow2,
                             bool blocks, float* dX) {
  cudaStream_t st = stream_of(ex);
  size_t bytes = 0;
  for (int64_t g = 0; g < G; ++g)
    if (off[g + 1] > off[g])
      bytes = std::max(bytes, fp8::dgrad_bytes(off[g + 1] - off[g], N, K, blocks));
  if (bytes == 0) return;
  const int64_t NB = fp8::cdiv(N, 128), KB = fp8::cdiv(K, 128);
  const GroupedScratch sc(ex, 0, {}, G, KB, NB, bytes);
  sc.make_layouts(st, {}, sWt);
  for (int64_t g = 0; g < G; ++g) {
    const int64_t r0 = off[g], rows = off[g + 1] - off[g];
    if (rows == 0) continue;
    fp8::dgrad_run(st, dY + r0 * N, rows, N, K, qWt + g * K * N, sWt + g * KB * NB, pow2, blocks,
                   dX + r0 * K, /*accumulate=*/false, sc.group, sc.blk_of(g));
  }
}
}  // namespace

// dY's 1x128 tiles are each within one row, so all groups' rows quantise in one launch (the codes
// and scales each group's own quantisation gives); then the layouts, then per group the GEMM
void grouped_fp8_linear_dgrad(const Exec& ex, const int64_t* off, int64_t G, const float* dY,
                              int64_t N, int64_t K, const uint8_t* qWt, const float* sWt, bool pow2,
                              bool blocks, float* dX) {
  if (blocks || N == 0)
    return grouped_dgrad_per_group(ex, off, G, dY, N, K, qWt, sWt, pow2, blocks, dX);
  cudaStream_t st = stream_of(ex);
  const int64_t NB = fp8::cdiv(N, 128), KB = fp8::cdiv(K, 128), r0 = G > 0 ? off[0] : 0;
  const int64_t M = G > 0 ? off[G] - r0 : 0;
  size_t bytes = 0;
  std::vector<fp8::LtVecOperand> dys;  // dY's rows of each group with rows (the GEMM's A)
  for (int64_t g = 0; g < G; ++g)
    if (off[g + 1] > off[g]) {
      bytes = std::max(bytes, fp8::nt_gemm_scratch_bytes(off[g + 1] - off[g], K, N, kTile128x128));
      dys.push_back({(off[g] - r0) * NB, off[g + 1] - off[g], N});
    }
  if (bytes == 0 || K == 0) return;
  const GroupedScratch sc(ex, fp8::aligned(M * N) + fp8::aligned(M * NB * 4), {dys}, G, KB, NB,
                          bytes);
  fp8::Carver c(sc.operands);
  uint8_t* q = c.take<uint8_t>(M * N);  // dY [M, N] codes
  float* s = c.take<float>(M * NB);     // [M, NB]
  fp8::quantize(st, dY + r0 * N, M, N, kTile1x128, pow2, q, s);
  sc.make_layouts(st, {s}, sWt);
  size_t j = 0;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t a = off[g] - r0, rows = off[g + 1] - off[g];
    if (rows == 0) continue;
    fp8::nt_gemm(st, q + a * N, s + a * NB, qWt + g * K * N, sWt + g * KB * NB, kTile128x128, rows,
                 K, N, dX + off[g] * K, /*accumulate=*/false, sc.group,
                 fp8::LtScales{.a = sc.vec_of(0, j++), .b = sc.blk_of(g)});
  }
}

namespace {
// X^T's 128x1 tiles of all groups in one launch per 64 groups (kernels/ops.h's grouped layout),
// from the kept 1x128 FP8 or from fp32; then the layouts, then per group the GEMM
void grouped_wgrad(const Exec& ex, const int64_t* off, int64_t G, const uint8_t* qdYt,
                   const float* sdYt, const uint8_t* qX, const float* sX, const float* X32,
                   int64_t N, int64_t K, bool pow2_x, float* dW) {
  cudaStream_t st = stream_of(ex);
  const std::vector<int64_t> t = row_tile_offsets(off, G);
  const int64_t r0 = G > 0 ? off[0] : 0, M = G > 0 ? off[G] - r0 : 0, KB = fp8::cdiv(K, 128);
  size_t bytes = 0;
  std::vector<int64_t> rel(static_cast<size_t>(G) + 1);  // offsets from the first group's row
  std::vector<fp8::LtVecOperand> dyts, xts;  // dY^T [N, rows], X^T [K, rows] of each group
  for (int64_t g = 0; g <= G; ++g) rel[g] = off[g] - r0;
  for (int64_t g = 0; g < G; ++g)
    if (off[g + 1] > off[g]) {
      bytes = std::max(bytes, fp8::nt_gemm_scratch_bytes(N, K, off[g + 1] - off[g], kTile1x128));
      dyts.push_back({t[g] * N, N, off[g + 1] - off[g]});
      xts.push_back({t[g] * K, K, off[g + 1] - off[g]});
    }
  if (bytes == 0 || N == 0 || K == 0) return;
  const GroupedScratch sc(ex, fp8::aligned(K * M) + fp8::aligned(K * t[G] * 4), {dyts, xts}, 0, 0,
                          0, bytes);
  fp8::Carver c(sc.operands);
  uint8_t* qXt = c.take<uint8_t>(K * M);  // group g's X^T [K, rows] at K (off[g] - off[0])
  float* sXt = c.take<float>(K * t[G]);   // and its scales [K, ceil(rows/128)] at K t[g]
  fp8::grouped_128x1_t(st, X32 ? X32 + r0 * K : nullptr, X32 ? nullptr : qX + r0 * K,
                       X32 ? nullptr : sX + r0 * KB, rel.data(), G, K, pow2_x, qXt, sXt);
  sc.make_layouts(st, {sdYt, sXt}, nullptr);
  size_t j = 0;
  for (int64_t g = 0; g < G; ++g) {
    const int64_t rows = off[g + 1] - off[g];
    if (rows == 0) continue;
    fp8::nt_gemm(st, qdYt + off[g] * N, sdYt + t[g] * N, qXt + rel[g] * K, sXt + t[g] * K,
                 kTile1x128, N, K, rows, dW + g * N * K, /*accumulate=*/true, sc.group,
                 fp8::LtScales{.a = sc.vec_of(0, j), .b = sc.vec_of(1, j)});
    ++j;
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
