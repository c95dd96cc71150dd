// Linear: y = x W^T with W [out, in], no bias — the building block of every projection.
//
// Split backward (ARCHITECTURE contract 1): backward_input gives dx from dy; backward_weight adds
// dW from (dy, x) and may run later (zero-bubble / DualPipe defer it). The caller keeps x and dy
// in its per-micro-batch state; a Linear holds only the weight, its precision and (FP8) the
// weight's quantised copy.
//
// FP8 (LinearPrecision::recipe == FP8, T = float only; SPEC-deepseek-v3 §3.3):
//   forward          X [N,in] quantised 1x128 (an Fp8Act the caller keeps for the backward
//                    instead of fp32 X), W [out,in] as 128x128 blocks (Fp8WeightCache),
//                    Y = fp8_fprop; fp32 accumulation, promotion every 128.
//   backward_input   dY [N,out] quantised 1x128 (or 128x128 blocks for the App. B.2 experiment),
//                    dX = fp8_dgrad with the same W blocks.
//   backward_weight  dY quantised 128x1 token-major, the cached Fp8Act re-quantised 1x128 ->
//                    128x1 (requantize_1x128_to_128x1), dW += fp8_wgrad (fp32, accumulated).
// The weight copy is refreshed at every forward unless the policy's weight_version counter is
// set (then only when it moved): both are exact for a weight that changes only between steps.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <type_traits>

#include "kernels/fp8.h"
#include "kernels/ops.h"
#include "model/buffers.h"
#include "model/param.h"
#include "model/precision.h"

namespace moetron {

// An activation X [rows, cols] kept in FP8: E4M3 codes [rows, cols] and 1x128 tile scales
// [rows, ceil(cols/128)].
struct Fp8Act {
  int64_t rows = 0, cols = 0;
  bool pow2 = false;
  Buf<uint8_t> q;
  Buf<float> s;
  int64_t tiles() const { return (cols + 127) / 128; }
  // Bytes of the valid part (the buffers may be larger from an earlier, larger micro-batch).
  int64_t bytes() const { return rows * cols + rows * tiles() * 4; }
};

// x [N,C] -> a (1x128 tiles). T = float only.
template <class T>
void quantize_act(const T* x, int64_t N, int64_t C, bool pow2, Fp8Act& a) {
  if constexpr (!std::is_same_v<T, float>) {
    throw std::logic_error("FP8 layers need T = float");
  } else {
    a.rows = N, a.cols = C, a.pow2 = pow2;
    kernels::quantize(x, N, C, kernels::kTile1x128, pow2, sized(a.q, N * C),
                      sized(a.s, N * a.tiles()));
  }
}

// x [N,C] (T) = dequantised a
template <class T>
void dequantize_act(const Fp8Act& a, T* x) {
  if constexpr (!std::is_same_v<T, float>) {
    throw std::logic_error("FP8 layers need T = float");
  } else {
    kernels::dequantize(a.q.data(), a.s.data(), a.rows, a.cols, kernels::kTile1x128, x);
  }
}

// FP8 copy of G weight matrices W [G, R, C] (each quantised in its own 128x128 blocks):
// codes [G, R, C], scales [G, ceil(R/128), ceil(C/128)].
struct Fp8WeightCache {
  Buf<uint8_t> q;
  Buf<float> s;
  int64_t R = 0, C = 0;
  uint64_t version = 0;
  bool valid = false;
  int64_t blocks() const { return ((R + 127) / 128) * ((C + 127) / 128); }
  const uint8_t* codes(int64_t g) const { return q.data() + g * R * C; }
  const float* scales(int64_t g) const { return s.data() + g * blocks(); }
  // Re-quantises unless valid at *ver (ver null: always).
  template <class T>
  void refresh(const T* W, int64_t G, int64_t rows, int64_t cols, bool pow2, const uint64_t* ver) {
    if constexpr (!std::is_same_v<T, float>) {
      throw std::logic_error("FP8 layers need T = float");
    } else {
      if (ver && valid && version == *ver && R == rows && C == cols) return;
      R = rows, C = cols;
      sized(q, G * R * C);
      sized(s, G * blocks());
      for (int64_t g = 0; g < G; ++g)
        kernels::quantize(W + g * R * C, R, C, kernels::kTile128x128, pow2, q.data() + g * R * C,
                          s.data() + g * blocks());
      valid = true;
      version = ver ? *ver : 0;
    }
  }
};

template <class T>
struct Linear {
  Param<T>* W = nullptr;  // [out, in]
  int64_t in = 0, out = 0;
  kernels::GemmPrecision prec = kernels::GemmPrecision::FP32;
  LinearPrecision lp{};               // recipe FP8: the FP8 path below
  const uint64_t* version = nullptr;  // PrecisionPolicy::weight_version (null: every forward)
  mutable Fp8WeightCache wq{};        // FP8 W, refreshed by forward

