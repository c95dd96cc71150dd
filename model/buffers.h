// The activation buffers of model/: Buffer<T> (kernels/buffer.h) sized grow-only, and the saved
// activation that keeps a tensor for the backward in the form the precision policy asks for.
//
// sized(b, n): n elements, reallocating only when b never held that many, so a state reused for
// the next micro-batch allocates nothing in steady state; contents are unspecified (zeroed(...)
// writes zeros with an op). Model code never touches elements: it passes data() to ops.
//
// SavedAct: an activation X [rows, cols] kept from forward to backward as T, as bf16 (the
// activation storage policy, `activations.storage: bf16`: the forward computes in fp32 and keeps
// a bf16 copy for the backward, like Megatron's bf16 activations) or as FP8 E4M3 codes with 1x128
// tile scales (SPEC §3.5: the inputs of FP8 Linears and the SwiGLU inputs of FP8 MLPs/experts).
// The layer writes X into write(...) — the kept buffer itself (T), or a scratch that keep() then
// converts — so no copy is made in any form; the backward read()s it back as T (widened or
// dequantised into a scratch). An input the caller keeps anyway (a layer's input) is not kept
// again (Linear::keep_input): FP8 keeps its tiles, other forms nothing, and the caller passes it
// back to the weight gradient.
#pragma once

#include <cstdint>
#include <type_traits>

#include "kernels/buffer.h"
#include "kernels/exec.h"
#include "kernels/ops.h"

namespace moetron {

template <class T>
T* sized(Buffer<T>& b, int64_t n) {
  return b.resize(static_cast<size_t>(n));
}
// Sized and filled with zeros on ex's device.
template <class T>
T* zeroed(const Exec& ex, Buffer<T>& b, int64_t n) {
  T* p = sized(b, n);
  kernels::fill_zero(ex, p, sizeof(T) * static_cast<size_t>(n));
  return p;
}

// An activation X [rows, cols] kept in FP8: E4M3 codes [rows, cols] and 1x128 tile scales
// [rows, ceil(cols/128)].
struct Fp8Act {
  int64_t rows = 0, cols = 0;
  bool pow2 = false;
  Buffer<uint8_t> q;
  Buffer<float> s;
  int64_t tiles() const { return (cols + 127) / 128; }
  // Bytes of the valid part (the buffers may be larger from an earlier, larger micro-batch).
  int64_t bytes() const { return rows * cols + rows * tiles() * 4; }
  // x [N,C] -> this (1x128 tiles)
  void quantize(const Exec& ex, const float* x, int64_t N, int64_t C, bool pow2_) {
    rows = N, cols = C, pow2 = pow2_;
    kernels::quantize(ex, x, N, C, kernels::kTile1x128, pow2, sized(q, N * C),
                      sized(s, N * tiles()));
  }
  // rows x[idx[r]] of x [*, C] (idx[r] < 0: zeros) -> this: quantize of the gathered rows
  void quantize_gathered(const Exec& ex, const float* x, const int64_t* idx, int64_t N, int64_t C,
                         bool pow2_) {
    rows = N, cols = C, pow2 = pow2_;
    kernels::quantize_gathered(ex, x, idx, N, C, pow2, sized(q, N * C), sized(s, N * tiles()));
  }
  // x [rows, cols] = dequantised this
  void dequantize(const Exec& ex, float* x) const {
    kernels::dequantize(ex, q.data(), s.data(), rows, cols, kernels::kTile1x128, x);
  }
};

// How a SavedAct keeps X: as T, as bf16 (activation storage policy, T = float), as FP8 tiles, or
// (the attention output under activations.attention_output: e5m6, T = float) as E5M6.
enum class KeepAs { T, BF16, FP8, E5M6 };

// The bytes of n E5M6 values, two codes to three bytes (kernels/scalar.h)
inline int64_t e5m6_bytes(int64_t n) { return 3 * ((n + 1) / 2); }

template <class T>
struct SavedAct {
  int64_t rows = 0, cols = 0;
  KeepAs form = KeepAs::T;  // set by the owner before write() (its precision policy)
  bool pow2 = false;        // FP8: power-of-two tile scales
  Buffer<T> x;              // form == T: [rows, cols]
  Buffer<uint16_t> x16;     // form == BF16: bf16 bit patterns [rows, cols]
  Fp8Act x8;                // form == FP8
  Buffer<uint8_t> x12;      // form == E5M6: packed codes [e5m6_bytes(rows * cols)]

  bool fp8() const { return form == KeepAs::FP8; }
  void set_form(bool fp8_, bool bf16, bool pow2_ = false) {
    form = fp8_ ? KeepAs::FP8 : (bf16 && std::is_same_v<T, float>) ? KeepAs::BF16 : KeepAs::T;
    pow2 = pow2_;
  }
  // E5M6 instead (T = float; a double model keeps T)
  void set_e5m6() {
    if constexpr (std::is_same_v<T, float>) form = KeepAs::E5M6;
  }

