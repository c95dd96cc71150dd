// Every function of kernels/scalar.h called on one input: the check that the per-element math the
// CPU and the GPU share compiles for both and computes the same there.
//
// scalar_results is itself shared code. The CUDA build compiles it into a kernel
// (kernels/cuda/scalar_check.cu), so every CUDA build, GPU or not, compiles each scalar.h function
// for the device: a function that uses something the device lacks fails CI's build. On a GPU,
// tests/test_cuda_scalar.cpp runs that kernel over a spread of inputs and compares with the host's
// results: the bit-level conversions (bf16, FP8, power-of-two scales) bit for bit; the math built
// on exp, where the two libm's and FMA contraction may differ, to a few units in the last place.
// tests/test_kernels_scalar.cpp checks on the CPU that no scalar.h function is missing here.
#pragma once

#include <cstdint>

#include "kernels/scalar.h"

namespace moetron {

struct ScalarResults {
  // exact: the same bits on every machine
  int64_t round_up = 0;
  uint32_t f32_bits = 0, bits_f32 = 0, bf16_to_f32 = 0, round_bf16 = 0;
  uint32_t e4m3_to_f32 = 0, e5m2_to_f32 = 0, pow2_ceil = 0;
  uint16_t f32_to_bf16 = 0, e4m3_to_bf16 = 0;
  uint32_t e5m6_to_f32 = 0;
  uint16_t f32_to_e5m6 = 0, e5m6_unpack[2] = {};  // (the latter: e5m6_pack2 of two codes)
  uint32_t e5m6_narrowed[2] = {};  // e5m6_narrow_pair of x, -x (n = 3: two pairs), e5m6_widen_at
  uint8_t f32_to_fp8 = 0, f32_to_e4m3 = 0, f32_to_e5m2 = 0;
  // math on exp (libm's or fast_exp's polynomial): within a few ulp
  float sigmoid_f = 0, silu_f = 0, silu_grad_f = 0, fast_exp_f = 0, fast_sigmoid_f = 0,
        fast_silu_f = 0;
  double sigmoid_d = 0, silu_d = 0, silu_grad_d = 0, fast_exp_d = 0, fast_sigmoid_d = 0,
         fast_silu_d = 0;
  // the per-token backward rows over 4 experts
  float gate_row_f[4] = {}, balance_row_f[4] = {};
  double gate_row_d[4] = {}, balance_row_d[4] = {};
};

namespace scalar_check_detail {
// gate_backward_row and seq_balance_backward_row at T on scores 0.1..0.7, with t in [0.5, 1)
// (x's mantissa bits: every input a finite gradient) in the gradients and loads
template <class T>
MOE_HD void rows(float x, T* gate, T* balance) {
  const T t = static_cast<T>(bits_f32((f32_bits(x) & 0x007fffffu) | 0x3f000000u));
  const T s[4] = {T(0.1), T(0.3), T(0.5), T(0.7)};
  const int32_t id[2] = {2, 0};
  const T dw[2] = {t, T(1) - t};
  const T fb[4] = {t, T(0.5), T(1), T(2)};
  for (int e = 0; e < 4; ++e) gate[e] = T(0), balance[e] = T(0);
  gate_backward_row<T>(s, id, dw, 2, T(2.5), gate);
  seq_balance_backward_row<T>(s, fb, 4, 1e-3, balance);
}
}  // namespace scalar_check_detail

// r = every scalar.h function of x (the float argument) and code (the byte argument)
MOE_HD void scalar_results(float x, uint8_t code, ScalarResults& r) {
  r.round_up = round_up(code, 16);
  r.f32_bits = f32_bits(x);
  r.bits_f32 = f32_bits(bits_f32(f32_bits(x) ^ 0x80000000u));
  r.f32_to_bf16 = f32_to_bf16(x);
  r.bf16_to_f32 = f32_bits(bf16_to_f32(static_cast<uint16_t>(code << 8 | code)));
  r.round_bf16 = f32_bits(round_bf16(x));
  r.e4m3_to_f32 = f32_bits(e4m3_to_f32(code));
  r.e5m2_to_f32 = f32_bits(e5m2_to_f32(code));
  r.f32_to_fp8 = f32_to_fp8(x, 3, 7, 0x7e, 448.0f, 0.001953125f, 0x7f);
  r.f32_to_e4m3 = f32_to_e4m3(x);
  r.f32_to_e5m2 = f32_to_e5m2(x);
  r.pow2_ceil = f32_bits(pow2_ceil(x));
  r.e4m3_to_bf16 = e4m3_to_bf16(code);
  r.f32_to_e5m6 = f32_to_e5m6(x);
  r.e5m6_to_f32 = f32_bits(e5m6_to_f32(static_cast<uint16_t>((code << 4 | code >> 4) & 0xfffu)));
  uint8_t packed[3];
  e5m6_pack2(r.f32_to_e5m6, static_cast<uint16_t>(code << 3), packed);
  r.e5m6_unpack[0] = e5m6_unpack(packed, 0), r.e5m6_unpack[1] = e5m6_unpack(packed, 1);
  const float xs[3] = {x, -x, x};
  uint8_t pairs[6];
  e5m6_narrow_pair(xs, 3, 0, pairs), e5m6_narrow_pair(xs, 3, 1, pairs);
  r.e5m6_narrowed[0] = f32_bits(e5m6_widen_at(pairs, 1));
  r.e5m6_narrowed[1] = f32_bits(e5m6_widen_at(pairs, 3));  // the padding code: 0
  const double xd = static_cast<double>(x);
  r.sigmoid_f = sigmoid<float>(x), r.sigmoid_d = sigmoid<double>(xd);
  r.silu_f = silu<float>(x), r.silu_d = silu<double>(xd);
  r.silu_grad_f = silu_grad<float>(x), r.silu_grad_d = silu_grad<double>(xd);
  r.fast_exp_f = fast_exp(x), r.fast_exp_d = fast_exp(xd);
  r.fast_sigmoid_f = fast_sigmoid<float>(x), r.fast_sigmoid_d = fast_sigmoid<double>(xd);
  r.fast_silu_f = fast_silu<float>(x), r.fast_silu_d = fast_silu<double>(xd);
  scalar_check_detail::rows<float>(x, r.gate_row_f, r.balance_row_f);
  scalar_check_detail::rows<double>(x, r.gate_row_d, r.balance_row_d);
}

}  // namespace moetron
