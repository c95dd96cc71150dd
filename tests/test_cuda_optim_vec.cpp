// The optimizer's vector ops on the GPU (kernels/cuda/optim_vec.cu) against their CPU twins on
// the same seeded inputs: the sum of squares to 1e-12 relative (fixed trees over blocks, not the
// CPU's index order) and the same bits on a second call; the non-finite count exactly; the clip
// scale and the bf16 rounding bitwise (the same float multiply, scalar.h's rounding). Skipped
// without a GPU.
#include <cmath>
#include <limits>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"
#include "tests/test_cuda_util.h"

namespace moetron::kernels::gpu::testing {
namespace {

TEST(CudaOptimVec, SumOfSquaresCountScaleRoundMatchTheCpu) {
  MOETRON_REQUIRE_GPU();
  for (size_t n : {size_t(1), size_t(1023), size_t(1025), size_t(16385), size_t(3000017)}) {
    std::vector<float> x = rand_vec<float>(n, 40 + n, -4.0, 4.0);
    double want = 0;
    cpu::sum_squares(x.data(), static_cast<int64_t>(n), &want);
    Buffer<float> gx = dev(x);
    Buffer<double> out = dev_garbage<double>(1);
    kernels::sum_squares(gpu_exec(), gx.data(), static_cast<int64_t>(n), out.data());
    const double got = host(out, 1)[0];
    EXPECT_NEAR(got, want, 1e-12 * want) << n;
    kernels::sum_squares(gpu_exec(), gx.data(), static_cast<int64_t>(n), out.data());
    EXPECT_EQ(host(out, 1)[0], got) << "run to run, n=" << n;

    std::vector<float> scaled = x, rounded = x;  // both bitwise
    cpu::scale_inplace(scaled.data(), 0.61f, static_cast<int64_t>(n));
    cpu::round_bf16_inplace(rounded.data(), static_cast<int64_t>(n));
    kernels::scale_inplace(gpu_exec(), gx.data(), 0.61f, static_cast<int64_t>(n));
    expect_equal(host(gx, n), scaled, "scale_inplace");
    gx = dev(x);
    kernels::round_bf16_inplace(gpu_exec(), gx.data(), static_cast<int64_t>(n));
    expect_equal(host(gx, n), rounded, "round_bf16_inplace");

    // finite values so far (a NaN's payload may differ between the two); now a NaN and an -inf
    if (n > 1000) x[7] = std::numeric_limits<float>::quiet_NaN(), x[n - 1] = -INFINITY;
    gx = dev(x);
    int64_t bad = 0;
    cpu::count_nonfinite(x.data(), static_cast<int64_t>(n), &bad);
    Buffer<int64_t> gbad = dev_garbage<int64_t>(1);
    kernels::count_nonfinite(gpu_exec(), gx.data(), static_cast<int64_t>(n), gbad.data());
    EXPECT_EQ(host(gbad, 1)[0], bad) << n;
  }
}

}  // namespace
}  // namespace moetron::kernels::gpu::testing
