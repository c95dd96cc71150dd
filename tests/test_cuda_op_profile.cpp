// The op profile on the GPU (kernels/op_profile.h): an op is timed by events on its stream, so a
// GEMM's recorded time is the GPU's (milliseconds for 8 fp32 GEMMs of 4096^3, which take the
// host microseconds to enqueue), its FLOPs are the counter's, and the implied rate is a real one.
// Skipped without a GPU.
#include <chrono>

#include "kernels/flop_counter.h"
#include "kernels/op_profile.h"
#include "tests/test_cuda_util.h"

namespace moetron::kernels::gpu::testing {
namespace {

TEST(CudaOpProfile, TimesTheGpuNotTheLaunch) {
  MOETRON_REQUIRE_REAL_GPU("the GPU's timing");
  const BusyStream warm;  // cuBLASLt's plans and the pool made before timing
  synchronize(gpu_exec());
  op_profile::reset();
  op_profile::set_enabled(true);
  flop_counter::set_counting(true);
  const auto t0 = std::chrono::steady_clock::now();
  const BusyStream timed;  // one upload and 8 GEMMs of 4096^3 in fp32
  const double host_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  op_profile::set_enabled(false);
  flop_counter::set_counting(false);
  const std::vector<op_profile::Row> rows = op_profile::collect();  // waits for the events
  op_profile::reset();
  const op_profile::Row* g = nullptr;
  for (const op_profile::Row& r : rows)
    if (r.op == "gemm") g = &r;
  ASSERT_NE(g, nullptr);
  EXPECT_EQ(g->calls, 8);
  EXPECT_EQ(g->flops, 8 * 2 * BusyStream::kN * BusyStream::kN * BusyStream::kN);
  const double tflops = static_cast<double>(g->flops) / g->seconds / 1e12;
  EXPECT_GT(g->seconds, 1e-3) << "host " << host_s << " s";  // >= 1.1 TFLOP at <= 1000 TFLOP/s
  EXPECT_LT(tflops, 200) << "fp32 without TF32 runs at tens of TFLOP/s";
  EXPECT_GT(tflops, 5);
}

}  // namespace
}  // namespace moetron::kernels::gpu::testing
