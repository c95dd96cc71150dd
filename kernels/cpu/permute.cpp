// Token permutation by expert: the routing table, the gather into expert-sorted rows (dispatch)
// and the scatter-add back to tokens (combine, and the backward of the gather).
//
// From idx [N, K] (expert of each (token, slot); -1 = served elsewhere, skipped): counts [E],
// offsets [E+1] (exclusive prefix sum), slot [N*K] -> row (or -1), row_token [rows] -> n and
// row_slot [rows] -> n*K+k. Rows of one expert follow
// (n, k) order (stable counting sort, one sequential pass: O(N K), negligible next to the GEMMs).
// permute_rows: out [N*K, D]; unpermute_add: rows [N*K, D] added into out [N, D]. Both are
// parallel over their output rows, so neither races; the scatter adds a token's K rows in k order
// (deterministic).
#include <cstring>
#include <stdexcept>

#include "kernels/ops.h"

namespace moetron::kernels {

ExpertRouting route_by_expert(const int32_t* idx, int64_t N, int64_t K, int64_t E) {
  if (N < 0 || K < 0 || E <= 0) throw std::invalid_argument("route_by_expert: bad sizes");
  ExpertRouting r;
  const int64_t pairs = N * K;
  r.counts.assign(E, 0);
  int64_t rows = 0;
  for (int64_t i = 0; i < pairs; ++i) {
    if (idx[i] >= E) throw std::out_of_range("route_by_expert: expert id out of range");
    if (idx[i] >= 0) ++r.counts[idx[i]], ++rows;  // -1: the expert is not here
  }
  r.offsets.assign(E + 1, 0);
  for (int64_t e = 0; e < E; ++e) r.offsets[e + 1] = r.offsets[e] + r.counts[e];
  std::vector<int64_t> next(r.offsets.begin(), r.offsets.end() - 1);
  r.slot.resize(pairs);
  r.row_token.resize(rows);
  r.row_slot.resize(rows);
  for (int64_t i = 0; i < pairs; ++i) {
    if (idx[i] < 0) {
      r.slot[i] = -1;
      continue;
    }
    const int64_t row = next[idx[i]]++;
    r.slot[i] = row;
    r.row_token[row] = i / K;
    r.row_slot[row] = i;
  }
  return r;
}

// out[row, :] = x[row_token[row], :]
template <class T>
void permute_rows(const T* x, const ExpertRouting& r, int64_t D, T* out) {
  const int64_t rows = static_cast<int64_t>(r.row_token.size());
#pragma omp parallel for schedule(static) if (rows * D >= (1 << 15))
  for (int64_t row = 0; row < rows; ++row) {
    std::memcpy(out + row * D, x + r.row_token[row] * D, sizeof(T) * D);
  }
}

// out[n, :] += sum_k rows[slot[n*K + k], :]
template <class T>
void unpermute_add(const T* rows, const ExpertRouting& r, int64_t N, int64_t D, T* out) {
  const int64_t total = static_cast<int64_t>(r.slot.size());
  if (N == 0) return;
  if (total % N != 0) throw std::invalid_argument("unpermute_add: routing does not match N");
  const int64_t K = total / N;
#pragma omp parallel for schedule(static) if (total * D >= (1 << 15))
  for (int64_t n = 0; n < N; ++n) {
    T* o = out + n * D;
    for (int64_t k = 0; k < K; ++k) {
      if (r.slot[n * K + k] < 0) continue;
      const T* src = rows + r.slot[n * K + k] * D;
#pragma omp simd
      for (int64_t d = 0; d < D; ++d) o[d] += src[d];
    }
  }
}

template void permute_rows<float>(const float*, const ExpertRouting&, int64_t, float*);
template void permute_rows<double>(const double*, const ExpertRouting&, int64_t, double*);
template void unpermute_add<float>(const float*, const ExpertRouting&, int64_t, int64_t, float*);
template void unpermute_add<double>(const double*, const ExpertRouting&, int64_t, int64_t, double*);

}  // namespace moetron::kernels
