// FP8 recipe, second half of the tests (the first half, tests/test_kernels_quantize.cpp, covers the
// E4M3/E5M2 code tables built from the format definitions, midpoint rounding, saturation, the
// tile quantiser's error bound and the blockwise GEMM): kernels/fp8.h's quantize / dequantize
// bit for bit against the scalar reference quantiser defined here (ref_quantize, the SPEC §3.2
// rule written plainly), the three GEMMs of a Linear (fp8_fprop,
// fp8_dgrad, fp8_wgrad) on every path (Dequant, Bf16Blocks, Blockwise) against an exact double
// evaluation of the same recipe written from the untransposed operands, the 1x128 -> 128x1
// re-quantisation with power-of-two scales, scale floors, the DeepGEMM criterion on scaled-down
// DeepSeek-V3 shapes in all three layouts, and the App. B.2 caveat at the brief's outlier size
// (rows x1000).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <tuple>
#include <vector>

#include "kernels/cpu/fp8.h"
#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"

using namespace moetron;
using namespace moetron::kernels;
using namespace moetron::kernels::cpu;

namespace {

int64_t cdiv(int64_t a, int64_t b) { return (a + b - 1) / b; }

// The reference quantiser: SPEC §3.2 written plainly, tile by tile. Per tile
// s = max(amax, 1e-4) / 448 (pow2: pow2_ceil of it), q = e4m3(x / s) (x * (1/s) for pow2, exact).
void ref_quantize(const float* x, int64_t R, int64_t C, Tile t, bool pow2, uint8_t* q,
                  float* scales) {
  const int64_t TR = cdiv(R, t.rows), TC = cdiv(C, t.cols);
  for (int64_t br = 0; br < TR; ++br) {
    const int64_t r0 = br * t.rows, r1 = std::min(R, r0 + t.rows);
    for (int64_t bc = 0; bc < TC; ++bc) {
      const int64_t c0 = bc * t.cols, c1 = std::min(C, c0 + t.cols);
      float amax = 0.f;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c) amax = std::max(amax, std::fabs(x[r * C + c]));
      float s = std::max(amax, 1e-4f) / 448.0f;
      if (pow2) s = pow2_ceil(s);
      scales[br * TC + bc] = s;
      const float inv = 1.0f / s;
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t c = c0; c < c1; ++c)
          q[r * C + c] = f32_to_e4m3(pow2 ? x[r * C + c] * inv : x[r * C + c] / s);
    }
  }
}

// x = decoded code * its tile's scale
void ref_dequantize(const uint8_t* q, const float* scales, int64_t R, int64_t C, Tile t, float* x) {
  const int64_t TC = cdiv(C, t.cols);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c)
      x[r * C + c] = e4m3_to_f32(q[r * C + c]) * scales[(r / t.rows) * TC + c / t.cols];
}

struct Quant {
  std::vector<uint8_t> q;
  std::vector<float> s;
};

// x [R,C] quantised with tile t by the reference (ref_quantize) or the vectorised quantiser
Quant quant(const std::vector<float>& x, int64_t R, int64_t C, Tile t, bool pow2, bool vec) {
  Quant r{std::vector<uint8_t>(R * C), std::vector<float>(cdiv(R, t.rows) * cdiv(C, t.cols))};
  (vec ? quantize : ref_quantize)(x.data(), R, C, t, pow2, r.q.data(), r.s.data());
  return r;
}

std::vector<float> dequant(const Quant& a, int64_t R, int64_t C, Tile t) {
  std::vector<float> x(R * C);
  ref_dequantize(a.q.data(), a.s.data(), R, C, t, x.data());
  return x;
}

template <class T>
std::vector<T> transposed(const std::vector<T>& x, int64_t R, int64_t C) {
  std::vector<T> y(x.size());
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) y[c * R + r] = x[r * C + c];
  return y;
}

std::vector<float> randn(size_t n, uint32_t seed, float sd = 1.f) {
  std::mt19937 g(seed);
  std::normal_distribution<float> nd(0.f, sd);
  std::vector<float> v(n);
  for (float& x : v) x = nd(g);
  return v;
}

// bit-identical float arrays (memcmp, which must not see the null data() of an empty vector)
bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * 4) == 0);
}

// Decoded E4M3 codes, in double
std::vector<double> decoded(const Quant& a) {
  std::vector<double> v(a.q.size());
  for (size_t i = 0; i < v.size(); ++i) v[i] = e4m3_to_f32(a.q[i]);
  return v;
}

