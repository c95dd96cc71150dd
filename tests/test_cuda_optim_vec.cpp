// The optimizer's vector ops on the GPU (kernels/cuda/optim_vec.cu) against their CPU twins on
// the same seeded inputs: the segments' sums of squares to 1e-11 relative (fixed trees over
// blocks, not the CPU's index order: 1.09e-12 apart at 16.8M values, measured on the CUDA
// emulator, which runs the kernel's own tree; the squares are exact in double, so a GPU's fma
// changes nothing) and the same bits on a second call and alone; the non-finite
// count exactly; the clip scale and the bf16 rounding bitwise (the same float multiply, scalar.h's
// rounding). Skipped without a GPU.
#include <cmath>
#include <limits>

#include "kernels/cpu/ops_cpu.h"
#include "kernels/scalar.h"
#include "tests/test_cuda_util.h"

namespace moetron::kernels::gpu::testing {
namespace {

// The segments' sums of squares in one call (lengths across the first pass's block sizes: one
// block, two, and the 1024-block cap at 16.8M values; an empty one): each within 1e-11 of the
// CPU's, the same bits on a second call, and the same bits alone as beside the others.
TEST(CudaOptimVec, SegmentSumsOfSquaresMatchTheCpuAndEachOther) {
  MOETRON_REQUIRE_GPU();
  const std::vector<int64_t> len = {1, 1023, 0, 16384, 16385, 3000017, (int64_t(1) << 24) + 77};
  std::vector<int64_t> begin;
  int64_t at = 1;
  for (int64_t l : len) begin.push_back(at), at += l + 3;
  const std::vector<float> x = rand_vec<float>(static_cast<size_t>(at), 41, -4.0, 4.0);
  const auto n = static_cast<int64_t>(len.size());
  std::vector<double> want(len.size());
  cpu::segment_sum_squares(x.data(), begin.data(), len.data(), n, want.data());
  Buffer<float> gx = dev(x);
  Buffer<double> out = dev_garbage<double>(len.size());
  kernels::segment_sum_squares(gpu_exec(), gx.data(), begin.data(), len.data(), n, out.data());
  const std::vector<double> got = host(out, len.size());
  kernels::segment_sum_squares(gpu_exec(), gx.data(), begin.data(), len.data(), n, out.data());
  EXPECT_EQ(host(out, len.size()), got) << "run to run";
  for (size_t s = 0; s < len.size(); ++s) {
    EXPECT_NEAR(got[s], want[s], 1e-11 * want[s]) << len[s];
    kernels::segment_sum_squares(gpu_exec(), gx.data(), &begin[s], &len[s], 1, out.data());
    EXPECT_EQ(host(out, 1)[0], got[s]) << "alone, len " << len[s];
  }
  EXPECT_EQ(got[2], 0.0);
}

TEST(CudaOptimVec, CountScaleRoundMatchTheCpu) {
  MOETRON_REQUIRE_GPU();
  for (size_t n : {size_t(1), size_t(1023), size_t(1025), size_t(16385), size_t(3000017)}) {
    std::vector<float> x = rand_vec<float>(n, 40 + n, -4.0, 4.0);
    Buffer<float> gx = dev(x);
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
