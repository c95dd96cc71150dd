// RMSNorm (forward, input and weight backward) and RoPE on the GPU against their CPU twins
// (kernels/cpu/norm.cpp, rope.cpp) on the same seeded inputs. Skipped without a GPU.
//
// Tolerances (expect_near_rel: |gpu - cpu| <= rtol (|cpu| + max|cpu|)):
//   float 1e-6: the row sums run in double in both, so rstd agrees to at most 1 ulp and y, dx
//   to a few ulp (the summation order and which product is fused into an fma differ);
//   double 1e-12. rmsnorm_backward_weight is bitwise: per column the same products (in T),
//   widened, fused into the same double fma, rows in the same order, one add into dw.
//   RoPE: cos/sin in double cast to T on both sides (CUDA's and glibc's double cos/sin differ by
//   at most an ulp of double), so float agrees to an ulp or two of the vector scale: 1e-6.
#include <string>
#include <type_traits>
#include <vector>

#include "kernels/cpu/ops_cpu.h"
#include "tests/test_cuda_util.h"

namespace moetron::kernels::gpu::testing {
namespace {

template <class T>
double rtol_of() {
  return std::is_same_v<T, float> ? 1e-6 : 1e-12;
}

template <class T>
void check_rmsnorm(int64_t N, int64_t D, uint64_t seed) {
  const std::string at = "N=" + std::to_string(N) + " D=" + std::to_string(D) +
                         (std::is_same_v<T, float> ? " float" : " double");
  const size_t nd = static_cast<size_t>(N * D);
  const auto x = rand_vec<T>(nd, seed, -2.0, 2.0);
  const auto w = rand_vec<T>(D, seed + 1, 0.5, 1.5);
  const auto dy = rand_vec<T>(nd, seed + 2);
  const auto dw0 = rand_vec<T>(D, seed + 3);  // existing contents: the weight gradient adds
  const T eps = T(1e-6);
  const double rtol = rtol_of<T>();

  // forward
  std::vector<T> y(nd), rstd(N);
  cpu::rmsnorm_forward<T>(x.data(), w.data(), N, D, eps, y.data(), rstd.data());
  Buffer<T> gx = dev(x), gw = dev(w), gdy = dev(dy);
  Buffer<T> gy = dev_garbage<T>(nd), grstd = dev_garbage<T>(N);
  kernels::rmsnorm_forward<T>(gpu_exec(), gx.data(), gw.data(), N, D, eps, gy.data(), grstd.data());
  expect_near_rel(host(gy, nd), y, rtol, "rmsnorm_forward y " + at);
  expect_near_rel(host(grstd, N), rstd, rtol, "rmsnorm_forward rstd " + at);

  // backward, both from the CPU's rstd so that the inputs are identical
  Buffer<T> grs = dev(rstd);
  std::vector<T> dx(nd);
  cpu::rmsnorm_backward_input<T>(dy.data(), x.data(), w.data(), rstd.data(), N, D, dx.data());
  Buffer<T> gdx = dev_garbage<T>(nd);
  kernels::rmsnorm_backward_input<T>(gpu_exec(), gdy.data(), gx.data(), gw.data(), grs.data(), N, D,
                                     gdx.data());
  expect_near_rel(host(gdx, nd), dx, rtol, "rmsnorm_backward_input " + at);

  std::vector<T> dw = dw0;
  cpu::rmsnorm_backward_weight<T>(dy.data(), x.data(), rstd.data(), N, D, dw.data());
  Buffer<T> gdw = dev(dw0);
  kernels::rmsnorm_backward_weight<T>(gpu_exec(), gdy.data(), gx.data(), grs.data(), N, D,
                                      gdw.data());
  const auto got_dw = host(gdw, D);
  expect_near_rel(got_dw, dw, rtol, "rmsnorm_backward_weight (near) " + at);
  expect_equal(got_dw, dw, "rmsnorm_backward_weight (bitwise) " + at);
}

TEST(CudaRmsNorm, MatchesTheCpu) {
  MOETRON_REQUIRE_GPU();
  const int64_t shapes[][2] = {{1, 1}, {3, 37}, {5, 161}, {2, 1000}, {300, 64}, {4, 7168}};
  uint64_t seed = 10;
  for (const auto& s : shapes) {
    check_rmsnorm<float>(s[0], s[1], seed += 10);
    check_rmsnorm<double>(s[0], s[1], seed += 10);
  }
}

TEST(CudaRmsNorm, WeightGradientOverManyRowsAccumulates) {
  MOETRON_REQUIRE_GPU();
  check_rmsnorm<float>(1000, 37, 500);  // long column walks, odd width
  check_rmsnorm<double>(1000, 37, 510);
  // N == 0 adds nothing (and launches nothing)
  const auto dw0 = rand_vec<float>(37, 520);
  Buffer<float> gdw = dev(dw0), empty = dev(std::vector<float>{0.f});
  kernels::rmsnorm_backward_weight<float>(gpu_exec(), empty.data(), empty.data(), empty.data(), 0,
                                          37, gdw.data());
  expect_equal(host(gdw, 37), dw0, "rmsnorm_backward_weight N=0");
}

// RoPE over `nvec` vectors whose rotary part (dim values) sits at offset `off` in rows of
// `stride` values: the CPU and GPU forward agree, the inverse agrees with the CPU's inverse and
// undoes the forward; values outside the rotary parts are untouched.
template <class T>
void check_rope(int64_t nvec, int64_t dim, int64_t stride, int64_t off, int64_t vecs_per_pos,
                bool yarn, int32_t max_pos, uint64_t seed) {
  const std::string at = "nvec=" + std::to_string(nvec) + " dim=" + std::to_string(dim) +
                         " stride=" + std::to_string(stride) +
                         " vpp=" + std::to_string(vecs_per_pos) +
                         (std::is_same_v<T, float> ? " float" : " double");
  const size_t n = static_cast<size_t>(nvec * stride);
  const auto x = rand_vec<T>(n, seed, -3.0, 3.0);
  const int64_t npos = (nvec + vecs_per_pos - 1) / vecs_per_pos;
  std::vector<int32_t> pos(npos);
  std::mt19937_64 rng(seed + 1);
  for (auto& p : pos) p = static_cast<int32_t>(rng() % (static_cast<uint64_t>(max_pos) + 1));
  pos[0] = 0;                             // the identity rotation
  if (npos > 1) pos[npos - 1] = max_pos;  // the largest angles
  RopeParams rp;
  rp.dim = static_cast<int>(dim);
  rp.yarn = yarn;
  rp.factor = 40.0;
  const std::vector<double> freqs = rope_frequencies(rp);
  const double rtol = rtol_of<T>();

  std::vector<T> want = x;
  cpu::rope_apply<T>(want.data() + off, nvec, stride, vecs_per_pos, pos.data(), freqs.data(), dim,
                     false);
  Buffer<T> gx = dev(x);
  Buffer<int32_t> gpos = dev(pos);
  Buffer<double> gf = dev(freqs);
  kernels::rope_apply<T>(gpu_exec(), gx.data() + off, nvec, stride, vecs_per_pos, gpos.data(),
                         gf.data(), dim, false);
  const auto fwd = host(gx, n);
  expect_near_rel(fwd, want, rtol, "rope forward " + at);
  // outside the rotary parts: bitwise untouched
  for (int64_t v = 0; v < nvec; ++v)
    for (int64_t j = 0; j < stride; ++j)
      if (j < off || j >= off + dim) {
        const size_t k = static_cast<size_t>(v * stride + j);
        if (fwd[k] != x[k]) {
          ADD_FAILURE() << "rope forward wrote outside the rotary part at [" << k << "] " << at;
          v = nvec;
          break;
        }
      }

  // inverse: from each side's own forward result, compared with the CPU's inverse and with x
  cpu::rope_apply<T>(want.data() + off, nvec, stride, vecs_per_pos, pos.data(), freqs.data(), dim,
                     true);
  kernels::rope_apply<T>(gpu_exec(), gx.data() + off, nvec, stride, vecs_per_pos, gpos.data(),
                         gf.data(), dim, true);
  const auto back = host(gx, n);
  expect_near_rel(back, want, rtol, "rope inverse vs cpu " + at);
  expect_near_rel(back, x, std::is_same_v<T, float> ? 2e-6 : 1e-12, "rope round trip " + at);
}

TEST(CudaRope, MatchesTheCpuAndInverts) {
  MOETRON_REQUIRE_GPU();
  // nvec, dim, stride, off, vecs_per_pos, yarn, max_pos
  check_rope<float>(1, 2, 2, 0, 1, false, 7, 100);
  check_rope<double>(1, 2, 2, 0, 1, false, 7, 101);
  check_rope<float>(37, 64, 64, 0, 1, false, 4095, 102);
  check_rope<double>(37, 64, 64, 0, 1, false, 4095, 103);
  // stride > dim, rotary part at the end of each head (MLA's q: 128 nope + 64 rope), several
  // vectors per position with a partial last position (37 = 9 * 4 + 1)
  check_rope<float>(37, 64, 192, 128, 4, true, 163839, 104);
  check_rope<double>(37, 64, 192, 128, 4, true, 163839, 105);
  check_rope<float>(50, 10, 23, 5, 3, false, 1000, 106);
  check_rope<double>(50, 10, 23, 5, 3, false, 1000, 107);
  // DeepSeek-V3: 128 heads per token, 16 tokens, YaRN (factor 40) over 160K positions
  check_rope<float>(16 * 128, 64, 192, 128, 128, true, 163839, 108);
  check_rope<double>(16 * 128, 64, 192, 128, 128, true, 163839, 109);
}

TEST(CudaRope, RejectsNonPositiveVecsPerPos) {
  MOETRON_REQUIRE_GPU();
  Buffer<float> x = dev(std::vector<float>(4, 1.f));
  Buffer<int32_t> pos = dev(std::vector<int32_t>{0});
  Buffer<double> f = dev(std::vector<double>{1.0, 0.5});
  EXPECT_THROW(
      kernels::rope_apply<float>(gpu_exec(), x.data(), 1, 4, 0, pos.data(), f.data(), 4, false),
      std::invalid_argument);
}

}  // namespace
}  // namespace moetron::kernels::gpu::testing