// The recipe evaluated exactly (in double) for one output: sum over reduction blocks b of
// (sum_{i in b} a_i b_i) * sa_b * sb_b, from callables giving the decoded codes and block scales.
// Also returns sum |products| * scales, the scale of fp32 rounding errors.
template <class Value, class Scale>
std::pair<double, double> recipe(int64_t L, Value value_ab, Scale scale_ab) {
  double acc = 0, abs = 0;
  for (int64_t b0 = 0; b0 < L; b0 += 128) {
    double p = 0, pa = 0;
    for (int64_t i = b0; i < std::min(L, b0 + 128); ++i) {
      const auto [a, b] = value_ab(i);
      p += a * b;
      pa += std::fabs(a * b);
    }
    const auto [sa, sb] = scale_ab(b0 / 128);
    acc += p * sa * sb;
    abs += pa * sa * sb;
  }
  return {acc, abs};
}

// got vs the exact recipe: every entry within 2e-5 of its error scale (fp32 sums of <= 300
// products: the worst-case bound is ~K 2^-24), and the whole array within 1e-6 relative (2-norm).
void expect_recipe(const std::vector<float>& got, const std::vector<double>& ref,
                   const std::vector<double>& abs, const std::string& what) {
  ASSERT_EQ(got.size(), ref.size());
  double num = 0, den = 0;
  size_t bad = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double d = std::fabs(got[i] - ref[i]);
    if (!(d <= 2e-5 * abs[i] + 1e-30)) ++bad;
    num += d * d, den += ref[i] * ref[i];
  }
  EXPECT_EQ(bad, 0u) << what;
  EXPECT_LE(std::sqrt(num / den), 1e-6) << what;
}

// DeepGEMM's criterion: 1 - 2 sum(xy) / sum(x^2 + y^2), in double (0 if both are all-zero)
double calc_diff(const std::vector<float>& x, const std::vector<double>& y) {
  double xy = 0, xx = 0;
  for (size_t i = 0; i < x.size(); ++i) xy += x[i] * y[i], xx += double(x[i]) * x[i] + y[i] * y[i];
  return xx == 0 ? 0 : 1 - 2 * xy / xx;
}

const std::pair<const char*, Fp8Gemm> kPaths[] = {{"Auto", Fp8Gemm::Auto},
                                                  {"Dequant", Fp8Gemm::Dequant},
                                                  {"Bf16Blocks", Fp8Gemm::Bf16Blocks},
                                                  {"Blockwise", Fp8Gemm::Blockwise}};

}  // namespace

// ---- scalar additions -------------------------------------------------------------------------

TEST(Fp8Scalar, E4m3ToBf16IsExactForAllCodes) {
  for (int c = 0; c < 256; ++c) {
    const float f = e4m3_to_f32(static_cast<uint8_t>(c));
    const uint16_t h = e4m3_to_bf16(static_cast<uint8_t>(c));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(bf16_to_f32(h))) << c;
      EXPECT_EQ(h & 0x8000, (c & 0x80) << 8) << c;
      continue;
    }
    EXPECT_EQ(bf16_to_f32(h), f) << "code " << c;  // exact, signed zero included
    EXPECT_EQ(std::signbit(bf16_to_f32(h)), std::signbit(f)) << "code " << c;
  }
}

TEST(Fp8Scalar, CanonicalNaNCodesAndSignedUnderflow) {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  EXPECT_EQ(f32_to_e4m3(nan), 0x7f);
  EXPECT_EQ(f32_to_e4m3(-nan), 0xff);
  EXPECT_EQ(f32_to_e5m2(nan), 0x7f);
  EXPECT_EQ(f32_to_e5m2(-nan), 0xff);
  const float sub = std::ldexp(1.f, -9);  // smallest E4M3 subnormal
  EXPECT_EQ(f32_to_e4m3(-1e-30f), 0x80);  // flushes to -0, keeps the sign
  EXPECT_EQ(f32_to_e4m3(sub / 2), 0x00);  // tie between 0 and 2^-9: even (0)
  EXPECT_EQ(f32_to_e4m3(std::nextafter(sub / 2, 1.f)), 0x01);
  EXPECT_EQ(f32_to_e4m3(1.5f * sub), 0x02);            // tie between codes 1 and 2: even
  EXPECT_EQ(f32_to_e4m3(7.5f * sub), 0x08);            // largest subnormal / smallest normal tie
  EXPECT_EQ(f32_to_e4m3(std::ldexp(1.f, -6)), 0x08);   // 2^-6: smallest normal
  EXPECT_EQ(f32_to_e4m3(std::ldexp(1.f, -20)), 0x00);  // far below: zero
  EXPECT_EQ(f32_to_e4m3(-std::numeric_limits<float>::denorm_min()), 0x80);
  EXPECT_EQ(f32_to_e5m2(std::ldexp(1.f, -17)), 0x00);  // half the smallest E5M2 subnormal: even
  EXPECT_EQ(f32_to_e5m2(std::ldexp(1.5f, -17)), 0x01);
}

