// The shared per-element math (kernels/scalar.h) on the GPU against the host, through
// kernels/scalar_check.h's scalar_results (every scalar.h function on one input): run by a kernel
// (kernels/cuda/scalar_check.cu) over finite values of every magnitude, FP8 and bf16 edges, zeros,
// subnormals, infinities and NaN, with all 256 byte codes. The bit-level conversions must give the
// same bits; the math built on exp within 4 ulp (float: libm's expf and CUDA's differ in the last
// bits, and nvcc contracts a * b + c into an FMA where the host does not; double: 1e-14 relative).
// Skipped without a GPU.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "kernels/cuda/scalar_check.h"
#include "kernels/scalar_check.h"
#include "tests/test_cuda_util.h"

namespace moetron::kernels::gpu::testing {
namespace {

std::vector<float> inputs() {
  const float inf = std::numeric_limits<float>::infinity();
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> x = {0.f,     -0.f,    1.f,      -1.f,   0.5f,    -0.5f,  3.14159f,
                          -7.25f,  20.f,    -20.f,    87.5f,  88.5f,   -86.9f, -87.5f,
                          -100.f,  1e-40f,  -1e-40f,  448.f,  464.f,   480.f,  -500.f,
                          57344.f, 61440.f, 1e30f,    -3e38f, inf,     -inf,   nan,
                          -nan,    1e-3f,   0.00195f, 2e-3f,  1.5e-5f, 1e-7f,  0.1f};
  for (int i = -40; i <= 40; ++i) x.push_back(std::ldexp(1.f + 0.37f * (i % 5), i));
  while (x.size() < 256) x.push_back(static_cast<float>(x.size()) * -0.731f + 11.3f);
  return x;
}

uint32_t bits(float v) {
  uint32_t u;
  std::memcpy(&u, &v, 4);
  return u;
}

// a and b agree to rel (a few ulp) of b, NaN with NaN, inf with inf
template <class T>
bool close(T a, T b, double rel) {
  if (std::isnan(a) || std::isnan(b)) return std::isnan(a) && std::isnan(b);
  if (std::isinf(a) || std::isinf(b)) return a == b;
  return std::fabs(static_cast<double>(a) - static_cast<double>(b)) <=
         rel * std::fabs(static_cast<double>(b)) + std::numeric_limits<T>::min();
}
constexpr double kFloatRel = 4 * 1.2e-7, kDoubleRel = 1e-14;

void expect_same(const ScalarResults& g, const ScalarResults& h, const std::string& at) {
  EXPECT_EQ(g.round_up, h.round_up) << at;
  EXPECT_EQ(g.f32_bits, h.f32_bits) << at;
  EXPECT_EQ(g.bits_f32, h.bits_f32) << at;
  EXPECT_EQ(g.bf16_to_f32, h.bf16_to_f32) << at;
  EXPECT_EQ(g.round_bf16, h.round_bf16) << at;
  EXPECT_EQ(g.e4m3_to_f32, h.e4m3_to_f32) << at;
  EXPECT_EQ(g.e5m2_to_f32, h.e5m2_to_f32) << at;
  EXPECT_EQ(g.pow2_ceil, h.pow2_ceil) << at;
  EXPECT_EQ(g.f32_to_bf16, h.f32_to_bf16) << at;
  EXPECT_EQ(g.e4m3_to_bf16, h.e4m3_to_bf16) << at;
  EXPECT_EQ(g.f32_to_fp8, h.f32_to_fp8) << at;
  EXPECT_EQ(g.f32_to_e4m3, h.f32_to_e4m3) << at;
  EXPECT_EQ(g.f32_to_e5m2, h.f32_to_e5m2) << at;
  EXPECT_EQ(g.f32_to_e5m6, h.f32_to_e5m6) << at;
  EXPECT_EQ(g.e5m6_to_f32, h.e5m6_to_f32) << at;
  EXPECT_EQ(g.e5m6_unpack[0], h.e5m6_unpack[0]) << at;
  EXPECT_EQ(g.e5m6_unpack[1], h.e5m6_unpack[1]) << at;
  EXPECT_EQ(g.e5m6_narrowed[0], h.e5m6_narrowed[0]) << at;
  EXPECT_EQ(g.e5m6_narrowed[1], h.e5m6_narrowed[1]) << at;
}

// a row of 4 within rel of the row's largest magnitude (its entries come from one difference,
// which can cancel to near zero)
template <class T>
void expect_row(const T* g, const T* h, double rel, const std::string& at) {
  double scale = 0;
  for (int e = 0; e < 4; ++e) scale = std::max(scale, std::fabs(static_cast<double>(h[e])));
  for (int e = 0; e < 4; ++e)
    EXPECT_LE(std::fabs(static_cast<double>(g[e]) - static_cast<double>(h[e])), rel * scale)
        << at << " [" << e << "]: gpu " << g[e] << " host " << h[e];
}

// the exp-based results: a name, its float and its double member
struct MathResult {
  const char* name;
  float ScalarResults::*f;
  double ScalarResults::*d;
};
constexpr MathResult kMath[] = {
    {"sigmoid", &ScalarResults::sigmoid_f, &ScalarResults::sigmoid_d},
    {"silu", &ScalarResults::silu_f, &ScalarResults::silu_d},
    {"silu_grad", &ScalarResults::silu_grad_f, &ScalarResults::silu_grad_d},
    {"fast_exp", &ScalarResults::fast_exp_f, &ScalarResults::fast_exp_d},
    {"fast_sigmoid", &ScalarResults::fast_sigmoid_f, &ScalarResults::fast_sigmoid_d},
    {"fast_silu", &ScalarResults::fast_silu_f, &ScalarResults::fast_silu_d}};

void expect_close(const ScalarResults& g, const ScalarResults& h, const std::string& at) {
  for (const MathResult& m : kMath) {
    EXPECT_TRUE(close(g.*m.f, h.*m.f, kFloatRel))
        << at << " " << m.name << "<float>: gpu " << g.*m.f << " host " << h.*m.f;
    EXPECT_TRUE(close(g.*m.d, h.*m.d, kDoubleRel))
        << at << " " << m.name << "<double>: gpu " << g.*m.d << " host " << h.*m.d;
  }
  expect_row(g.gate_row_f, h.gate_row_f, kFloatRel, at + " gate_backward_row<float>");
  expect_row(g.balance_row_f, h.balance_row_f, kFloatRel, at + " seq_balance_backward_row<float>");
  expect_row(g.gate_row_d, h.gate_row_d, kDoubleRel, at + " gate_backward_row<double>");
  expect_row(g.balance_row_d, h.balance_row_d, kDoubleRel,
             at + " seq_balance_backward_row<double>");
}

TEST(CudaScalar, EveryScalarFunctionComputesTheHostsResults) {
  MOETRON_REQUIRE_GPU();
  const std::vector<float> x = inputs();
  const int64_t n = static_cast<int64_t>(x.size());
  std::vector<uint8_t> code(x.size());
  for (size_t i = 0; i < code.size(); ++i) code[i] = static_cast<uint8_t>(i);
  std::vector<ScalarResults> gpu(x.size()), host(x.size());
  scalar_results_on_gpu(x.data(), code.data(), n, gpu.data());
  for (size_t i = 0; i < x.size(); ++i) scalar_results(x[i], code[i], host[i]);
  for (size_t i = 0; i < x.size(); ++i) {
    const std::string at = "x=" + std::to_string(x[i]) + " (bits " + std::to_string(bits(x[i])) +
                           ") code=" + std::to_string(code[i]);
    expect_same(gpu[i], host[i], at);
    expect_close(gpu[i], host[i], at);
  }
}

}  // namespace
}  // namespace moetron::kernels::gpu::testing
