// The optimizer's vector ops on the CPU (ops_cpu.h): the squares and the finiteness of ZeRO-1's
// gradients, the clip factor applied to them, and the bf16 rounding of a one-rank bf16 reduction.
// The sum of squares runs on one thread in index order, so a gradient norm built from it is the
// same at any thread count; the elementwise ones are memory-bound loops, one OpenMP team once
// the vector is long enough to pay for the fork.
#include <cmath>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"

namespace moetron::kernels::cpu {

namespace {
constexpr int64_t kParallelMin = 1 << 15;  // elements; smaller vectors stay on one thread
}

void sum_squares(const float* x, int64_t n, double* out) {
  double s = 0;
  for (int64_t i = 0; i < n; ++i) s += static_cast<double>(x[i]) * x[i];
  out[0] = s;
}

void count_nonfinite(const float* x, int64_t n, int64_t* out) {
  int64_t bad = 0;
#pragma omp parallel for reduction(+ : bad) if (n >= kParallelMin)
  for (int64_t i = 0; i < n; ++i) bad += std::isfinite(x[i]) ? 0 : 1;
  out[0] = bad;
}

void scale_inplace(float* x, float c, int64_t n) {
#pragma omp parallel for simd if (n >= kParallelMin) schedule(static)
  for (int64_t i = 0; i < n; ++i) x[i] *= c;
}

void round_bf16_inplace(float* x, int64_t n) {
#pragma omp parallel for simd if (n >= kParallelMin) schedule(static)
  for (int64_t i = 0; i < n; ++i) x[i] = round_bf16(x[i]);
}

}  // namespace moetron::kernels::cpu