// ---- the vectorised quantiser is the reference quantiser, bit for bit ------------------------

TEST(Fp8Vec, QuantizerBitIdenticalOnOddShapesTilesAndSpecials) {
  const float inf = std::numeric_limits<float>::infinity();
  for (Tile t : {kTile1x128, kTile128x128, kTile128x1, Tile{3, 5}, Tile{128, 64}, Tile{1, 1}})
    for (auto [R, C] :
         {std::pair<int64_t, int64_t>{37, 300}, {129, 257}, {1, 1}, {130, 1030}, {0, 7}, {7, 0}})
      for (bool pow2 : {false, true})
        for (int special = 0; special < 2; ++special) {
          std::vector<float> x = randn(R * C, 17 + static_cast<uint32_t>(R + C));
          std::mt19937 g(5);
          for (size_t i = 0; i < x.size(); ++i) x[i] *= std::exp(3.f * std::sin(float(i)));
          if (special && !x.empty()) {  // NaN, +-inf, signed zeros, denormals, huge values
            const float sp[] = {std::nanf(""), inf, -inf, 0.f, -0.f, 1e-40f, -3e38f, 3e38f};
            for (int k = 0; k < 40; ++k) x[g() % x.size()] = sp[g() % 8];
          }
          const Quant a = quant(x, R, C, t, pow2, false), b = quant(x, R, C, t, pow2, true);
          const std::string what = "tile " + std::to_string(t.rows) + "x" + std::to_string(t.cols) +
                                   " shape " + std::to_string(R) + "x" + std::to_string(C) +
                                   (pow2 ? " pow2" : "") + (special ? " specials" : "");
          ASSERT_EQ(a.q, b.q) << what;
          ASSERT_EQ(a.s.size(), b.s.size());
          EXPECT_TRUE(same_bits(a.s, b.s)) << what;
          std::vector<float> da(R * C), db(R * C);  // and dequantize is ref_dequantize
          ref_dequantize(a.q.data(), a.s.data(), R, C, t, da.data());
          dequantize(a.q.data(), a.s.data(), R, C, t, db.data());
          EXPECT_TRUE(same_bits(da, db)) << "dequantize " << what;
        }
}

// Gathered rows quantised directly (the routed experts' inputs from the received rows) are the
// codes and scales of gather_rows then quantize 1x128, bit for bit: rows taken out of order, some
// twice, some never, zero rows for -1 (the experts' pad rows), specials included, odd widths.
TEST(Fp8Vec, QuantizeGatheredIsGatherThenQuantize) {
  const float inf = std::numeric_limits<float>::infinity();
  for (auto [R, C, A] : {std::tuple<int64_t, int64_t, int64_t>{37, 300, 50},
                         {129, 257, 129},
                         {5, 1030, 12},
                         {1, 1, 3},
                         {4, 7, 0}})
    for (bool pow2 : {false, true}) {
      std::vector<float> x = randn(R * C, 3 + static_cast<uint32_t>(R * C));
      for (size_t i = 0; i < x.size(); ++i) x[i] *= std::exp(3.f * std::sin(float(i)));
      std::mt19937 g(11);
      const float sp[] = {std::nanf(""), inf, -inf, -0.f, 1e-40f, 3e38f};
      for (int k = 0; k < 10 && !x.empty(); ++k) x[g() % x.size()] = sp[g() % 6];
      std::vector<int64_t> idx(static_cast<size_t>(A));
      for (auto& i : idx) i = g() % 5 == 0 ? -1 : static_cast<int64_t>(g() % R);
      std::vector<float> rows(static_cast<size_t>(A * C));
      gather_rows<float>(x.data(), idx.data(), A, C, rows.data());
      const Quant want = quant(rows, A, C, kTile1x128, pow2, true);
      Quant got;
      got.q.assign(static_cast<size_t>(A * C), 0xAB);
      got.s.assign(static_cast<size_t>(A * ((C + 127) / 128)), -1.f);
      quantize_gathered(x.data(), idx.data(), A, C, pow2, got.q.data(), got.s.data());
      const std::string what = std::to_string(A) + " of " + std::to_string(R) + "x" +
                               std::to_string(C) + (pow2 ? " pow2" : "");
      EXPECT_EQ(got.q, want.q) << what;
      EXPECT_TRUE(same_bits(got.s, want.s)) << what;
    }
}