  // Where the forward writes X: the kept buffer (T), or the caller's scratch that keep() then
  // converts (BF16, FP8).
  T* write(int64_t N, int64_t C, Buffer<T>& scratch) {
    rows = N, cols = C;
    return sized(form == KeepAs::T ? x : scratch, N * C);
  }
  // BF16/FP8/E5M6: convert what was written into scratch (a no-op for T).
  void keep(const Exec& ex, const Buffer<T>& scratch) { convert(ex, scratch.data()); }
  // Keeps X [N, C] from a buffer of the caller's that write() did not hand out: converted, or
  // (T) copied.
  void keep_from(const Exec& ex, const T* src, int64_t N, int64_t C) {
    rows = N, cols = C;
    if (form == KeepAs::T) return kernels::copy(ex, sized(x, N * C), src, sizeof(T) * N * C);
    convert(ex, src);
  }
  // X as T values: the kept buffer, or (BF16, FP8) widened/dequantised into scratch.
  const T* read(const Exec& ex, Buffer<T>& scratch) const {
    if constexpr (std::is_same_v<T, float>) {
      if (form == KeepAs::FP8) {
        x8.dequantize(ex, sized(scratch, rows * cols));
        return scratch.data();
      }
      if (form == KeepAs::BF16) {
        kernels::widen_from_bf16(ex, x16.data(), rows * cols, sized(scratch, rows * cols));
        return scratch.data();
      }
      if (form == KeepAs::E5M6) {
        kernels::widen_from_e5m6(ex, x12.data(), rows * cols, sized(scratch, rows * cols));
        return scratch.data();
      }
    }
    return x.data();
  }
  // Bytes this object holds for the backward.
  int64_t bytes() const {
    switch (form) {
      case KeepAs::FP8:
        return x8.bytes();
      case KeepAs::BF16:
        return rows * cols * 2;
      case KeepAs::E5M6:
        return e5m6_bytes(rows * cols);
      case KeepAs::T:
        break;
    }
    return rows * cols * static_cast<int64_t>(sizeof(T));
  }

 private:
  void convert(const Exec& ex, const T* src) {  // src [rows, cols] into the kept form (not T)
    if constexpr (std::is_same_v<T, float>) {
      if (form == KeepAs::FP8) x8.quantize(ex, src, rows, cols, pow2);
      if (form == KeepAs::BF16)
        kernels::narrow_to_bf16(ex, src, rows * cols, sized(x16, rows * cols));
      if (form == KeepAs::E5M6)
        kernels::narrow_to_e5m6(ex, src, rows * cols, sized(x12, e5m6_bytes(rows * cols)));
    }
  }
};

// An output gradient dY [rows, cols] kept from backward_input to the weight gradient, which may
// run later (zero-bubble and DualPipe schedules defer it; a micro-batch holds its kept gradients
// meanwhile, PipelineExecutor's gradient sets). As T, or — when the Linear that reads it runs the
// FP8 recipe — as what its Wgrad reads anyway: 128x1 tiles along the rows, stored transposed per
// row group (kernels::grouped_quantize_128x1_t: codes [cols, rows_g] and scales
// [cols, ceil(rows_g/128)] of each group in turn), a quarter of the fp32 bytes. Quantising at
// backward_input instead of in the weight gradient changes no bit: same values, same quantiser.
// The layer writes dY into write(...) — the kept buffer (T) or a scratch — and keep()s it after
// the input gradient has read it: FP8 quantises, T copies only what was not written in place.
template <class T>
struct SavedGrad {
  int64_t rows = 0, cols = 0;
  bool fp8 = false;         // set by the owning Linear: its recipe
  bool pow2 = false;        // FP8: power-of-two tile scales (LinearPrecision::pow2_dy)
  Buffer<T> dy;             // !fp8: [rows, cols]
  Buffer<uint8_t> q;        // fp8: codes, per group [cols, rows_g]
  Buffer<float> s;          // fp8: scales, per group [cols, ceil(rows_g/128)]
  int64_t scale_count = 0;  // fp8: of s

  void set_form(bool fp8_, bool pow2_) { fp8 = fp8_ && std::is_same_v<T, float>, pow2 = pow2_; }
  // Where dY [N, C] is written: the kept buffer (T), or scratch (FP8).
  T* write(int64_t N, int64_t C, Buffer<T>& scratch) {
    rows = N, cols = C;
    return sized(fp8 ? scratch : dy, N * C);
  }
  // Keeps dY [rows, cols] = src, in G row groups (off: G + 1 host offsets, off[0] = 0, off[G] =
  // rows; FP8 tiles start at each group's first row).
  void keep(const Exec& ex, const T* src, int64_t N, int64_t C, const int64_t* off, int64_t G) {
    rows = N, cols = C;
    if constexpr (std::is_same_v<T, float>) {
      if (fp8) {
        scale_count = C * kernels::row_tile_offsets(off, G)[static_cast<size_t>(G)];
        return kernels::grouped_quantize_128x1_t(ex, off, G, src, C, pow2, sized(q, N * C),
                                                 sized(s, scale_count));
      }
    }
    if (src != dy.data()) kernels::copy(ex, sized(dy, N * C), src, sizeof(T) * N * C);
  }
  void keep(const Exec& ex, const T* src, int64_t N, int64_t C) {  // one group
    const int64_t off[2] = {0, N};
    keep(ex, src, N, C, off, 1);
  }
  template <class F>
  void for_each(F&& f) {  // the buffers (for PipelineExecutor's gradient sets)
    f(dy), f(q), f(s);
  }
  // Bytes this object holds for the weight gradient.
  int64_t bytes() const {
    return fp8 ? rows * cols + scale_count * 4 : rows * cols * static_cast<int64_t>(sizeof(T));
  }
};

}  // namespace moetron
