// The optimizer's vector ops on the CPU (ops_cpu.h): the squares and the finiteness of ZeRO-1's
// gradients, the clip factor applied to them, and the bf16 rounding of a one-rank bf16 reduction.
// Each segment's sum of squares runs on one thread in index order (the segments spread over the
// threads), so a gradient norm built from them is the same at any thread count; the elementwise
// ones are memory-bound loops, one OpenMP team once the vector is long enough to pay for the fork.
#include <cmath>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"

namespace moetron::kernels::cpu {

namespace {
constexpr int64_t kParallelMin = 1 << 15;  // elements; smaller vectors stay on one thread
}

void segment_sum_squares(const float* x, const int64_t* begin, const int64_t* len, int64_t n,
                         double* out) {
  int64_t total = 0;
  for (int64_t s = 0; s < n; ++s) total += len[s];
#pragma omp parallel for schedule(dynamic) if (total >= kParallelMin && n > 1)
  for (int64_t s = 0; s < n; ++s) {
    const float* p = x + begin[s];
    double sum = 0;
    for (int64_t i = 0; i < len[s]; ++i) sum += static_cast<double>(p[i]) * p[i];
    out[s] = sum;
  }
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