TEST(Fp8Vec, EncoderMatchesScalarOnAFloatSweep) {
  // A tile whose amax is exactly 448 has scale 448/448 = 1, so its codes are e4m3(x) of the raw
  // values: this runs the vector encoder over every 97th float bit pattern up to 448 (both
  // signs; ~22 M values), plus every midpoint between adjacent codes and its neighbours.
  std::vector<float> x;
  for (uint32_t u = 0; u + 48 <= 0x43e00000u; u += 97) {
    x.push_back(bits_f32(u));
    x.push_back(-bits_f32(u + 48));
  }
  for (int c = 0; c < 0x7e; ++c) {
    const float mid = (e4m3_to_f32(uint8_t(c)) + e4m3_to_f32(uint8_t(c + 1))) / 2;
    for (float v : {mid, std::nextafter(mid, 0.f), std::nextafter(mid, 1e9f)})
      x.push_back(v), x.push_back(-v);
  }
  const int64_t C = 1 << 14, R = cdiv(static_cast<int64_t>(x.size()), C - 1);
  std::vector<float> m(R * C, 0.f);
  for (int64_t r = 0; r < R; ++r) {
    m[r * C] = 448.f;  // amax of the row -> scale 1
    for (int64_t c = 1; c < C && r * (C - 1) + c - 1 < int64_t(x.size()); ++c)
      m[r * C + c] = x[r * (C - 1) + c - 1];
  }
  const Tile row{1, C};
  const Quant v = quant(m, R, C, row, false, true);
  for (int64_t r = 0; r < R; ++r) ASSERT_EQ(v.s[r], 1.f);
  size_t bad = 0;
  for (size_t i = 0; i < m.size(); ++i) bad += v.q[i] != f32_to_e4m3(m[i]);
  EXPECT_EQ(bad, 0u);
  EXPECT_EQ(v.q, quant(m, R, C, row, true, true).q);  // pow2 scale 1: multiply path, same codes
}

// ---- scales -----------------------------------------------------------------------------------

TEST(Fp8Scales, AmaxOver448WithFloorAndPow2Bounds) {
  const int64_t R = 5, C = 300;  // 1x128 tiles: 3 per row, the last one 44 wide
  std::vector<float> x = randn(R * C, 3);
  for (int64_t c = 0; c < C; ++c) x[0 * C + c] = 0.f;     // row 0: all zero
  for (int64_t c = 0; c < C; ++c) x[1 * C + c] *= 1e-6f;  // row 1: amax below the floor
  for (int64_t c = 0; c < C; ++c) x[2 * C + c] *= c >= 256 ? 1e3f : 1.f;  // big edge tile
  for (bool vec : {false, true}) {
    const Quant a = quant(x, R, C, kTile1x128, false, vec),
                p = quant(x, R, C, kTile1x128, true, vec);
    for (int64_t r = 0; r < R; ++r)
      for (int64_t tb = 0; tb < 3; ++tb) {
        float amax = 0;
        for (int64_t c = tb * 128; c < std::min(C, tb * 128 + 128); ++c)
          amax = std::max(amax, std::fabs(x[r * C + c]));
        const float want = std::max(amax, 1e-4f) / 448.f, s = a.s[r * 3 + tb], sp = p.s[r * 3 + tb];
        EXPECT_EQ(s, want) << r << "," << tb;
        int e;
        EXPECT_EQ(std::frexp(sp, &e), 0.5f) << "power of two " << sp;
        EXPECT_GE(sp, want);
        EXPECT_LT(sp, 2 * want);
        if (amax < 1e-4f) {
          EXPECT_EQ(s, 1e-4f / 448.f);
        }
      }
    for (int64_t c = 0; c < C; ++c) EXPECT_EQ(a.q[c], 0) << "zero row stays +0";
  }
}

// ---- 1x128 -> 128x1 re-quantisation ------------------------------------------------------------

