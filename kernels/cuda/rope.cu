// Rotary position embedding on the GPU (interleaved pairs (2i, 2i+1), DeepSeek-V3), in place: the
// twin of kernels/cpu/rope.cpp's rope_apply.
//
// Shapes: x: nvec vectors of dim values, vector v at x + v*stride (stride >= dim), belonging to
// position pos[v / vecs_per_pos]; pos [ceil(nvec / vecs_per_pos)] int32 and freqs [dim/2] double,
// both device memory. Pair i of vector v rotates by a = pos * freqs[i] (by -a when inverse):
//   (x0, x1) -> (x0 cos a - x1 sin a, x0 sin a + x1 cos a)
// One thread per (vector, pair), grid-stride. The angle, its cos and sin are computed in double
// and then cast to T, as on the CPU (which computes them once per position; here each thread
// recomputes them: FP64 is cheap next to the memory traffic on H200, and it keeps the kernel
// trivially race-free). Pairs are disjoint, so in-place updates never overlap.
#include <stdexcept>

#include "kernels/cuda/launch.cuh"
#include "kernels/cuda/ops_cuda.h"
#include "kernels/op_instantiate.h"

namespace moetron::kernels::gpu {

namespace {

template <class T>
__global__ void rope_kernel(T* x, int64_t nvec, int64_t stride, int64_t vecs_per_pos,
                            const int32_t* pos, const double* freqs, int64_t half, double sign) {
  const int64_t total = nvec * half;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < total;
       k += int64_t(gridDim.x) * blockDim.x) {
    const int64_t v = k / half, i = k % half;
    const double a = static_cast<double>(pos[v / vecs_per_pos]) * freqs[i];
    const T cs = static_cast<T>(cos(a));
    const T sn = static_cast<T>(sign * sin(a));
    T* xv = x + v * stride;
    const T x0 = xv[2 * i], x1 = xv[2 * i + 1];
    xv[2 * i] = x0 * cs - x1 * sn;
    xv[2 * i + 1] = x0 * sn + x1 * cs;
  }
}

}  // namespace

template <class T>
void rope_apply(const Exec& ex, T* x, int64_t nvec, int64_t stride, int64_t vecs_per_pos,
                const int32_t* pos, const double* freqs, int64_t dim, bool inverse) {
  if (vecs_per_pos <= 0) throw std::invalid_argument("rope_apply: vecs_per_pos must be > 0");
  const int64_t half = dim / 2;
  if (nvec <= 0 || half <= 0) return;
  rope_kernel<T><<<blocks_for(nvec * half), kThreads, 0, stream_of(ex)>>>(
      x, nvec, stride, vecs_per_pos, pos, freqs, half, inverse ? -1.0 : 1.0);
  MOETRON_CUDA_LAUNCHED("rope_apply");
}

MOETRON_OPS_ROPE(float)
MOETRON_OPS_ROPE(double)

}  // namespace moetron::kernels::gpu
