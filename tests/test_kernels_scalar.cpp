// Tests of the shared scalar math in kernels/scalar.h: bf16 conversion (round to nearest even on
// crafted bit patterns, NaN/Inf, overflow, subnormals, exhaustive round trip, and an independent
// reference on random patterns) and the vectorisable fast_exp / fast_sigmoid; and that every
// scalar.h function is in kernels/scalar_check.h, which the CUDA build compiles for the device and
// tests/test_cuda_scalar.cpp runs there against the host.
#include <algorithm>
#include <cctype>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <string>

#include "kernels/scalar.h"
#include "kernels/scalar_check.h"
#include "tests/test_kernels_util.h"

namespace moetron::kernels::cpu::testing {
namespace {

uint16_t bf(uint32_t bits) { return f32_to_bf16(bits_f32(bits)); }

TEST(Bf16, RoundsToNearestEvenOnCraftedPatterns) {
  EXPECT_EQ(bf(0x3F800000u), 0x3F80);  // 1.0 exact
  EXPECT_EQ(bf(0x3F807FFFu), 0x3F80);  // just below the midpoint: down
  EXPECT_EQ(bf(0x3F808000u), 0x3F80);  // midpoint, even below: stays
  EXPECT_EQ(bf(0x3F808001u), 0x3F81);  // just above the midpoint: up
  EXPECT_EQ(bf(0x3F818000u), 0x3F82);  // midpoint, odd below: up to even
  EXPECT_EQ(bf(0xBF818000u), 0xBF82);  // same for negatives
  EXPECT_EQ(bf(0xBF808000u), 0xBF80);
  EXPECT_EQ(bf(0x3FFF8000u), 0x4000);  // carry into the exponent
  EXPECT_EQ(bf(0x7F7FFFFFu), 0x7F80);  // FLT_MAX rounds to +inf
  EXPECT_EQ(bf(0x7F800000u), 0x7F80);  // +inf
  EXPECT_EQ(bf(0xFF800000u), 0xFF80);  // -inf
  EXPECT_EQ(bf(0x00000000u), 0x0000);
  EXPECT_EQ(bf(0x80000000u), 0x8000);  // -0 keeps its sign
  EXPECT_EQ(bf(0x00008000u), 0x0000);  // subnormal midpoint: to even (0)
  EXPECT_EQ(bf(0x00018000u), 0x0002);  // subnormal midpoint: to even (2)
  EXPECT_EQ(bf(0x00000001u), 0x0000);
  // NaNs stay NaN (quiet), including a payload that rounding would carry into infinity.
  for (uint32_t nan : {0x7FC00000u, 0x7F800001u, 0x7FFFFFFFu, 0xFF80FFFFu}) {
    const uint16_t h = bf(nan);
    EXPECT_TRUE(std::isnan(bf16_to_f32(h))) << std::hex << nan;
    EXPECT_EQ(h & 0x8000, (nan >> 16) & 0x8000);
  }
}

TEST(Bf16, ExhaustiveRoundTrip) {
  for (uint32_t h = 0; h < 0x10000u; ++h) {
    const float x = bf16_to_f32(static_cast<uint16_t>(h));
    if (std::isnan(x)) continue;
    ASSERT_EQ(f32_to_bf16(x), h) << std::hex << h;
    ASSERT_EQ(round_bf16(x), x);
  }
}

// Independent reference: pick the nearer of the two bf16 neighbours in double, ties to even.
TEST(Bf16, MatchesNearestNeighbourOnRandomPatterns) {
  std::mt19937 rng(3);
  for (int it = 0; it < 200000; ++it) {
    const uint32_t u = rng();
    const float x = bits_f32(u);
    if (!std::isfinite(x)) continue;
    const uint32_t lo = u & 0xFFFF0000u;  // truncation: the neighbour towards zero
    const double a = bits_f32(lo);
    double b = bits_f32(lo + 0x10000u);                             // the neighbour away from zero
    if (std::isinf(b)) b = std::copysign(std::ldexp(1.0, 128), a);  // where 2^128 would be
    const double da = std::fabs(x - a), db = std::fabs(b - x);
    const bool down = da < db || (da == db && ((lo >> 16) & 1u) == 0);
    const uint16_t want = static_cast<uint16_t>((down ? lo : lo + 0x10000u) >> 16);
    ASSERT_EQ(f32_to_bf16(x), want) << std::hex << u;
  }
}

// ---- E5M6 ------------------------------------------------------------------------------------

// Every one of the 4096 codes: decodes to the value its fields say (computed in double), and every
// value that is not NaN encodes back to its code (-0 included); NaN codes decode to NaN.
TEST(E5m6, ExhaustiveCodesRoundTrip) {
  for (uint32_t c = 0; c < 0x1000u; ++c) {
    const float x = e5m6_to_f32(static_cast<uint16_t>(c));
    const int e = static_cast<int>((c >> 6) & 31u), m = static_cast<int>(c & 63u);
    const double sign = (c & 0x800u) ? -1.0 : 1.0;
    if (e == 31) {
      EXPECT_TRUE(m ? std::isnan(x) : std::isinf(x)) << std::hex << c;
      continue;
    }
    const double want = sign * (e == 0 ? std::ldexp(m, -20) : std::ldexp(64 + m, e - 21));
    ASSERT_EQ(static_cast<double>(x), want) << std::hex << c;
    ASSERT_EQ(f32_to_e5m6(x), c) << std::hex << c;
  }
  EXPECT_EQ(e5m6_to_f32(0x7bf), 65024.0f);  // the largest finite value
}

// Independent reference on random fp32 patterns and the crafted edges: the nearer of the two
// representable neighbours in double (ties to the even code), saturating at +-65024, NaN kept.
TEST(E5m6, MatchesNearestNeighbourAndSaturates) {
  std::vector<double> grid;  // every finite non-negative E5M6 value, ascending
  for (uint32_t c = 0; c < 0x7c0u; ++c) grid.push_back(e5m6_to_f32(static_cast<uint16_t>(c)));
  const auto reference = [&](float x) -> uint16_t {
    const uint16_t sign = std::signbit(x) ? 0x800 : 0;
    const double a = std::fabs(static_cast<double>(x));
    if (a >= grid.back()) return sign | 0x7bf;
    const size_t hi =
        static_cast<size_t>(std::upper_bound(grid.begin(), grid.end(), a) - grid.begin());
    const size_t lo = hi - 1;  // grid[lo] <= a < grid[hi]
    const double dl = a - grid[lo], dh = grid[hi] - a;
    const size_t pick = dl < dh || (dl == dh && lo % 2 == 0) ? lo : hi;
    return sign | static_cast<uint16_t>(pick);
  };
  std::mt19937 rng(9);
  std::vector<float> xs = {0.f,
                           -0.f,
                           1.f,
                           65024.f,
                           65023.f,
                           65151.f,
                           65152.f,
                           65536.f,
                           1e30f,
                           -1e30f,
                           std::numeric_limits<float>::infinity(),
                           -std::numeric_limits<float>::infinity(),
                           6.103515625e-05f,
                           6.0e-05f,
                           9.5367431640625e-07f,
                           4.76837158203125e-07f,
                           1.430511474609375e-06f,
                           1e-40f,
                           1.0078125f,
                           1.0234375f};
  for (int i = 0; i < 300000; ++i) {  // exponents spread over the format's range and beyond
    const uint32_t u = (rng() & 0x807fffffu) | ((95u + rng() % 60u) << 23);
    xs.push_back(bits_f32(u));
  }
  for (float x : xs) ASSERT_EQ(f32_to_e5m6(x), reference(x)) << x;
  for (uint32_t nan : {0x7FC00000u, 0x7F800001u, 0xFFFFFFFFu}) {
    const uint16_t c = f32_to_e5m6(bits_f32(nan));
    EXPECT_TRUE(std::isnan(e5m6_to_f32(c))) << std::hex << nan;
    EXPECT_EQ(c & 0x800, (nan >> 20) & 0x800);
  }
}

// Two codes in three bytes: every code in either place comes back.
TEST(E5m6, PackedPairsRoundTrip) {
  for (uint32_t a = 0; a < 0x1000u; a += 7)
    for (uint32_t b = 0; b < 0x1000u; b += 5) {
      uint8_t p[3];
      e5m6_pack2(static_cast<uint16_t>(a), static_cast<uint16_t>(b), p);
      ASSERT_EQ(e5m6_unpack(p, 0), a);
      ASSERT_EQ(e5m6_unpack(p, 1), b);
    }
}

TEST(FastExp, AccurateOverTheUsefulRange) {
  double worst = 0;
  for (float x = -87.0f; x <= 88.0f; x += 0.00731f) {
    const double e = std::exp(static_cast<double>(x));
    worst = std::max(worst, std::fabs(fast_exp(x) - e) / e);
  }
  EXPECT_LT(worst, 3e-7);
  EXPECT_EQ(fast_exp(0.0f), 1.0f);
  EXPECT_EQ(fast_exp(-std::numeric_limits<float>::infinity()), 0.0f);
  EXPECT_EQ(fast_exp(-100.0f), 0.0f);
  EXPECT_TRUE(std::isnan(fast_exp(std::numeric_limits<float>::quiet_NaN())));
  EXPECT_TRUE(std::isfinite(fast_exp(1000.0f)));  // saturates at e^88
  EXPECT_GT(fast_exp(1000.0f), 1e38f);
  EXPECT_EQ(fast_exp(0.5), std::exp(0.5));  // double is std::exp
}

TEST(FastExp, SigmoidAndSilu) {
  for (float x = -30.f; x <= 30.f; x += 0.37f) {
    const double s = 1.0 / (1.0 + std::exp(-static_cast<double>(x)));
    EXPECT_NEAR(fast_sigmoid(x), s, 3e-7 * s + 1e-30) << x;
    EXPECT_NEAR(fast_silu(x), x * s, 3e-7 * std::fabs(x * s) + 1e-30) << x;
  }
  EXPECT_EQ(fast_sigmoid(-1000.f), fast_sigmoid(-1000.f));  // no NaN
  EXPECT_LT(fast_sigmoid(-1000.f), 1e-37f);
  EXPECT_EQ(fast_sigmoid(1000.f), 1.f);
}

std::string read_source(const std::string& rel) {
  std::ifstream f(std::string(MOETRON_SOURCE_DIR) + "/" + rel);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The functions scalar.h defines: the name before the '(' of each "MOE_HD ..." line.
std::set<std::string> scalar_functions() {
  std::istringstream in(read_source("kernels/scalar.h"));
  std::set<std::string> names;
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("MOE_HD ", 0) != 0) continue;
    const size_t paren = line.find('(');
    size_t b = paren;
    while (b > 0 && (std::isalnum(static_cast<unsigned char>(line[b - 1])) || line[b - 1] == '_'))
      --b;
    names.insert(line.substr(b, paren - b));
  }
  return names;
}

// `name` called in `src`: after a character that cannot end an identifier or a member access,
// and before '(' or '<'
bool called(const std::string& src, const std::string& name) {
  for (size_t p = src.find(name); p != std::string::npos; p = src.find(name, p + 1)) {
    const char before = p > 0 ? src[p - 1] : ' ', after = src[p + name.size()];
    if (std::isalnum(static_cast<unsigned char>(before)) || before == '_' || before == '.')
      continue;
    if (after == '(' || after == '<') return true;
  }
  return false;
}

TEST(ScalarDeviceCheck, EveryScalarFunctionIsInTheDeviceCheck) {
  const std::set<std::string> names = scalar_functions();
  EXPECT_GE(names.size(), 20u) << "the MOE_HD lines of kernels/scalar.h were not found";
  const std::string check = read_source("kernels/scalar_check.h");
  for (const std::string& n : names)
    EXPECT_TRUE(called(check, n)) << n << " (kernels/scalar.h) is not called in "
                                  << "kernels/scalar_check.h's scalar_results, so no build "
                                     "compiles it for the GPU";
  EXPECT_TRUE(called(read_source("kernels/cuda/scalar_check.cu"), "scalar_results"));
  EXPECT_FALSE(called(check, "no_such_function"));
  // the host side of the check computes what the functions compute
  ScalarResults r;
  scalar_results(448.f, 0x7e, r);
  EXPECT_EQ(r.f32_to_e4m3, 0x7e);
  EXPECT_EQ(bits_f32(r.e4m3_to_f32), 448.f);
  EXPECT_EQ(r.round_up, 128);
  EXPECT_EQ(r.fast_exp_d, std::exp(448.0));
}

}  // namespace
}  // namespace moetron::kernels::cpu::testing