TEST(Fp8Requant, Pow2RequantisationIsExactInTheNormalRange) {
  // Rows of very different magnitudes (what the token axis of activations looks like), so the
  // 128x1 column scales differ from the 1x128 row scales by many binades in both directions.
  const int64_t R = 300, C = 260;
  std::vector<float> x = randn(R * C, 23);
  for (int64_t r = 0; r < R; ++r)
    for (int64_t c = 0; c < C; ++c) x[r * C + c] *= std::exp2(float((r * 7) % 19) - 9.f);
  for (bool pow2 : {true, false}) {
    const Quant a = quant(x, R, C, kTile1x128, pow2, false);
    const std::vector<float> xh = dequant(a, R, C, kTile1x128);  // the cached activation's values
    const int64_t RB = cdiv(R, 128);
    std::vector<uint8_t> qT(C * R);
    std::vector<float> sT(C * RB);
    requantize_1x128_to_128x1(a.q.data(), a.s.data(), R, C, pow2, qT.data(), sT.data());
    // the definition: dequantise, quantise with 128x1 tiles, transpose
    const Quant d = quant(xh, R, C, kTile128x1, pow2, false);
    ASSERT_EQ(transposed(d.q, R, C), qT);
    ASSERT_EQ(transposed(d.s, RB, C), sT);
    int64_t normal = 0, changed_normal = 0, sub = 0;
    for (int64_t r = 0; r < R; ++r)
      for (int64_t c = 0; c < C; ++c) {
        const float s_new = sT[c * RB + r / 128], y = e4m3_to_f32(qT[c * R + r]) * s_new;
        const float v = xh[r * C + c];
        if (std::fabs(v / s_new) >= std::ldexp(1.f, -6)) {
          ++normal;
          changed_normal += y != v;
        } else {
          ++sub;
          EXPECT_LE(std::fabs(y - v), std::ldexp(s_new, -10)) << r << "," << c;
        }
      }
    EXPECT_GT(normal, R * C / 2);
    EXPECT_GT(sub, 0) << "the test should reach the subnormal range too";
    if (pow2)
      EXPECT_EQ(changed_normal, 0) << "pow2: re-quantisation must not round normal values";
    else
      EXPECT_GT(changed_normal, normal / 4) << "amax/448 scales round a second time";
  }
}

// ---- the three GEMMs of a Linear against the exact recipe, from untransposed operands ----------

TEST(Fp8Layouts, FpropDgradWgradMatchTheExactRecipe) {
  for (auto [M, K, N] : {std::tuple<int64_t, int64_t, int64_t>{37, 300, 130},
                         {129, 131, 257},
                         {128, 128, 64},
                         {1, 5, 3}})
    for (bool pow2 : {false, true}) {
      const std::vector<float> X = randn(M * K, 1), W = randn(N * K, 2, 0.05f),
                               dY = randn(M * N, 3, 1e-3f), dW0 = randn(N * K, 4);
      const int64_t KB = cdiv(K, 128), NB = cdiv(N, 128), MB = cdiv(M, 128);
      const Quant qX = quant(X, M, K, kTile1x128, pow2, true);
      // pow2: every scale a power of two, so Dequant runs its GEMM on bf16 inputs (exactly)
      const Quant qW = quant(W, N, K, kTile128x128, pow2, true);
      const Quant qdY = quant(dY, M, N, kTile1x128, pow2, true);
      // Wgrad's operands in their original layout, by the reference quantiser
      const Quant rX = quant(dequant(qX, M, K, kTile1x128), M, K, kTile128x1, pow2, false);
      const Quant rdY = quant(dY, M, N, kTile128x1, pow2, false);
      const std::vector<double> vX = decoded(qX), vW = decoded(qW), vdY = decoded(qdY),
                                vrX = decoded(rX), vrdY = decoded(rdY);
      std::vector<double> yref(M * N), yabs(M * N), dxref(M * K), dxabs(M * K), dwref(N * K),
          dwabs(N * K);
      for (int64_t m = 0; m < M; ++m)
        for (int64_t n = 0; n < N; ++n)
          std::tie(yref[m * N + n], yabs[m * N + n]) = recipe(
              K, [&](int64_t k) { return std::pair(vX[m * K + k], vW[n * K + k]); },
              [&](int64_t kb) { return std::pair(qX.s[m * KB + kb], qW.s[(n / 128) * KB + kb]); });
      for (int64_t m = 0; m < M; ++m)
        for (int64_t k = 0; k < K; ++k)
          std::tie(dxref[m * K + k], dxabs[m * K + k]) = recipe(
              N, [&](int64_t n) { return std::pair(vdY[m * N + n], vW[n * K + k]); },
              [&](int64_t nb) { return std::pair(qdY.s[m * NB + nb], qW.s[nb * KB + k / 128]); });
      for (int64_t n = 0; n < N; ++n)
        for (int64_t k = 0; k < K; ++k) {
          const auto [v, a] = recipe(
              M, [&](int64_t m) { return std::pair(vrdY[m * N + n], vrX[m * K + k]); },
              [&](int64_t mb) { return std::pair(rdY.s[mb * N + n], rX.s[mb * K + k]); });
          dwref[n * K + k] = dW0[n * K + k] + v;
          dwabs[n * K + k] = std::fabs(dW0[n * K + k]) + a;
        }
      // Wgrad's token-major operands
      std::vector<uint8_t> qXt(K * M), qdYt(N * M);
      std::vector<float> sXt(K * MB), sdYt(N * MB);
      requantize_1x128_to_128x1(qX.q.data(), qX.s.data(), M, K, pow2, qXt.data(), sXt.data());
      quantize_128x1_t(dY.data(), M, N, pow2, qdYt.data(), sdYt.data());
      for (auto [name, path] : kPaths) {
        const std::string what = std::string(name) + " M=" + std::to_string(M) +
                                 " K=" + std::to_string(K) + " N=" + std::to_string(N) +
                                 (pow2 ? " pow2" : "");
        std::vector<float> Y(M * N, NAN), dX(M * K, NAN), dW(dW0);  // NaN: must be overwritten
        fp8_fprop(qX.q.data(), qX.s.data(), qW.q.data(), qW.s.data(), M, N, K, Y.data(), path);
        fp8_dgrad(qdY.q.data(), qdY.s.data(), qW.q.data(), qW.s.data(), M, N, K, dX.data(), path);
        fp8_wgrad(qdYt.data(), sdYt.data(), qXt.data(), sXt.data(), M, N, K, dW.data(), path);
        expect_recipe(Y, yref, yabs, "Fprop " + what);
        expect_recipe(dX, dxref, dxabs, "Dgrad " + what);
        expect_recipe(dW, dwref, dwabs, "Wgrad " + what);
      }
    }
}

