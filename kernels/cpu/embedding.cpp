// Token embedding: a row gather forward and a row scatter-add backward.
//
// Shapes: ids [N], table [vocab, D], out / dout [N, D]. The forward is parallel over tokens.
// The backward is a scatter-add in which several tokens may hit the same table row, so it is
// parallel over column blocks instead of tokens: every thread owns a slice of D for all tokens,
// which is race-free and deterministic (tokens are added in order n = 0..N-1).
#include <algorithm>
#include <cstring>
#include <stdexcept>

#include "kernels/cpu/ops_cpu.h"

namespace moetron::kernels::cpu {

// out[n, :] = table[ids[n], :]
template <class T>
void embedding_forward(const int32_t* ids, int64_t N, const T* table, int64_t D, T* out) {
  for (int64_t n = 0; n < N; ++n) {
    if (ids[n] < 0) throw std::out_of_range("embedding_forward: negative token id");
  }
#pragma omp parallel for schedule(static) if (N * D >= (1 << 15))
  for (int64_t n = 0; n < N; ++n) {
    std::memcpy(out + n * D, table + static_cast<int64_t>(ids[n]) * D, sizeof(T) * D);
  }
}

// dtable[ids[n], :] += dout[n, :]
template <class T>
void embedding_backward(const int32_t* ids, int64_t N, const T* dout, int64_t D, T* dtable) {
  for (int64_t n = 0; n < N; ++n) {
    if (ids[n] < 0) throw std::out_of_range("embedding_backward: negative token id");
  }
  constexpr int64_t kBlock = 64;  // columns per task: one or more cache lines of a table row
  const int64_t nblocks = (D + kBlock - 1) / kBlock;
#pragma omp parallel for schedule(static) if (N * D >= (1 << 15))
  for (int64_t b = 0; b < nblocks; ++b) {
    const int64_t d0 = b * kBlock, d1 = std::min(D, d0 + kBlock);
    for (int64_t n = 0; n < N; ++n) {
      T* dst = dtable + static_cast<int64_t>(ids[n]) * D;
      const T* src = dout + n * D;
#pragma omp simd
      for (int64_t d = d0; d < d1; ++d) dst[d] += src[d];
    }
  }
}

template void embedding_forward<float>(const int32_t*, int64_t, const float*, int64_t, float*);
template void embedding_forward<double>(const int32_t*, int64_t, const double*, int64_t, double*);
template void embedding_backward<float>(const int32_t*, int64_t, const float*, int64_t, float*);
template void embedding_backward<double>(const int32_t*, int64_t, const double*, int64_t, double*);

}  // namespace moetron::kernels::cpu
