// The activation buffers of model/: Buffer<T> (kernels/buffer.h) sized grow-only, and the saved
// activation that keeps a tensor for the backward in the form the precision policy asks for.
//
// sized(b, n): n elements, reallocating only when b never held that many, so a state reused for
// the next micro-batch allocates nothing in steady state; contents are unspecified (zeroed(...)
// writes zeros with an op). Model code never touches elements: it passes data() to ops.
//
// SavedAct: an activation X [rows, cols] kept from forward to backward either as-is (T) or as FP8
// E4M3 codes with 1x128 tile scales (SPEC §3.5: the inputs of FP8 Linears and the SwiGLU inputs
// of FP8 MLPs/experts). The layer writes X into write(...) — the kept buffer itself, or for FP8 a
// scratch that keep() then quantises — so no copy is made in either form. An input the caller
// keeps anyway (a layer's input) is referenced instead (Linear::keep_input): FP8 keeps its tiles,
// other recipes keep nothing.
#pragma once

#include <cstdint>

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
  // x [rows, cols] = dequantised this
  void dequantize(const Exec& ex, float* x) const {
    kernels::dequantize(ex, q.data(), s.data(), rows, cols, kernels::kTile1x128, x);
  }
};

template <class T>
struct SavedAct {
  int64_t rows = 0, cols = 0;
  bool fp8 = false, pow2 = false;  // set by the owner at build time (its precision policy)
  Buffer<T> x;                     // [rows, cols] when !fp8 and not a reference
  Fp8Act x8;                       // when fp8
  const T* ref = nullptr;          // !fp8: X is the caller's memory (kept alive by the caller)

  const T* data() const { return ref ? ref : x.data(); }

  // Where the forward writes X: the kept buffer, or (FP8) the caller's scratch.
  T* write(int64_t N, int64_t C, Buffer<T>& scratch) {
    rows = N, cols = C, ref = nullptr;
    return sized(fp8 ? scratch : x, N * C);
  }
  // FP8: quantise what was written into scratch (a no-op otherwise).
  void keep(const Exec& ex, const Buffer<T>& scratch) {
    if constexpr (std::is_same_v<T, float>) {
      if (fp8) x8.quantize(ex, scratch.data(), rows, cols, pow2);
    }
  }
  // X as T values: the kept buffer, or (FP8) dequantised into scratch.
  const T* read(const Exec& ex, Buffer<T>& scratch) const {
    if constexpr (std::is_same_v<T, float>) {
      if (fp8) {
        x8.dequantize(ex, sized(scratch, rows * cols));
        return scratch.data();
      }
    }
    return data();
  }
  // Bytes this object holds for the backward (a reference holds none).
  int64_t bytes() const {
    if (fp8) return x8.bytes();
    return ref ? 0 : rows * cols * static_cast<int64_t>(sizeof(T));
  }
};

}  // namespace moetron
