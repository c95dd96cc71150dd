// Token permutation by expert: the routing table, the gather into expert-sorted rows (dispatch)
// and the scatter-add back to tokens (combine, and the backward of the gather).
//
// From idx [N, K] (expert of each (token, slot); -1 = served elsewhere, skipped): counts [E],
// offsets [E+1] (exclusive prefix sum of the counts, each rounded up to a multiple of `align`),
// slot [N*K] -> row (or -1), row_token [rows] -> n and row_slot [rows] -> n*K+k; an expert's pad
// rows (align > 1) have row_token = row_slot = -1, so the gathers make them zero rows. Rows of one
// expert follow (n, k) order (stable counting sort, one sequential pass: O(N K), negligible next
// to the GEMMs).
// gather_rows: out [n, D] from rows of src by index (-1: zeros); unpermute_add: rows added into
// out [N, D] through slot. Both are parallel over their output rows, so neither races; the
// scatter adds a token's K rows in k order (deterministic).
#include <cstring>
#include <stdexcept>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"

namespace moetron::kernels::cpu {

void route_by_expert(const int32_t* idx, int64_t N, int64_t K, int64_t E, int64_t align,
                     int64_t* counts, int64_t* offsets, int64_t* slot, int64_t* row_token,
                     int64_t* row_slot) {
  if (N < 0 || K < 0 || E <= 0 || align < 1)
    throw std::invalid_argument("route_by_expert: bad sizes");
  const int64_t pairs = N * K;
  std::memset(counts, 0, sizeof(int64_t) * E);
  for (int64_t i = 0; i < pairs; ++i) {
    if (idx[i] >= E) throw std::out_of_range("route_by_expert: expert id out of range");
    if (idx[i] >= 0) ++counts[idx[i]];  // -1: the expert is not here
  }
  offsets[0] = 0;
  for (int64_t e = 0; e < E; ++e) offsets[e + 1] = offsets[e] + round_up(counts[e], align);
  for (int64_t e = 0; e < E; ++e)
    for (int64_t row = offsets[e] + counts[e]; row < offsets[e + 1]; ++row)
      row_token[row] = row_slot[row] = -1;
  thread_local std::vector<int64_t> next;
  next.assign(offsets, offsets + E);
  for (int64_t i = 0; i < pairs; ++i) {
    if (idx[i] < 0) {
      slot[i] = -1;
      continue;
    }
    const int64_t row = next[idx[i]]++;
    slot[i] = row;
    row_token[row] = i / K;
    row_slot[row] = i;
  }
}

template <class T>
void gather_rows(const T* src, const int64_t* idx, int64_t n, int64_t D, T* dst) {
#pragma omp parallel for schedule(static) if (n * D >= (1 << 15))
  for (int64_t i = 0; i < n; ++i) {
    if (idx[i] >= 0)
      std::memcpy(dst + i * D, src + idx[i] * D, sizeof(T) * D);
    else
      std::memset(dst + i * D, 0, sizeof(T) * D);
  }
}

template <class T>
void unpermute_add(const T* rows, const int64_t* slot, int64_t N, int64_t K, int64_t D, T* out) {
#pragma omp parallel for schedule(static) if (N * K * D >= (1 << 15))
  for (int64_t n = 0; n < N; ++n) {
    T* o = out + n * D;
    for (int64_t k = 0; k < K; ++k) {
      if (slot[n * K + k] < 0) continue;
      const T* src = rows + slot[n * K + k] * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] += src[d];
    }
  }
}

template void gather_rows<float>(const float*, const int64_t*, int64_t, int64_t, float*);
template void gather_rows<double>(const double*, const int64_t*, int64_t, int64_t, double*);
template void unpermute_add<float>(const float*, const int64_t*, int64_t, int64_t, int64_t, float*);
template void unpermute_add<double>(const double*, const int64_t*, int64_t, int64_t, int64_t,
                                    double*);

}  // namespace moetron::kernels::cpu
