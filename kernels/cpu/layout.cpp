// Memory and layout ops of the CPU backend: fill and copy, strided 2-D copies (column split and
// concat, row broadcast) and their reduction, and the token shift that makes a micro-batch's
// inputs, targets and positions from its [B, S+1] tokens. Memory-bound; parallel over rows once
// there is enough work to pay for the fork.
#include <cstring>

#include "kernels/cpu/ops_cpu.h"

namespace moetron::kernels::cpu {

void fill_zero(void* p, size_t bytes) {
  if (bytes > 0) std::memset(p, 0, bytes);
}

void copy(void* dst, const void* src, size_t bytes) {
  if (bytes > 0 && dst != src) std::memmove(dst, src, bytes);
}

template <class T>
void copy_2d(const T* src, int64_t src_ld, T* dst, int64_t dst_ld, int64_t rows, int64_t cols,
             int64_t repeat, bool accumulate) {
#pragma omp parallel for schedule(static) if (rows * cols >= (1 << 15))
  for (int64_t r = 0; r < rows; ++r) {
    const T* s = src + (r / repeat) * src_ld;
    T* d = dst + r * dst_ld;
    if (accumulate) {
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) d[c] += s[c];
    } else {
      std::memcpy(d, s, sizeof(T) * cols);
    }
  }
}

template <class T>
void sum_row_groups(const T* src, int64_t src_ld, T* dst, int64_t dst_ld, int64_t rows,
                    int64_t cols, int64_t group) {
#pragma omp parallel for schedule(static) if (rows * group * cols >= (1 << 15))
  for (int64_t r = 0; r < rows; ++r) {
    T* d = dst + r * dst_ld;
    for (int64_t c = 0; c < cols; ++c) d[c] = T(0);
    for (int64_t g = 0; g < group; ++g) {
      const T* s = src + (r * group + g) * src_ld;
#pragma omp simd
      for (int64_t c = 0; c < cols; ++c) d[c] += s[c];
    }
  }
}

void shift_tokens(const int32_t* tokens, int64_t B, int64_t S, int64_t shift, int32_t* ids,
                  int32_t* targets, int32_t* pos) {
  for (int64_t b = 0; b < B; ++b)
    for (int64_t s = 0; s < S; ++s) {
      const int64_t n = b * S + s;
      const int32_t* row = tokens + b * (S + 1);
      ids[n] = s + shift <= S ? row[s + shift] : 0;
      targets[n] = s + shift + 1 <= S ? row[s + shift + 1] : -1;
      if (pos) pos[n] = static_cast<int32_t>(s);
    }
}

template void copy_2d<float>(const float*, int64_t, float*, int64_t, int64_t, int64_t, int64_t,
                             bool);
template void copy_2d<double>(const double*, int64_t, double*, int64_t, int64_t, int64_t, int64_t,
                              bool);
template void sum_row_groups<float>(const float*, int64_t, float*, int64_t, int64_t, int64_t,
                                    int64_t);
template void sum_row_groups<double>(const double*, int64_t, double*, int64_t, int64_t, int64_t,
                                     int64_t);

}  // namespace moetron::kernels::cpu
