// The parameter types of the ops (kernels/ops.h), shared by every backend, and the host helpers
// that compute op parameters at build time (RoPE frequencies) or set up a backend (threads).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace moetron::kernels {

// How the inputs of one GEMM are rounded. FP32: plain. BF16: both inputs rounded to bf16,
// products accumulated in fp32 (double stays double but inputs are rounded the same way).
enum class GemmPrecision { FP32, BF16 };

// How many block-scaled FP8 GEMMs ran on each implementation of the CUDA backend: through
// cuBLASLt, or on the fallback kernel (a shape or alignment cuBLASLt does not take, or
// MOETRON_FP8_GEMM=kernel; kernels/cuda/fp8_gemm.cu).
struct Fp8GemmPaths {
  int64_t cublaslt = 0, kernel = 0;
};

struct RopeParams {
  int dim = 64;  // rotary dims (qk_rope_head_dim)
  double theta = 10000.0;
  bool yarn = false;    // YaRN frequency correction
  double factor = 1.0;  // s
  int64_t original_seq_len = 4096;
  double beta_fast = 32.0, beta_slow = 1.0;
};
// freqs[dim/2]: base frequencies with the YaRN correction if enabled (SPEC 1.3). Host values,
// computed once when a layer is built.
std::vector<double> rope_frequencies(const RopeParams& p);

struct GateParams {
  int64_t n_experts = 0, topk = 0, n_group = 1, topk_group = 1;
  double route_scale = 1.0;
};
// std::invalid_argument ("gate: ...") unless the routing is well formed (0 < topk <= n_experts,
// n_group divides n_experts, the kept groups hold at least topk experts, ...). Every backend's gate
// checks with it (kernels/cpu/gate.cpp).
void check_gate_params(const GateParams& p);

struct AdamWParams {
  double lr = 1e-3, beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.0;
  int64_t step = 1;  // 1-based, for bias correction
};

// One run of elements of a multi-tensor AdamW step (adamw_update_segments): n parameters with
// their gradients and moments (device pointers); decay: whether the step's weight decay applies.
template <class M>
struct AdamWSegment {
  float* param = nullptr;
  const float* grad = nullptr;
  M *m = nullptr, *v = nullptr;
  int64_t n = 0;
  bool decay = true;
};

// A quantisation tile: rows x cols elements share one scale.
struct Tile {
  int64_t rows = 1, cols = 128;
};
inline constexpr Tile kTile1x128{1, 128}, kTile128x128{128, 128}, kTile128x1{128, 1};

// Wgrad's token-major operand of G row groups (grouped_quantize_128x1_t, kernels/ops.h): t[g] =
// the 128x1 scale tiles per column of groups 0..g-1 (the sum of their ceil(rows/128)), so group
// g's scales start at C x t[g] and t[G] x C is the scale count. off: G + 1 host offsets.
inline std::vector<int64_t> row_tile_offsets(const int64_t* off, int64_t G) {
  std::vector<int64_t> t(static_cast<size_t>(G < 0 ? 0 : G) + 1, 0);
  for (int64_t g = 0; g < G; ++g) t[g + 1] = t[g] + (off[g + 1] - off[g] + 127) / 128;
  return t;
}

enum class Fp8Gemm {
  Auto,        // Dequant if every scale is a power of two, else Bf16Blocks
  Dequant,     // dequantise both operands to fp32, one kernels::gemm (bf16 when exact, else fp32)
  Bf16Blocks,  // per 128-K block a bf16 x bf16 -> fp32 partial (oneDNN), promoted with the scales
  Blockwise,   // the recipe literally, scalar loops (fp8_gemm_nt_blockwise)
};

// Intra-op threads of this process (OpenMP and the BLAS library) for the CPU backend.
void set_num_threads(int n);
int num_threads();

// ---- expert-parallel wire (the ep_* ops) ------------------------------------------------------
// How one row of D activations travels between processes (parallel/ep_dispatch.h): as computed
// (Native: D values of T), rounded to bf16 (2 bytes a value), or as E4M3 codes followed by one
// power-of-two fp32 scale per kWireScaleBlock channels (the experts' 1x128 tiles).
enum class RowEncoding : uint8_t { Native, BF16, FP8 };
inline constexpr int64_t kWireScaleBlock = 128;
// Bytes of one encoded row of D values of elem_bytes bytes each (elem_bytes: Native only).
constexpr int64_t row_encoding_bytes(RowEncoding e, int64_t D, int64_t elem_bytes) {
  return e == RowEncoding::Native ? elem_bytes * D
         : e == RowEncoding::BF16 ? 2 * D
                                  : D + 4 * ((D + kWireScaleBlock - 1) / kWireScaleBlock);
}

}  // namespace moetron::kernels
