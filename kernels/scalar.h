// Scalar math shared by every backend.
//
// Each function here is the single definition of a piece of per-element math (bf16 rounding,
// SiLU, sigmoid, the online-softmax update, ...). CPU kernels call them directly; CUDA kernels
// include this header and get the same code compiled for the device through MOE_HD, so the CPU
// tests cover the arithmetic that the GPU runs.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>

#if defined(__CUDACC__)
#define MOE_HD __host__ __device__ __forceinline__
#else
#define MOE_HD inline
#endif

namespace moetron {

// ---- bfloat16 --------------------------------------------------------------------------------
// Stored as the upper 16 bits of an IEEE fp32. Conversion rounds to nearest even; NaN stays NaN.
MOE_HD uint32_t f32_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, 4);
  return u;
}
MOE_HD float bits_f32(uint32_t u) {
  float x;
  std::memcpy(&x, &u, 4);
  return x;
}
MOE_HD uint16_t f32_to_bf16(float x) {
  uint32_t u = f32_bits(x);
  if ((u & 0x7fffffffu) > 0x7f800000u)
    return static_cast<uint16_t>((u >> 16) | 0x40u);  // quiet NaN
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}
MOE_HD float bf16_to_f32(uint16_t h) { return bits_f32(static_cast<uint32_t>(h) << 16); }
// Round an fp32 value to the nearest bf16 and back (what a bf16 operand "sees").
MOE_HD float round_bf16(float x) { return bf16_to_f32(f32_to_bf16(x)); }

// ---- activations -----------------------------------------------------------------------------
template <class T>
MOE_HD T sigmoid(T x) {
  return T(1) / (T(1) + std::exp(-x));
}
template <class T>
MOE_HD T silu(T x) {
  return x * sigmoid(x);
}
// d silu(x) / dx = s (1 + x (1 - s)), s = sigmoid(x)
template <class T>
MOE_HD T silu_grad(T x) {
  T s = sigmoid(x);
  return s * (T(1) + x * (T(1) - s));
}

// ---- vectorisable exp / sigmoid --------------------------------------------------------------
// std::exp does not vectorise without -ffast-math, and the softmax / cross-entropy / SwiGLU loops
// spend most of their time in it, so the kernels call fast_exp. float: Cephes-style range
// reduction x = n ln2 + r, |r| <= ln2/2, degree-6 polynomial for e^r, 2^n built from the exponent
// bits; relative error < 3e-7 (about 2 ulp). Arguments above 88 saturate to e^88 (~1.65e38);
// below -87 (and -inf) the result is 0; NaN stays NaN. Branch-free, so loops over it vectorise.
// double: std::exp (doubles are for reference checks, where exactness matters more than speed).
MOE_HD float fast_exp(float x) {
  const float kHi = 88.0f, kLo = -87.0f;
  float xc = x > kHi ? kHi : x;
  xc = xc < kLo ? kLo : xc;
  // Round x*log2(e) to the nearest integer with the 1.5*2^23 trick; its low bits hold n.
  const float t = xc * 1.44269504088896341f + 12582912.0f;
  const float n = t - 12582912.0f;
  const int32_t ni = static_cast<int32_t>(f32_bits(t) - 0x4B400000u);
  float r = xc - n * 0.693359375f;  // ln2 split in two for an exact-ish reduction
  r = r - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.0f;
  const float res = p * bits_f32(static_cast<uint32_t>(ni + 127) << 23);
  return x < kLo ? 0.0f : res;
}
MOE_HD double fast_exp(double x) { return std::exp(x); }
// sigmoid through fast_exp: 1 / (1 + e^-x). Exact limits 0 and 1 far out; NaN stays NaN.
template <class T>
MOE_HD T fast_sigmoid(T x) {
  return T(1) / (T(1) + fast_exp(-x));
}
template <class T>
MOE_HD T fast_silu(T x) {
  return x * fast_sigmoid(x);
}

}  // namespace moetron