  static Linear make(Param<T>* W, int64_t in, int64_t out, const LinearPrecision& lp,
                     const PrecisionPolicy& pol) {
    if (lp.fp8() && !std::is_same_v<T, float>)
      throw std::invalid_argument("the fp8 recipe needs a float model");
    Linear l;
    l.W = W, l.in = in, l.out = out, l.prec = lp.gemm(), l.lp = lp;
    l.version = pol.weight_version.get();
    return l;
  }
  bool fp8() const { return lp.fp8(); }

  // y[N,out] = x[N,in] W^T (FP8: x quantised into a scratch tile set, not kept)
  void forward(const T* x, int64_t N, T* y) const {
    if (fp8()) {
      thread_local Fp8Act a;
      quantize_act(x, N, in, lp.pow2_x, a);
      return forward(a, y);
    }
    kernels::gemm<T>(false, true, N, out, in, T(1), x, W->w(), T(0), y, prec);
  }
  // FP8: x given quantised (quantize_input), y[N,out] = x W^T
  void quantize_input(const T* x, int64_t N, Fp8Act& a) const {
    quantize_act(x, N, in, lp.pow2_x, a);
  }
  void forward(const Fp8Act& x, T* y) const {
    if constexpr (!std::is_same_v<T, float>) {
      throw std::logic_error("FP8 layers need T = float");
    } else {
      wq.refresh(W->w(), 1, out, in, lp.pow2_w, version);
      kernels::fp8_fprop(x.q.data(), x.s.data(), wq.codes(0), wq.scales(0), x.rows, out, in, y);
    }
  }
  // dx[N,in] = dy[N,out] W   (accumulate: dx += ...)
  void backward_input(const T* dy, int64_t N, T* dx, bool accumulate = false) const {
    if constexpr (std::is_same_v<T, float>) {
      if (fp8()) {
        wq.refresh(W->w(), 1, out, in, lp.pow2_w, version);  // normally still valid
        return kernels::fp8_linear_dgrad(dy, N, out, in, wq.codes(0), wq.scales(0), lp.pow2_dy,
                                         lp.dgrad_128x128, dx, accumulate);
      }
    }
    kernels::gemm<T>(false, false, N, in, out, T(1), dy, W->w(), accumulate ? T(1) : T(0), dx,
                     prec);
  }
  // dW[out,in] += dy[N,out]^T x[N,in] (FP8: x quantised 128x1 here)
  void backward_weight(const T* dy, const T* x, int64_t N) const {
    if constexpr (std::is_same_v<T, float>) {
      if (fp8())
        return kernels::fp8_linear_wgrad_f32(dy, x, N, out, in, lp.pow2_dy, lp.pow2_x, W->g());
    }
    kernels::gemm<T>(true, false, out, in, N, T(1), dy, x, T(1), W->g(), prec);
  }
  // FP8: dW += dy^T x from the cached FP8 x
  void backward_weight(const T* dy, const Fp8Act& x) const {
    if constexpr (!std::is_same_v<T, float>) {
      throw std::logic_error("FP8 layers need T = float");
    } else {
      kernels::fp8_linear_wgrad(dy, x.q.data(), x.s.data(), x.rows, out, in, lp.pow2_dy, x.pow2,
                                W->g());
    }
  }
};

}  // namespace moetron