TEST(Fp8Layouts, TransposeHelpersAreExactTransposes) {
  const int64_t R = 300, C = 130;
  const std::vector<float> x = randn(R * C, 8);
  const Quant w = quant(x, R, C, kTile128x128, false, false);
  std::vector<uint8_t> qT(C * R);
  std::vector<float> sT(cdiv(C, 128) * cdiv(R, 128)), yT(C * R);
  transpose_e4m3_blocks(w.q.data(), w.s.data(), R, C, qT.data(), sT.data());
  ref_dequantize(qT.data(), sT.data(), C, R, kTile128x128, yT.data());
  EXPECT_EQ(yT, transposed(dequant(w, R, C, kTile128x128), R, C));
  for (bool pow2 : {false, true}) {
    const Quant t = quant(x, R, C, kTile128x1, pow2, false);
    std::vector<uint8_t> q2(C * R);
    std::vector<float> s2(C * cdiv(R, 128));
    quantize_128x1_t(x.data(), R, C, pow2, q2.data(), s2.data());
    EXPECT_EQ(q2, transposed(t.q, R, C));
    EXPECT_EQ(s2, transposed(t.s, cdiv(R, 128), C));
    // and it is the 1x128 quantisation of x^T
    const Quant u = quant(transposed(x, R, C), C, R, kTile1x128, pow2, false);
    EXPECT_EQ(q2, u.q);
    EXPECT_EQ(s2, u.s);
  }
}

// Wgrad's dY of G row groups (the routed experts, or one group for a Linear): each group's rows
// quantised 128x1 on their own (tiles start at the group's first row), codes [C, rows_g] and scales
// [C, ceil(rows_g/128)] one group after the other, as quantize_128x1_t gives them per group.
TEST(Fp8Layouts, GroupedWgradTilesAreEachGroupsOwn) {
  const std::vector<int64_t> off = {0, 130, 130, 300, 316};  // 130, 0, 170, 16 rows
  const int64_t G = 4, R = off[G], C = 200;
  EXPECT_EQ(row_tile_offsets(off.data(), G), (std::vector<int64_t>{0, 2, 2, 4, 5}));
  const std::vector<float> x = randn(R * C, 12);
  for (bool pow2 : {false, true}) {
    std::vector<uint8_t> q(R * C);
    std::vector<float> s(C * 5);
    grouped_quantize_128x1_t(off.data(), G, x.data(), C, pow2, q.data(), s.data());
    const std::vector<int64_t> t = row_tile_offsets(off.data(), G);
    for (int64_t g = 0; g < G; ++g) {
      const int64_t r0 = off[g], rows = off[g + 1] - r0;
      std::vector<uint8_t> qg(rows * C);
      std::vector<float> sg(C * cdiv(rows, 128));
      quantize_128x1_t(x.data() + r0 * C, rows, C, pow2, qg.data(), sg.data());
      EXPECT_EQ(std::vector<uint8_t>(q.begin() + r0 * C, q.begin() + (r0 + rows) * C), qg) << g;
      EXPECT_EQ(std::vector<float>(s.begin() + t[g] * C, s.begin() + t[g + 1] * C), sg) << g;
    }
    // one group is quantize_128x1_t of the whole
    std::vector<uint8_t> q1(R * C), q2(R * C);
    std::vector<float> s1(C * cdiv(R, 128)), s2(C * cdiv(R, 128));
    const int64_t all[2] = {0, R};
    grouped_quantize_128x1_t(all, 1, x.data(), C, pow2, q1.data(), s1.data());
    quantize_128x1_t(x.data(), R, C, pow2, q2.data(), s2.data());
    EXPECT_EQ(q1, q2);
    EXPECT_EQ(s1, s2);
  }
}

