// Tests of the small kernels: elementwise add / axpy (short and long enough to run threaded) and
// the embedding gather / scatter-add with repeated token ids; bf16 narrowing and widening.
#include <bit>
#include <cmath>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"
#include "tests/test_kernels_util.h"

namespace moetron::kernels::cpu::testing {
namespace {

template <class T>
class BasicTest : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(BasicTest, Types);

TYPED_TEST(BasicTest, AddAndAxpy) {
  using T = TypeParam;
  for (int64_t n : {int64_t{1}, int64_t{37}, int64_t{100003}}) {
    const auto x = to_double(cast<T>(rand_vec(n, 1))), y0 = to_double(cast<T>(rand_vec(n, 2)));
    auto y = cast<T>(y0);
    add_inplace<T>(y.data(), cast<T>(x).data(), n);
    std::vector<double> ref(n);
    for (int64_t i = 0; i < n; ++i) ref[i] = y0[i] + x[i];
    expect_close(y, ref, kTol<T>, "add_inplace");
    y = cast<T>(y0);
    axpy<T>(y.data(), T(-0.75), cast<T>(x).data(), n);
    for (int64_t i = 0; i < n; ++i) ref[i] = y0[i] - 0.75 * x[i];
    expect_close(y, ref, kTol<T>, "axpy");
  }
}

TYPED_TEST(BasicTest, EmbeddingGatherAndScatterAdd) {
  using T = TypeParam;
  const int64_t V = 11, D = 133, N = 37;  // D > one column block; ids repeat
  std::vector<int32_t> ids(N);
  for (int64_t n = 0; n < N; ++n) ids[n] = static_cast<int32_t>((n * 7) % V);
  ids[5] = ids[6] = 3;
  const auto table = cast<T>(rand_vec(V * D, 3));
  std::vector<T> out(N * D);
  embedding_forward<T>(ids.data(), N, table.data(), D, out.data());
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d) ASSERT_EQ(out[n * D + d], table[ids[n] * D + d]);
  const auto dout = to_double(cast<T>(rand_vec(N * D, 4)));
  const auto dt0 = to_double(cast<T>(rand_vec(V * D, 5)));
  auto dtable = cast<T>(dt0);  // accumulates
  embedding_backward<T>(ids.data(), N, cast<T>(dout).data(), D, dtable.data());
  auto ref = dt0;
  for (int64_t n = 0; n < N; ++n)
    for (int64_t d = 0; d < D; ++d) ref[ids[n] * D + d] += dout[n * D + d];
  expect_close(dtable, ref, kTol<T>, "embedding_backward");
}

TEST(Embedding, NegativeIdThrows) {
  const std::vector<int32_t> ids = {0, -1};
  std::vector<float> table(4), out(4);
  EXPECT_THROW(embedding_forward<float>(ids.data(), 2, table.data(), 2, out.data()),
               std::out_of_range);
}

}  // namespace
}  // namespace moetron::kernels::cpu::testing

namespace moetron::kernels::cpu::testing {
namespace {

// narrow_to_e5m6 / widen_from_e5m6 (the attention output under activations.attention_output:
// e5m6): the packed codes are each element's f32_to_e5m6 (kernels/scalar.h, tested against a
// reference there) two to three bytes, an odd length's last pair padded with code 0; widening
// gives each code's value; long vectors run threaded. The values are within half an E5M6 step
// (2^-7 relative) of the input.
TEST(E5m6Convert, PackedCodesAndExactWidening) {
  for (int64_t n : {int64_t{1}, int64_t{7}, int64_t{100003}}) {
    std::vector<float> x = cast<float>(rand_vec(n, 11));
    for (int64_t i = 0; i < n; ++i) x[i] *= std::ldexp(1.0f, static_cast<int>(i % 31) - 15);
    std::vector<uint8_t> p(static_cast<size_t>(3 * ((n + 1) / 2)), 0xEE);
    std::vector<float> back(n);
    narrow_to_e5m6(x.data(), n, p.data());
    widen_from_e5m6(p.data(), n, back.data());
    for (int64_t i = 0; i < n; ++i) {
      const uint16_t c = e5m6_unpack(p.data() + 3 * (i / 2), static_cast<int>(i % 2));
      ASSERT_EQ(c, f32_to_e5m6(x[i])) << "x[" << i << "] = " << x[i];
      ASSERT_EQ(std::bit_cast<uint32_t>(back[i]), std::bit_cast<uint32_t>(e5m6_to_f32(c)));
      if (std::fabs(x[i]) >= 6.103515625e-05f) {
        ASSERT_LE(std::fabs(back[i] - x[i]), std::ldexp(std::fabs(x[i]), -7)) << i;
      }
    }
    if (n % 2) {
      EXPECT_EQ(e5m6_unpack(p.data() + 3 * (n / 2), 1), 0);
    }
  }
}

// narrow_to_bf16 / widen_from_bf16 (activation storage, bf16 gradient reduction): every value is
// the nearest bf16 (ties to even mantissa), found here independently with frexp/ldexp in double;
// widening is exact; long vectors run threaded.
TEST(Bf16Convert, NearestEvenAndExactWidening) {
  for (int64_t n : {int64_t{5}, int64_t{100003}}) {
    std::vector<float> x = cast<float>(rand_vec(n, 9));
    for (int64_t i = 0; i < n; ++i) x[i] *= std::ldexp(1.0f, static_cast<int>(i % 41) - 20);
    x[0] = 1.0f + 1.0f / 256;     // a tie between 1 and 1 + 2^-7: to even (1)
    x[1] = 1.0f + 3.0f / 256;     // a tie between 1 + 2^-7 and 1 + 2^-6: to even (1 + 2^-6)
    x[2] = -(1.0f + 1.0f / 512);  // below the tie: down in magnitude
    x[3] = 0.0f;
    std::vector<uint16_t> h(n);
    std::vector<float> back(n);
    narrow_to_bf16(x.data(), n, h.data());
    widen_from_bf16(h.data(), n, back.data());
    for (int64_t i = 0; i < n; ++i) {
      const double v = x[i];
      int e = 0;
      const double m = std::frexp(std::fabs(v), &e);  // |v| = m 2^e, m in [0.5, 1)
      const double scaled = std::ldexp(m, 8);         // 8 significant bits
      double r = std::floor(scaled);
      const double frac = scaled - r;
      if (frac > 0.5 || (frac == 0.5 && std::fmod(r, 2.0) != 0)) r += 1;
      const double want = std::copysign(std::ldexp(r, e - 8), v);
      ASSERT_EQ(static_cast<double>(back[i]), want) << "x[" << i << "] = " << v;
      ASSERT_EQ(static_cast<uint32_t>(h[i]) << 16, std::bit_cast<uint32_t>(back[i]));
    }
  }
}

}  // namespace
}  // namespace moetron::kernels::cpu::testing
