// Elementwise vector helpers used by the layers for residual adds and gradient accumulation.
//
// Memory-bound: one OpenMP team over the vector once it is long enough to pay for the fork
// (below that the loop runs on the calling thread), SIMD inside.
#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"

namespace moetron::kernels::cpu {

namespace {
constexpr int64_t kParallelMin = 1 << 15;  // elements; smaller vectors stay on one thread
}

// y[n] += x[n]
template <class T>
void add_inplace(T* y, const T* x, int64_t n) {
#pragma omp parallel for simd if (n >= kParallelMin) schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] += x[i];
}

// y[n] += a * x[n]
template <class T>
void axpy(T* y, T a, const T* x, int64_t n) {
#pragma omp parallel for simd if (n >= kParallelMin) schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] += a * x[i];
}

void narrow_to_bf16(const float* x, int64_t n, uint16_t* y) {
#pragma omp parallel for simd if (n >= kParallelMin) schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = moetron::f32_to_bf16(x[i]);
}

void widen_from_bf16(const uint16_t* x, int64_t n, float* y) {
#pragma omp parallel for simd if (n >= kParallelMin) schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = moetron::bf16_to_f32(x[i]);
}

// pair p: elements 2p, 2p + 1 (an odd n's last pair pads with a zero code)
void narrow_to_e5m6(const float* x, int64_t n, uint8_t* y) {
  const int64_t pairs = (n + 1) / 2;
#pragma omp parallel for if (n >= kParallelMin) schedule(static)
  for (int64_t p = 0; p < pairs; ++p) moetron::e5m6_narrow_pair(x, n, p, y);
}

void widen_from_e5m6(const uint8_t* x, int64_t n, float* y) {
#pragma omp parallel for if (n >= kParallelMin) schedule(static)
  for (int64_t i = 0; i < n; ++i) y[i] = moetron::e5m6_widen_at(x, i);
}

template void add_inplace<float>(float*, const float*, int64_t);
template void add_inplace<double>(double*, const double*, int64_t);
template void axpy<float>(float*, float, const float*, int64_t);
template void axpy<double>(double*, double, const double*, int64_t);

}  // namespace moetron::kernels::cpu