TEST(Fp8Vec, GemmEdgeCasesAndKBlockGroups) {
  // K = 0 (empty sum), accumulate on/off, and a product large enough (M N KB > 2^24) that the
  // block partials are computed in several groups of K blocks.
  std::vector<uint8_t> none;
  std::vector<float> s1(2, 1.f);
  for (auto [name, path] : kPaths) {
    std::vector<float> D(6, 5.f);
    fp8_gemm_nt_path(path, none.data(), s1.data(), none.data(), s1.data(), kTile128x128, 2, 3, 0,
                     D.data(), true);
    EXPECT_EQ(D, std::vector<float>(6, 5.f)) << name;
    fp8_gemm_nt_path(path, none.data(), s1.data(), none.data(), s1.data(), kTile128x128, 2, 3, 0,
                     D.data(), false);
    EXPECT_EQ(D, std::vector<float>(6, 0.f)) << name;
  }

  const int64_t M = 512, N = 8192, K = 640;  // KB = 5, M N = 2^22: groups of 4 + 1 blocks
  const std::vector<float> a = randn(M * K, 31), b = randn(N * K, 32);
  const Quant qa = quant(a, M, K, kTile1x128, false, true),
              qb = quant(b, N, K, kTile1x128, true, true);
  std::vector<float> fast(M * N, 1.f);
  fp8_gemm_nt_bf16(qa.q.data(), qa.s.data(), qb.q.data(), qb.s.data(), kTile1x128, M, N, K,
                   fast.data(), true);
  // against the fast path (dequantised operands, one fp32 GEMM): the same recipe, so the two
  // differ only by fp32 summation order (|D| ~ 25 for K = 640 unit normals: a few ulps)
  std::vector<float> ref(M * N, 1.f);
  fp8_gemm_nt_path(Fp8Gemm::Dequant, qa.q.data(), qa.s.data(), qb.q.data(), qb.s.data(), kTile1x128,
                   M, N, K, ref.data(), true);
  double num = 0, den = 0, worst = 0;
  for (int64_t i = 0; i < M * N; ++i) {
    num += std::pow(fast[i] - ref[i], 2), den += double(ref[i]) * ref[i];
    worst = std::max(worst, double(std::fabs(fast[i] - ref[i])));
  }
  EXPECT_LE(std::sqrt(num / den), 1e-6);
  EXPECT_LE(worst, 1e-4);  // |ref| ~ 25 (K = 640 unit normals): a few fp32 ulps
}

// ---- DeepGEMM's criterion on DeepSeek-V3 projection shapes / 8, all three layouts ---------------

TEST(Fp8Gemm, DeepGemmCriterionAllLayoutsV3ShapesOverEight) {
  // SPEC §7: M = 128 tokens, (N, K) in {(2112,7168), (24576,1536), (32768,512), (7168,16384),
  // (4096,7168), (7168,2048)} / 8 (so N or K is not always a multiple of 128). calc_diff < 1e-3
  // against a BF16-input reference (inputs rounded to bf16, double accumulation: gemm<double> with
  // GemmPrecision::BF16), for the fast path and the bf16 block-partial path.
  const int64_t M = 128;
  for (auto [N, K] : {std::pair<int64_t, int64_t>{264, 896},
                      {3072, 192},
                      {4096, 64},
                      {896, 2048},
                      {512, 896},
                      {896, 256}}) {
    const std::vector<float> X = randn(M * K, 41), W = randn(N * K, 42), dY = randn(M * N, 43);
    const std::vector<double> Xd(X.begin(), X.end()), Wd(W.begin(), W.end()),
        dYd(dY.begin(), dY.end());
    const int64_t MB = cdiv(M, 128);
    const Quant qX = quant(X, M, K, kTile1x128, false, true);
    const Quant qW = quant(W, N, K, kTile128x128, false, true);
    const Quant qdY = quant(dY, M, N, kTile1x128, false, true);
    std::vector<uint8_t> qXt(K * M), qdYt(N * M);  // Wgrad: the cached 1x128 X, re-quantised
    std::vector<float> sXt(K * MB), sdYt(N * MB);
    requantize_1x128_to_128x1(qX.q.data(), qX.s.data(), M, K, false, qXt.data(), sXt.data());
    quantize_128x1_t(dY.data(), M, N, false, qdYt.data(), sdYt.data());
    std::vector<double> yref(M * N), dxref(M * K), dwref(N * K);
    gemm<double>(false, true, M, N, K, 1.0, Xd.data(), Wd.data(), 0.0, yref.data(),
                 GemmPrecision::BF16);
    gemm<double>(false, false, M, K, N, 1.0, dYd.data(), Wd.data(), 0.0, dxref.data(),
                 GemmPrecision::BF16);
    gemm<double>(true, false, N, K, M, 1.0, dYd.data(), Xd.data(), 0.0, dwref.data(),
                 GemmPrecision::BF16);
    for (Fp8Gemm path : {Fp8Gemm::Dequant, Fp8Gemm::Bf16Blocks}) {
      const std::string what = std::string(path == Fp8Gemm::Dequant ? "Dequant" : "Bf16Blocks") +
                               " N=" + std::to_string(N) + " K=" + std::to_string(K);
      std::vector<float> Y(M * N), dX(M * K), dW(N * K, 0.f);
      fp8_fprop(qX.q.data(), qX.s.data(), qW.q.data(), qW.s.data(), M, N, K, Y.data(), path);
      fp8_dgrad(qdY.q.data(), qdY.s.data(), qW.q.data(), qW.s.data(), M, N, K, dX.data(), path);
      fp8_wgrad(qdYt.data(), sdYt.data(), qXt.data(), sXt.data(), M, N, K, dW.data(), path);
      EXPECT_LT(calc_diff(Y, yref), 1e-3) << "Fprop " << what;
      EXPECT_LT(calc_diff(dX, dxref), 1e-3) << "Dgrad " << what;
      EXPECT_LT(calc_diff(dW, dwref), 1e-3) << "Wgrad " << what;
    }
  }
}

