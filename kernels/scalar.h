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

// ---- sizes -----------------------------------------------------------------------------------
// x rounded up to a multiple of m > 0 (x >= 0): tile paddings, expert row groups
MOE_HD int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }

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

namespace moetron {

// ---- FP8 (OCP): E4M3 "fn" (bias 7, max 448, no inf, NaN = S.1111.111) and E5M2 (bias 15,
// max 57344, inf and NaN) -------------------------------------------------------------------
// Encoding rounds to nearest even and SATURATES: finite values beyond the largest code and
// +-inf become +-max (DeepSeek-V3's casts clamp to the format's range); NaN stays NaN.
MOE_HD float e4m3_to_f32(uint8_t c) {
  const uint32_t s = (c & 0x80u) << 24, e = (c >> 3) & 15u, m = c & 7u;
  if (e == 15 && m == 7) return bits_f32(s | 0x7fc00000u);
  if (e == 0) return bits_f32(s | f32_bits(static_cast<float>(m) * 0.001953125f));  // m 2^-9
  return bits_f32(s | ((e + 120u) << 23) | (m << 20));
}
MOE_HD float e5m2_to_f32(uint8_t c) {
  const uint32_t s = (c & 0x80u) << 24, e = (c >> 2) & 31u, m = c & 3u;
  if (e == 31) return bits_f32(s | (m ? 0x7fc00000u : 0x7f800000u));
  if (e == 0) return bits_f32(s | f32_bits(static_cast<float>(m) * 1.52587890625e-05f));  // m 2^-16
  return bits_f32(s | ((e + 112u) << 23) | (m << 21));
}
// Shared encoder: `mbits` mantissa bits, exponent bias, the largest finite code (magnitude),
// its value, the subnormal step, and the NaN code.
MOE_HD uint8_t f32_to_fp8(float x, int mbits, int bias, uint8_t max_code, float max_val,
                          float sub_step, uint8_t nan_code) {
  uint32_t u = f32_bits(x);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return sign | nan_code;
  const float a = bits_f32(u);
  if (a >= max_val) return sign | max_code;  // saturate (inf included)
  const float min_normal = sub_step * static_cast<float>(1 << mbits);
  if (a < min_normal) {  // subnormal: a / step rounded to nearest even (exact scaling)
    const float q = std::nearbyint(a / sub_step);  // default rounding mode: to nearest even
    return sign | static_cast<uint8_t>(q);         // q == 2^mbits is the smallest normal
  }
  const int shift = 23 - mbits;
  const uint32_t r = u + ((1u << (shift - 1)) - 1u) + ((u >> shift) & 1u);  // RNE
  const int e = static_cast<int>(r >> 23) - 127 + bias;
  const uint32_t m = (r >> shift) & ((1u << mbits) - 1u);
  const uint32_t code = (static_cast<uint32_t>(e) << mbits) | m;
  return sign | static_cast<uint8_t>(code > max_code ? max_code : code);
}
MOE_HD uint8_t f32_to_e4m3(float x) {
  return f32_to_fp8(x, 3, 7, 0x7e, 448.0f, 0.001953125f, 0x7f);
}
MOE_HD uint8_t f32_to_e5m2(float x) {
  return f32_to_fp8(x, 2, 15, 0x7b, 57344.0f, 1.52587890625e-05f, 0x7f);
}

// ---- E5M6: the 12-bit float DeepSeek-V3 keeps the attention output in for the backward (report
// §3.3.3): sign, 5 exponent bits (bias 15, as E5M2 and fp16), 6 mantissa bits; exponent 31 holds
// inf (mantissa 0) and NaN; the largest finite value 65024, subnormals m 2^-20. Encoding rounds
// to nearest even and saturates like the FP8 casts; NaN stays NaN. Codes are kept two to three
// bytes (e5m6_pack2): 1.5 bytes an element against bf16's 2. ----------------------------------
MOE_HD float e5m6_to_f32(uint16_t c) {
  const uint32_t s = (c & 0x800u) << 20, e = (c >> 6) & 31u, m = c & 63u;
  if (e == 31) return bits_f32(s | (m ? 0x7fc00000u : 0x7f800000u));
  if (e == 0) return bits_f32(s | f32_bits(static_cast<float>(m) * 9.5367431640625e-07f));  // 2^-20
  return bits_f32(s | ((e + 112u) << 23) | (m << 17));
}
MOE_HD uint16_t f32_to_e5m6(float x) {
  uint32_t u = f32_bits(x);
  const uint16_t sign = static_cast<uint16_t>((u >> 20) & 0x800u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return sign | 0x7e0u;  // NaN
  const float a = bits_f32(u);
  if (a >= 65024.0f) return sign | 0x7bfu;  // saturate (inf included)
  if (a < 6.103515625e-05f) {  // below 2^-14: subnormal, a / 2^-20 (exact) to nearest even;
    const float q = std::nearbyint(a * 1048576.0f);  // q == 64 is the smallest normal
    return sign | static_cast<uint16_t>(q);
  }
  const uint32_t r = u + 0xffffu + ((u >> 17) & 1u);  // round the 17 dropped bits to nearest even
  const uint32_t code = (((r >> 23) - 112u) << 6) | ((r >> 17) & 63u);
  return sign | static_cast<uint16_t>(code > 0x7bfu ? 0x7bfu : code);
}
// Two 12-bit codes in three bytes: c0's low byte; c0's high nibble | c1's low nibble << 4; c1's
// high byte.
MOE_HD void e5m6_pack2(uint16_t c0, uint16_t c1, uint8_t* b) {
  b[0] = static_cast<uint8_t>(c0 & 0xffu);
  b[1] = static_cast<uint8_t>(((c0 >> 8) & 0xfu) | ((c1 & 0xfu) << 4));
  b[2] = static_cast<uint8_t>((c1 >> 4) & 0xffu);
}
MOE_HD uint16_t e5m6_unpack(const uint8_t* b, int which) {  // which: 0 or 1 of the pair at b
  return which == 0 ? static_cast<uint16_t>(b[0] | ((b[1] & 0xfu) << 8))
                    : static_cast<uint16_t>((b[1] >> 4) | (b[2] << 4));
}
// The packed array of n values, element-wise (narrow_to_e5m6 / widen_from_e5m6 on every backend):
// pair p of x [n] encoded into its three bytes (an odd n's last pair padded with code 0), and
// value i decoded.
MOE_HD void e5m6_narrow_pair(const float* x, int64_t n, int64_t p, uint8_t* packed) {
  const int64_t i = 2 * p;
  const uint16_t c1 = i + 1 < n ? f32_to_e5m6(x[i + 1]) : uint16_t(0);
  e5m6_pack2(f32_to_e5m6(x[i]), c1, packed + 3 * p);
}
MOE_HD float e5m6_widen_at(const uint8_t* packed, int64_t i) {
  return e5m6_to_f32(e5m6_unpack(packed + 3 * (i / 2), static_cast<int>(i % 2)));
}

// Power-of-two ("UE8M0") scale: the smallest 2^k >= v (v > 0), from the exponent bits.
MOE_HD float pow2_ceil(float v) {
  uint32_t u = f32_bits(v);
  uint32_t e = (u >> 23) & 0xffu;
  if (u & 0x7fffffu) ++e;
  if (e < 1) e = 1;
  if (e > 254) e = 254;
  return bits_f32(e << 23);
}
// E4M3 -> bf16 bits. Every E4M3 value is exact in bf16 (3 <= 7 mantissa bits, 2^-9..448 within
// range), so a bf16 GEMM over decoded codes multiplies the exact FP8 values: normal codes move
// their exponent (bias 7 -> 127) and mantissa into place, subnormals m 2^-9 go through fp32, NaN
// (S.1111.111) -> 0x7FC0 with its sign. Agrees with e4m3_to_f32 for all 256 codes (tested).
MOE_HD uint16_t e4m3_to_bf16(uint8_t c) {
  const uint32_t mag = c & 0x7fu, sign = (c & 0x80u) << 8;
  const uint32_t nor = (mag << 4) + (120u << 7);  // exponent e + 120, mantissa m << 4
  const uint32_t sub = f32_bits(static_cast<float>(mag) * 0.001953125f) >> 16;  // m 2^-9, exact
  uint32_t h = mag < 8u ? sub : nor;
  h = mag == 0x7fu ? 0x7fc0u : h;
  return static_cast<uint16_t>(sign | h);
}

}  // namespace moetron

namespace moetron {

// ---- per-token rows of the MoE gate and balance-loss backwards --------------------------------
// One token's row, the same code on the CPU (a loop over tokens) and the GPU (a thread per token).
// Gate: dl[E] (zeroed by the caller) gets, at the K chosen experts id[K] with sigmoid scores s[E],
// the gradient of w_k = c s_k / sum_j s_j through the normalisation and the sigmoid, from dw[K].
template <class T>
MOE_HD void gate_backward_row(const T* s, const int32_t* id, const T* dw, int64_t K, T c, T* dl) {
  T S = 0, dot = 0;
  for (int64_t k = 0; k < K; ++k) {
    S += s[id[k]];
    dot += dw[k] * s[id[k]];
  }
  if (!(S > T(0))) return;
  for (int64_t k = 0; k < K; ++k) {
    const T sj = s[id[k]];
    const T ds = c * (dw[k] / S - dot / (S * S));
    dl[id[k]] = ds * sj * (T(1) - sj);
  }
}
// Balance loss: dl[e] += c (f_e / Z - sum_j f_j s_j / Z^2) s_e (1 - s_e), Z = sum_j s_j, for one
// token with scores s[E] in a sequence whose f is fb[E].
template <class T>
MOE_HD void seq_balance_backward_row(const T* s, const T* fb, int64_t E, double c, T* dl) {
  double z = 0, fs = 0;
  for (int64_t e = 0; e < E; ++e) z += s[e], fs += static_cast<double>(fb[e]) * s[e];
  for (int64_t e = 0; e < E; ++e) {
    const double ds = c * (fb[e] / z - fs / (z * z));
    dl[e] += static_cast<T>(ds * s[e] * (1.0 - s[e]));
  }
}

}  // namespace moetron
