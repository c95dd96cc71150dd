// Causal multi-head attention, forward and backward, FlashAttention-2 style on the CPU.
//
// Layout: q, k, dq, dk [B, S, H, Dqk]; v, o, dout, dv [B, S, H, Dv]; lse [B, H, S]. Dqk may
// differ from Dv (MLA: 192 / 128). Scores are scale * q.k with a causal mask (key j <= query i).
//
// Forward, one task per (b, h, query tile of kBr rows), tasks largest-first (causal work grows
// with the tile index): for each key tile of kBc columns up to the diagonal,
//   S = Qs Kt  (Qs = scale * Q, tile [kBr, kBc]),  m' = max(m, rowmax S),
//   P = e^(S - m'),  l = l e^(m - m') + rowsum P,  O = O e^(m - m') + P V,
// then o = O / l and lse = m + ln l. Only tiles live: no [S, S] matrix is ever stored.
// Backward, one task per (b, h) (so dK, dV and dQ accumulate without races, deterministically):
// D_i = rowsum(dO_i * O_i); for each key tile j (outer) and query tile i >= j (inner) recompute
//   P = e^(S - lse),  dV_j += P^T dO_i,  dP = dO_i V_j^T,  dS = P * (dP - D),
//   dK_j += dS^T Qs_i,  dQ_i += scale * dS K_j.
// Every product goes through one register-blocked micro-kernel, acc_ab (C += A X, A read as
// broadcast scalars, X and C as 64-byte vectors; 4 rows x 4 vectors of accumulators). Tile
// widths are padded to whole vectors with zeros, which is why tiles are copied into per-thread
// buffers (the copy also gathers the head's strided rows and builds K^T / V^T).
// BF16 (GemmPrecision::BF16, the attention core of the bf16 and fp8 recipes): the operands of
// every product are rounded to bf16 as FlashAttention's tensor cores see them, the sums stay T:
// Qs = bf16(scale q), K, V and dO are rounded as they are copied into the tiles, P is rounded
// after the row sum l takes it (forward) and P and dS after dS is formed (backward); the
// softmax statistics m, l, lse come from unrounded scores and D = rowsum(dO o) from the rounded dO
// (the operand dP = dO V^T sees, so that dS = P (dP - D) is 0 where it should be, e.g. at S = 1).
// The CUDA backend's tensor-core kernel (kernels/cuda/attention_bf16.cu) rounds at the same points.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"

