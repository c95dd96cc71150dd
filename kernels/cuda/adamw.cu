// AdamW on the GPU over one flat parameter buffer, fp32 or bf16 moments: the twin of
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
#include <cmath>
#include <stdexcept>
#include <type_traits>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/op_instantiate.h"
#include "kernels/scalar.h"

namespace moetron::kernels::gpu {

namespace {

struct AdamWScalars {
  float lr, b1, b2, omb1, omb2, decay, bc1, bc2, eps;
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

template <class M>
__global__ void adamw_kernel(float* param, const float* grad, M* m, M* v, int64_t n,
                             AdamWScalars c) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const float g = grad[i];
    const float mi = fmaf(c.b1, load_moment(m[i]), __fmul_rn(c.omb1, g));
    const float vi = fmaf(c.b2, load_moment(v[i]), __fmul_rn(__fmul_rn(c.omb2, g), g));
    const float num = __fmul_rn(c.lr, __fmul_rn(c.bc1, mi));
    const float den = __fadd_rn(c.eps, __fsqrt_rn(__fmul_rn(c.bc2, vi)));
    const float upd = __fdiv_rn(num, den);
    param[i] = fmaf(c.decay, param[i], -upd);
    m[i] = store_moment<M>(mi);
    v[i] = store_moment<M>(vi);
  }
}

}  // namespace

template <class M>
void adamw_update(const Exec& ex, float* param, const float* grad, M* m, M* v, int64_t n,
                  const AdamWParams& p) {
  if (p.step < 1) throw std::invalid_argument("adamw_update: step is 1-based");
  if (n <= 0) return;
  AdamWScalars c;
  c.lr = static_cast<float>(p.lr);
  c.b1 = static_cast<float>(p.beta1);
  c.b2 = static_cast<float>(p.beta2);
  c.omb1 = static_cast<float>(1.0 - p.beta1);
  c.omb2 = static_cast<float>(1.0 - p.beta2);
  c.decay = static_cast<float>(std::fma(-p.lr, p.weight_decay, 1.0));
  const double t = static_cast<double>(p.step);
  c.bc1 = static_cast<float>(1.0 / (1.0 - std::pow(p.beta1, t)));
  c.bc2 = static_cast<float>(1.0 / (1.0 - std::pow(p.beta2, t)));
  c.eps = static_cast<float>(p.eps);
  adamw_kernel<M><<<blocks_for(n), kThreads, 0, stream_of(ex)>>>(param, grad, m, v, n, c);
  MOETRON_CUDA_LAUNCHED("adamw_update");
}

MOETRON_OPS_ADAMW(float)
MOETRON_OPS_ADAMW(uint16_t)

}  // namespace moetron::kernels::gpu
