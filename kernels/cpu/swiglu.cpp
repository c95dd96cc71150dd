// SwiGLU activation of the dense FFN and the experts, with the optional per-row gate weight
// fused in (SPEC 1.4 implementation hint: the routed expert output is pre-scaled by its gate
// weight so that the combine is a plain sum).
//
// Shapes: gu, dgu [N, 2F] = [gate(F) | up(F)] per row (one fused GEMM produces both);
// out, dout [N, F]; row_scale, drow_scale [N] (optional, may be null).
//   out = silu(g) * u * s
//   dg = dout * u * s * silu'(g),  du = dout * silu(g) * s,  ds = sum_f dout * silu(g) * u
// Parallel over rows; the sigmoid goes through fast_exp so the inner loops vectorise.
#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"

namespace moetron::kernels::cpu {

namespace {
constexpr int64_t kParallelMin = 1 << 13;
}

template <class T>
void swiglu_forward(const T* gu, int64_t N, int64_t F, const T* row_scale, T* out) {
#pragma omp parallel for schedule(static) if (N * F >= kParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const T* g = gu + n * 2 * F;
    const T* u = g + F;
    T* o = out + n * F;
    const T s = row_scale ? row_scale[n] : T(1);
#pragma omp simd
    for (int64_t f = 0; f < F; ++f) o[f] = fast_silu(g[f]) * u[f] * s;
  }
}

template <class T>
void swiglu_backward(const T* dout, const T* gu, int64_t N, int64_t F, const T* row_scale, T* dgu,
                     T* drow_scale) {
#pragma omp parallel for schedule(static) if (N * F >= kParallelMin)
  for (int64_t n = 0; n < N; ++n) {
    const T* g = gu + n * 2 * F;
    const T* u = g + F;
    const T* d = dout + n * F;
    T* dg = dgu + n * 2 * F;
    T* du = dg + F;
    const T s = row_scale ? row_scale[n] : T(1);
    T ds = 0;
#pragma omp simd reduction(+ : ds)
    for (int64_t f = 0; f < F; ++f) {
      const T sg = fast_sigmoid(g[f]);
      const T act = g[f] * sg;  // silu(g)
      const T dact = sg * (T(1) + g[f] * (T(1) - sg));
      ds += d[f] * act * u[f];
      dg[f] = d[f] * u[f] * s * dact;
      du[f] = d[f] * act * s;
    }
    if (row_scale && drow_scale) drow_scale[n] = ds;
  }
}

template void swiglu_forward<float>(const float*, int64_t, int64_t, const float*, float*);
template void swiglu_forward<double>(const double*, int64_t, int64_t, const double*, double*);
template void swiglu_backward<float>(const float*, const float*, int64_t, int64_t, const float*,
                                     float*, float*);
template void swiglu_backward<double>(const double*, const double*, int64_t, int64_t, const double*,
                                      double*, double*);

}  // namespace moetron::kernels::cpu