namespace moetron::kernels::cpu {

namespace {

constexpr int64_t kBr = 32;  // query rows per tile
constexpr int64_t kBc = 64;  // key columns per tile

template <class T>
struct VecOf;
template <>
struct VecOf<float> {
  typedef float type __attribute__((vector_size(64)));
};
template <>
struct VecOf<double> {
  typedef double type __attribute__((vector_size(64)));
};
template <class T>
constexpr int64_t kLanes = 64 / sizeof(T);

// C[r, 0:NV*L] += sum_{k < kk} A[r*lda + k] * X[k*ldx + 0:NV*L]  for r < RB.
template <class T, int RB, int NV>
void micro(const T* A, int64_t lda, int64_t kk, const T* X, int64_t ldx, T* C, int64_t ldc) {
  using V = typename VecOf<T>::type;
  constexpr int64_t L = kLanes<T>;
  V acc[RB][NV];
  for (int r = 0; r < RB; ++r)
    for (int v = 0; v < NV; ++v) acc[r][v] = V{};
  for (int64_t k = 0; k < kk; ++k) {
    V x[NV];
    for (int v = 0; v < NV; ++v) std::memcpy(&x[v], X + k * ldx + v * L, sizeof(V));
    for (int r = 0; r < RB; ++r) {
      const T a = A[r * lda + k];
      for (int v = 0; v < NV; ++v) acc[r][v] += a * x[v];
    }
  }
  for (int r = 0; r < RB; ++r) {
    for (int v = 0; v < NV; ++v) {
      V c;
      std::memcpy(&c, C + r * ldc + v * L, sizeof(V));
      c += acc[r][v];
      std::memcpy(C + r * ldc + v * L, &c, sizeof(V));
    }
  }
}

template <class T>
using MicroFn = void (*)(const T*, int64_t, int64_t, const T*, int64_t, T*, int64_t);

template <class T, int RB>
MicroFn<T> pick_nv(int64_t nv) {
  switch (nv) {
    case 1:
      return micro<T, RB, 1>;
    case 2:
      return micro<T, RB, 2>;
    case 3:
      return micro<T, RB, 3>;
    default:
      return micro<T, RB, 4>;
  }
}

template <class T>
MicroFn<T> pick(int64_t rb, int64_t nv) {
  switch (rb) {
    case 1:
      return pick_nv<T, 1>(nv);
    case 2:
      return pick_nv<T, 2>(nv);
    case 3:
      return pick_nv<T, 3>(nv);
    default:
      return pick_nv<T, 4>(nv);
  }
}

// C[m, nx] += A[m, kk] X[kk, nx]; A row stride lda, X row stride ldx, C row stride ldc; nx a
// multiple of kLanes<T>.
template <class T>
void acc_ab(const T* A, int64_t lda, int64_t m, int64_t kk, const T* X, int64_t ldx, int64_t nx,
            T* C, int64_t ldc) {
  constexpr int64_t L = kLanes<T>;
  for (int64_t d0 = 0; d0 < nx; d0 += 4 * L) {
    const int64_t nv = std::min<int64_t>(4, (nx - d0) / L);
    for (int64_t i = 0; i < m; i += 4) {
      const int64_t rb = std::min<int64_t>(4, m - i);
      pick<T>(rb, nv)(A + i * lda, lda, kk, X + d0, ldx, C + i * ldc + d0, ldc);
    }
  }
}

// x as a product operand: rounded to bf16 (through float) when bf, else unchanged.
template <class T>
inline T operand(T x, bool bf) {
  return bf ? static_cast<T>(round_bf16(static_cast<float>(x))) : x;
}
template <class T>
void round_all(T* x, int64_t n) {
  for (int64_t i = 0; i < n; ++i) x[i] = operand(x[i], true);
}

// Number of keys of tile [j0, j0 + cols) visible from query qi (causal).
inline int64_t visible(int64_t qi, int64_t j0, int64_t cols) {
  return std::clamp<int64_t>(qi - j0 + 1, 0, cols);
}

}  // namespace

template <class T>
void attention_forward(const T* q, const T* k, const T* v, int64_t B, int64_t S, int64_t H,
                       int64_t Dqk, int64_t Dv, T scale, T* o, T* lse, GemmPrecision prec) {
  if (B <= 0 || S <= 0 || H <= 0) return;
  const bool bf = prec == GemmPrecision::BF16;
  constexpr int64_t L = kLanes<T>;
  const int64_t Dqp = round_up(Dqk, L), Dvp = round_up(Dv, L);
  const int64_t nqt = (S + kBr - 1) / kBr;
  const int64_t ntask = B * H * nqt;
  const T neg_inf = -std::numeric_limits<T>::infinity();
#pragma omp parallel
  {
    std::vector<T> Qs(kBr * Dqp), Kt(Dqp * kBc), Vt(kBc * Dvp), Sb(kBr * kBc), O(kBr * Dvp);
    std::vector<T> m(kBr), l(kBr);
#pragma omp for schedule(dynamic, 1)
    for (int64_t task = 0; task < ntask; ++task) {
      const int64_t qt = nqt - 1 - task % nqt;  // largest tiles first
      const int64_t bh = task / nqt, b = bh / H, h = bh % H;
      const int64_t i0 = qt * kBr, rows = std::min(kBr, S - i0);
      for (int64_t r = 0; r < rows; ++r) {
        const T* src = q + ((b * S + i0 + r) * H + h) * Dqk;
        for (int64_t d = 0; d < Dqk; ++d) Qs[r * Dqp + d] = operand(src[d] * scale, bf);
      }
      std::fill(O.begin(), O.end(), T(0));
      std::fill(m.begin(), m.end(), neg_inf);
      std::fill(l.begin(), l.end(), T(0));
      const int64_t last = i0 + rows - 1;
      for (int64_t j0 = 0; j0 <= last; j0 += kBc) {
        const int64_t cols = std::min(kBc, last + 1 - j0);
        for (int64_t c = 0; c < cols; ++c) {
          const T* ks = k + ((b * S + j0 + c) * H + h) * Dqk;
          const T* vs = v + ((b * S + j0 + c) * H + h) * Dv;
          for (int64_t d = 0; d < Dqk; ++d) Kt[d * kBc + c] = operand(ks[d], bf);
          for (int64_t d = 0; d < Dv; ++d) Vt[c * Dvp + d] = operand(vs[d], bf);
        }
        std::fill(Sb.begin(), Sb.end(), T(0));
        acc_ab(Qs.data(), Dqp, rows, Dqp, Kt.data(), kBc, kBc, Sb.data(), kBc);
        for (int64_t r = 0; r < rows; ++r) {
          T* s = &Sb[r * kBc];
          const int64_t nv = visible(i0 + r, j0, cols);
          T mx = m[r];
          for (int64_t c = 0; c < nv; ++c) mx = std::max(mx, s[c]);
          const T alpha = fast_exp(m[r] - mx);  // 0 on the first visible tile (m = -inf)
          T sum = 0;
#pragma omp simd reduction(+ : sum)
          for (int64_t c = 0; c < kBc; ++c) {
            const T p = c < nv ? fast_exp(s[c] - mx) : T(0);
            s[c] = p;
            sum += p;
          }
          if (nv > 0) {
            m[r] = mx;
            l[r] = l[r] * alpha + sum;
            for (int64_t d = 0; d < Dvp; ++d) O[r * Dvp + d] *= alpha;
          }
        }
        if (bf) round_all(Sb.data(), rows * kBc);  // P as the P V product's operand
        acc_ab(Sb.data(), kBc, rows, cols, Vt.data(), Dvp, Dvp, O.data(), Dvp);
      }
      for (int64_t r = 0; r < rows; ++r) {
        const T inv = T(1) / l[r];
        T* dst = o + ((b * S + i0 + r) * H + h) * Dv;
        for (int64_t d = 0; d < Dv; ++d) dst[d] = O[r * Dvp + d] * inv;
        lse[(b * H + h) * S + i0 + r] = m[r] + std::log(l[r]);
      }
    }
  }
}

template <class T>
void attention_backward(const T* dout, const T* q, const T* k, const T* v, const T* o, const T* lse,
                        int64_t B, int64_t S, int64_t H, int64_t Dqk, int64_t Dv, T scale, T* dq,
                        T* dk, T* dv, GemmPrecision prec) {
  if (B <= 0 || S <= 0 || H <= 0) return;
  const bool bf = prec == GemmPrecision::BF16;
  constexpr int64_t L = kLanes<T>;
  const int64_t Dqp = round_up(Dqk, L), Dvp = round_up(Dv, L);
#pragma omp parallel
  {
    // Whole-sequence copies for the (b, h) of the task, then tiles.
    std::vector<T> Qs(S * Dqp), dO(S * Dvp), dQ(S * Dqp), Dr(S), Ls(S);
    std::vector<T> Kr(kBc * Dqp), Kt(Dqp * kBc), Vt(Dvp * kBc), dK(kBc * Dqp), dV(kBc * Dvp);
    std::vector<T> P(kBr * kBc), dS(kBr * kBc), Pt(kBc * kBr), dSt(kBc * kBr);
#pragma omp for schedule(dynamic, 1)
    for (int64_t bh = 0; bh < B * H; ++bh) {
      const int64_t b = bh / H, h = bh % H;
      for (int64_t i = 0; i < S; ++i) {
        const T* qs = q + ((b * S + i) * H + h) * Dqk;
        const T* gs = dout + ((b * S + i) * H + h) * Dv;
        const T* os = o + ((b * S + i) * H + h) * Dv;
        T dsum = 0;
        for (int64_t d = 0; d < Dqk; ++d) Qs[i * Dqp + d] = operand(qs[d] * scale, bf);
        for (int64_t d = 0; d < Dv; ++d) {
          dO[i * Dvp + d] = operand(gs[d], bf);
          dsum += dO[i * Dvp + d] * os[d];
        }
        Dr[i] = dsum;
        Ls[i] = lse[(b * H + h) * S + i];
      }
      std::fill(dQ.begin(), dQ.end(), T(0));
      for (int64_t j0 = 0; j0 < S; j0 += kBc) {
        const int64_t cols = std::min(kBc, S - j0);
        for (int64_t c = 0; c < cols; ++c) {
          const T* ks = k + ((b * S + j0 + c) * H + h) * Dqk;
          const T* vs = v + ((b * S + j0 + c) * H + h) * Dv;
          for (int64_t d = 0; d < Dqk; ++d) {
            Kr[c * Dqp + d] = operand(ks[d], bf);
            Kt[d * kBc + c] = Kr[c * Dqp + d];
          }
          for (int64_t d = 0; d < Dv; ++d) Vt[d * kBc + c] = operand(vs[d], bf);
        }
        std::fill(dK.begin(), dK.end(), T(0));
        std::fill(dV.begin(), dV.end(), T(0));
        for (int64_t i0 = j0 / kBr * kBr; i0 < S; i0 += kBr) {
          const int64_t rows = std::min(kBr, S - i0);
          // P = e^(S - lse) (masked), dP = dO V^T, dS = P (dP - D)
          std::fill(P.begin(), P.end(), T(0));
          std::fill(dS.begin(), dS.end(), T(0));
          acc_ab(&Qs[i0 * Dqp], Dqp, rows, Dqp, Kt.data(), kBc, kBc, P.data(), kBc);
          acc_ab(&dO[i0 * Dvp], Dvp, rows, Dvp, Vt.data(), kBc, kBc, dS.data(), kBc);
          for (int64_t r = 0; r < rows; ++r) {
            const int64_t nv = visible(i0 + r, j0, cols);
            const T lr = Ls[i0 + r], dr = Dr[i0 + r];
            T* p = &P[r * kBc];
            T* ds = &dS[r * kBc];
#pragma omp simd
            for (int64_t c = 0; c < kBc; ++c) {
              const T pc = c < nv ? fast_exp(p[c] - lr) : T(0);
              p[c] = pc;
              ds[c] = pc * (ds[c] - dr);
            }
          }
          if (bf) {  // P and dS as the operands of dV, dK and dQ
            round_all(P.data(), rows * kBc);
            round_all(dS.data(), rows * kBc);
          }
          for (int64_t r = 0; r < rows; ++r) {
            for (int64_t c = 0; c < cols; ++c) {
              Pt[c * kBr + r] = P[r * kBc + c];
              dSt[c * kBr + r] = dS[r * kBc + c];
            }
          }
          acc_ab(Pt.data(), kBr, cols, rows, &dO[i0 * Dvp], Dvp, Dvp, dV.data(), Dvp);
          acc_ab(dSt.data(), kBr, cols, rows, &Qs[i0 * Dqp], Dqp, Dqp, dK.data(), Dqp);
          acc_ab(dS.data(), kBc, rows, cols, Kr.data(), Dqp, Dqp, &dQ[i0 * Dqp], Dqp);
        }
        for (int64_t c = 0; c < cols; ++c) {
          std::memcpy(dk + ((b * S + j0 + c) * H + h) * Dqk, &dK[c * Dqp], sizeof(T) * Dqk);
          std::memcpy(dv + ((b * S + j0 + c) * H + h) * Dv, &dV[c * Dvp], sizeof(T) * Dv);
        }
      }
      for (int64_t i = 0; i < S; ++i) {
        T* dst = dq + ((b * S + i) * H + h) * Dqk;
        for (int64_t d = 0; d < Dqk; ++d) dst[d] = dQ[i * Dqp + d] * scale;
      }
    }
  }
}

template void attention_forward<float>(const float*, const float*, const float*, int64_t, int64_t,
                                       int64_t, int64_t, int64_t, float, float*, float*,
                                       GemmPrecision);
template void attention_forward<double>(const double*, const double*, const double*, int64_t,
                                        int64_t, int64_t, int64_t, int64_t, double, double*,
                                        double*, GemmPrecision);
template void attention_backward<float>(const float*, const float*, const float*, const float*,
                                        const float*, const float*, int64_t, int64_t, int64_t,
                                        int64_t, int64_t, float, float*, float*, float*,
                                        GemmPrecision);
template void attention_backward<double>(const double*, const double*, const double*, const double*,
                                         const double*, const double*, int64_t, int64_t, int64_t,
                                         int64_t, int64_t, double, double*, double*, double*,
                                         GemmPrecision);

}  // namespace moetron::kernels::cpu
