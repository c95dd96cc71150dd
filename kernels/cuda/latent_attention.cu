// Attention of a few new tokens over MLA's latent cache on the GPU (decoding, model/decode.h):
// one key per position shared by every head, whose first Dv values are also the value
// (kernels/cpu/latent_attention.cpp for why). q [M, H, Dk], kv [past + M, Dk], o [M, H, Dv];
// token m sees the cache rows t <= past + m.
//
// One warp per (token, head) task, kWarps tasks per block, no barriers. The warp keeps its query
// and its output accumulator in its own slice of dynamic shared memory (Dk and Dv are MLA's latent
// widths, 576 and 512 in DeepSeek-V3: too wide for registers), lane l owning dims l, l+32, ...
// It walks the visible rows once with the online softmax:
//   s = scale q . kv_t (a warp-wide butterfly sum: every lane holds the same bits),
//   m' = max(m, s), acc = acc e^(m - m') + e^(s - m') kv_t[:Dv], l = l e^(m - m') + e^(s - m'),
// and writes o = acc / l. The CPU twin does two passes (max, then sum); the results agree to
// rounding.
#include <climits>
#include <cmath>
#include <stdexcept>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/op_instantiate.h"
#include "kernels/scalar.h"

namespace moetron::kernels::gpu {

namespace {

constexpr int kWarps = 4;  // (token, head) tasks per block

// grid ceil(M H / kWarps), block 32 kWarps, shared kWarps (Dk + Dv) values.
template <class T>
__global__ void __launch_bounds__(32 * kWarps)
    latent_attn_kernel(const T* q, const T* kv, int64_t M, int64_t past, int64_t H, int Dk, int Dv,
                       T scale, T* o) {
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  T* qs = reinterpret_cast<T*>(smem_raw) + warp * (Dk + Dv);  // [Dk], this warp's query
  T* acc = qs + Dk;                                           // [Dv], this warp's accumulator
  const int64_t task = blockIdx.x * int64_t(kWarps) + warp;   // = m * H + h
  if (task >= M * H) return;                             // warp-uniform; no block barriers below
  const int64_t m_tok = task / H, n = past + m_tok + 1;  // visible rows [0, n)
  for (int d = lane; d < Dk; d += 32) qs[d] = q[task * Dk + d];
  for (int d = lane; d < Dv; d += 32) acc[d] = 0;
  __syncwarp();  // lanes read every qs[d] below
  T mx = -INFINITY, l = 0;
  for (int64_t t = 0; t < n; ++t) {
    const T* row = kv + t * Dk;
    T part = 0;
    for (int d = lane; d < Dk; d += 32) part += qs[d] * row[d];
    const T s = warp_sum(part) * scale;
    const T m_new = s > mx ? s : mx;
    const T alpha = std::exp(mx - m_new);  // 0 at t = 0 (mx = -inf)
    const T p = std::exp(s - m_new);
    for (int d = lane; d < Dv; d += 32) acc[d] = acc[d] * alpha + p * row[d];  // own dims only
    l = l * alpha + p;
    mx = m_new;
  }
  const T inv = T(1) / l;
  for (int d = lane; d < Dv; d += 32) o[task * Dv + d] = acc[d] * inv;
}

}  // namespace

template <class T>
void latent_attention_forward(const Exec& ex, const T* q, const T* kv, int64_t M, int64_t past,
                              int64_t H, int64_t Dk, int64_t Dv, T scale, T* o) {
  const int64_t tasks = M * H;
  if (tasks <= 0) return;
  if (Dk < 1 || Dv < 1 || Dv > Dk || Dk > INT_MAX / 2)
    throw std::invalid_argument("latent_attention_forward: need 1 <= Dv <= Dk");
  const int64_t blocks = (tasks + kWarps - 1) / kWarps;
  if (blocks > INT_MAX) throw std::invalid_argument("latent_attention_forward: too many tasks");
  const size_t smem = sizeof(T) * kWarps * (Dk + Dv);
  // the widths are any the model has: opted in at the device's limit
  allow_smem(latent_attn_kernel<T>, smem, SIZE_MAX, "latent_attention_forward");
  latent_attn_kernel<T><<<static_cast<unsigned>(blocks), 32 * kWarps, smem, stream_of(ex)>>>(
      q, kv, M, past, H, static_cast<int>(Dk), static_cast<int>(Dv), scale, o);
  MOETRON_CUDA_LAUNCHED("latent_attention_forward");
}

MOETRON_OPS_LATENT_ATTENTION(float)
MOETRON_OPS_LATENT_ATTENTION(double)

}  // namespace moetron::kernels::gpu
