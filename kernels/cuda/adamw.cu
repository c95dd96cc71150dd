// AdamW on the GPU over flat parameter buffers, fp32 or bf16 moments: the twin of
// kernels/cpu/adamw.cpp, bit for bit.
//
// Shapes: param, grad [n] fp32; m, v [n] float, or uint16_t holding bf16 bit patterns (rounded
// to nearest even with scalar.h's f32_to_bf16). Per element, in fp32:
//   p -= lr * wd * p                      (decoupled weight decay: p * (1 - lr wd))
//   m  = b1 m + (1 - b1) g;  v = b2 v + (1 - b2) g^2
//   p -= lr * (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps)
// The scalars (fp32 casts of the double hyper-parameters, bias corrections 1 / (1 - b^t) in
// double with std::pow) are computed on the host exactly as the CPU does and passed by value
// (the decay's fma spelled out as on the CPU). The CPU spells out its fmas
//   m = fma(b1, m, (1 - b1) g),  v = fma(b2, v, ((1 - b2) g) g),  p = fma(decay, p, -update)
// and the kernel the same fmaf's, pinning every other operation with the _rn intrinsics (which
// nvcc never contracts): the same roundings in the same order, hence the same bits.
//
// One launch for all of a step's segments (ZeRO-1's owned pieces of every parameter: hundreds,
// one launch each cost the host microseconds apiece): the segments' table (pointers, length, the
// decay factor: with or without weight decay) goes to the stream's workspace, and each segment
// gets blocks by its length alone (launch.cuh's segment grid). Per element the arithmetic is the
// same whichever segments share the launch; a single adamw_update is a table of one.
#include <cmath>
#include <stdexcept>
#include <type_traits>
#include <vector>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/op_instantiate.h"
#include "kernels/scalar.h"

namespace moetron::kernels::gpu {

namespace {

struct AdamWScalars {
  float lr, b1, b2, omb1, omb2, bc1, bc2, eps;
};

template <class M>
__device__ __forceinline__ float load_moment(M x) {
  if constexpr (std::is_same_v<M, float>) {
    return x;
  } else {
    return bf16_to_f32(x);
  }
}

template <class M>
__device__ __forceinline__ M store_moment(float x) {
  if constexpr (std::is_same_v<M, float>) {
    return x;
  } else {
    return f32_to_bf16(x);
  }
}

// One run of elements as the kernel sees it: the segment, its decay factor and its blocks.
template <class M>
struct AdamWRun {
  float* param;
  const float* grad;
  M *m, *v;
  int64_t n;
  float decay;                  // 1 - lr wd, or 1 where the segment has no weight decay
  int64_t first_block, blocks;  // of the grid (segment_blocks)
};

constexpr int64_t kAdamChunk = int64_t(1) << 14;  // elements per block (64 per thread)
constexpr int64_t kMaxAdamBlocks = 1024;

template <class M>
__global__ void adamw_kernel(const AdamWRun<M>* runs, int64_t n_runs, AdamWScalars c) {
  const int64_t b = blockIdx.x;
  const AdamWRun<M> r = runs[segment_of_block(runs, n_runs, b)];
  for (int64_t i = (b - r.first_block) * blockDim.x + threadIdx.x; i < r.n;
       i += r.blocks * blockDim.x) {
    const float g = r.grad[i];
    const float mi = fmaf(c.b1, load_moment(r.m[i]), __fmul_rn(c.omb1, g));
    const float vi = fmaf(c.b2, load_moment(r.v[i]), __fmul_rn(__fmul_rn(c.omb2, g), g));
    const float num = __fmul_rn(c.lr, __fmul_rn(c.bc1, mi));
    const float den = __fadd_rn(c.eps, __fsqrt_rn(__fmul_rn(c.bc2, vi)));
    const float upd = __fdiv_rn(num, den);
    r.param[i] = fmaf(r.decay, r.param[i], -upd);
    r.m[i] = store_moment<M>(mi);
    r.v[i] = store_moment<M>(vi);
  }
}

// The decay factor as the CPU computes it: fp32 of fma(-lr, wd, 1) in double.
float decay_factor(const AdamWParams& p, double weight_decay) {
  return static_cast<float>(std::fma(-p.lr, weight_decay, 1.0));
}

}  // namespace

template <class M>
void adamw_update_segments(const Exec& ex, const AdamWSegment<M>* segs, int64_t n,
                           const AdamWParams& p) {
  if (p.step < 1) throw std::invalid_argument("adamw_update: step is 1-based");
  AdamWScalars c;
  c.lr = static_cast<float>(p.lr);
  c.b1 = static_cast<float>(p.beta1);
  c.b2 = static_cast<float>(p.beta2);
  c.omb1 = static_cast<float>(1.0 - p.beta1);
  c.omb2 = static_cast<float>(1.0 - p.beta2);
  const double t = static_cast<double>(p.step);
  c.bc1 = static_cast<float>(1.0 / (1.0 - std::pow(p.beta1, t)));
  c.bc2 = static_cast<float>(1.0 / (1.0 - std::pow(p.beta2, t)));
  c.eps = static_cast<float>(p.eps);
  const float with = decay_factor(p, p.weight_decay), without = decay_factor(p, 0.0);
  std::vector<AdamWRun<M>> runs;
  int64_t blocks = 0;
  for (int64_t s = 0; s < n; ++s) {
    const AdamWSegment<M>& g = segs[s];
    if (g.n <= 0) continue;
    const int64_t nb = segment_blocks(g.n, kAdamChunk, kMaxAdamBlocks);
    runs.push_back({g.param, g.grad, g.m, g.v, g.n, g.decay ? with : without, blocks, nb});
    blocks += nb;
  }
  if (runs.empty()) return;
  // the table through the stream's workspace (uploaded from a pinned slot: the host's may go)
  const size_t bytes = sizeof(AdamWRun<M>) * runs.size();
  auto* table = static_cast<AdamWRun<M>*>(workspace(ex, bytes));
  copy_from_host(ex, table, runs.data(), bytes);
  adamw_kernel<M><<<static_cast<unsigned>(blocks), kThreads, 0, stream_of(ex)>>>(
      table, static_cast<int64_t>(runs.size()), c);
  MOETRON_CUDA_LAUNCHED("adamw_update");
}

template <class M>
void adamw_update(const Exec& ex, float* param, const float* grad, M* m, M* v, int64_t n,
                  const AdamWParams& p) {
  const AdamWSegment<M> one{param, grad, m, v, n, /*decay=*/true};
  adamw_update_segments<M>(ex, &one, 1, p);
}

MOETRON_OPS_ADAMW(float)
MOETRON_OPS_ADAMW(uint16_t)

}  // namespace moetron::kernels::gpu