// ---- SPEC App. B.2 at the brief's outlier size
// ---------------------------------------------------

TEST(Fp8Quantize, GradientTokenOutliersX1000Need1x128Tiles) {
  // An activation-gradient-like tensor whose token rows 5, 69, 133, 197 are 1000x the others.
  // A 128x128 tile takes its scale from the outlier row, pushing ~a tenth of the ordinary
  // tokens' values below E4M3's normal range (2^-6 of scale * 448): they lose precision or flush
  // to zero. With 1x128 tiles every token has its own scale and (almost) nothing leaves the
  // normal range. Measured: the share of ordinary values off by more than E4M3's half-ulp
  // bound (2^-4 relative).
  const int64_t R = 256, C = 512;
  std::vector<float> x = randn(R * C, 11, 1e-3f);
  for (int64_t r = 0; r < R; ++r)
    if (r % 64 == 5)
      for (int64_t c = 0; c < C; ++c) x[r * C + c] *= 1000.f;
  auto beyond_half_ulp = [&](Tile t) {
    const std::vector<float> y = dequant(quant(x, R, C, t, false, true), R, C, t);
    int64_t bad = 0, n = 0;
    for (int64_t r = 0; r < R; ++r)
      if (r % 64 != 5)
        for (int64_t c = 0; c < C; ++c, ++n)
          bad += std::fabs(y[r * C + c] - x[r * C + c]) > 0.0625f * std::fabs(x[r * C + c]);
    return double(bad) / double(n);
  };
  const double row = beyond_half_ulp(kTile1x128), block = beyond_half_ulp(kTile128x128);
  EXPECT_LT(row, 1e-3);
  EXPECT_GT(block, 0.03);
  EXPECT_GT(block, 30 * row + 0.03) << "1x128 " << row << " vs 128x128 " << block;
}

// ---- Auto's test for "every scale is a power of two"
// ---------------------------------------------

TEST(Fp8Gemm, Pow2ScaleDetection) {
  const float yes[] = {1.f, 0.5f, std::ldexp(1.f, -22), std::ldexp(1.f, 60)};
  EXPECT_TRUE(pow2_scales(yes, 4));
  EXPECT_TRUE(pow2_scales(yes, 0));
  for (float bad : {3.f / 448.f, 0.f, -1.f, std::ldexp(1.f, -120), std::ldexp(1.f, 120),
                    std::numeric_limits<float>::infinity(), std::nanf("")}) {
    const float s[] = {1.f, bad, 2.f};
    EXPECT_FALSE(pow2_scales(s, 3)) << bad;
  }
  // what the quantiser produces: pow2 scales pass, amax/448 scales (almost surely) do not
  const std::vector<float> x = randn(37 * 300, 9);
  EXPECT_TRUE(pow2_scales(quant(x, 37, 300, kTile1x128, true, true).s.data(), 37 * 3));
  EXPECT_FALSE(pow2_scales(quant(x, 37, 300, kTile1x128, false, true).s.data(), 37 * 3));
}
