// Expert rows padded to 16 on the GPU (PrecisionPolicy::expert_row_align, the default for FP8
// routed experts on CUDA): a MoE layer under the fp8 recipe runs every one of its FP8 GEMMs through
// cuBLASLt (none falls back to the plain kernel, which ragged expert groups would), and matches the
// unpadded layer on the CPU to the FP8 recipe's GPU tolerances (tests/test_cuda_model.cpp's:
// cuBLASLt's tensor cores accumulate each 128-K block below fp32). The gate runs in fp32 on both
// sides so that its rounding cannot flip a near-tied expert choice (checked: the same loads).
// Skipped without a GPU.
#include <string>
#include <vector>

#include "kernels/cuda/fp8_cuda.h"
#include "tests/moe_layer_run.h"
#include "tests/test_cuda_util.h"

namespace moetron::kernels::gpu::testing {
namespace {

double calc_diff(const std::vector<float>& x, const std::vector<float>& y) {
  double xy = 0, xx = 0;
  for (size_t i = 0; i < x.size(); ++i)
    xy += double(x[i]) * y[i], xx += double(x[i]) * x[i] + double(y[i]) * y[i];
  return xx == 0 ? 0 : 1 - 2 * xy / xx;
}

TEST(CudaMoEPadding, Fp8ExpertsPaddedTo16AllRunOnCublasLtAndMatchTheCpu) {
  MOETRON_REQUIRE_REAL_GPU("cuBLASLt's FP8 GEMMs");
  PrecisionPolicy pol = PrecisionPolicy::from(Recipe::FP8);
  pol.overrides[Component::Gate] = Recipe::FP32;
  // widths of whole 128-blocks, as DeepSeek-V3's (cuBLASLt's block scaling is only asked for
  // the rows here, not for reductions shorter than one block)
  ModelConfig c = test_moe::moe_config();
  c.hidden_size = 256, c.moe_intermediate_size = 128;
  const test_moe::LayerRun cpu = test_moe::run_layer(pol, 1, Device::CPU, c);
  const fp8::GemmCounts before = fp8::gemm_counts();
  const test_moe::LayerRun gpu = test_moe::run_layer(pol, 16, Device::CUDA, c);
  const fp8::GemmCounts after = fp8::gemm_counts();
  EXPECT_GT(after.cublaslt, before.cublaslt) << "no FP8 GEMM ran on cuBLASLt";
  EXPECT_EQ(after.kernel, before.kernel)
      << (after.kernel - before.kernel) << " FP8 GEMMs fell back to the kernel";
  ASSERT_EQ(gpu.load, cpu.load) << "the gate chose other experts on the GPU";
  int64_t ragged = 0;
  for (size_t e = 0; e + 1 < gpu.group_off.size(); ++e) {
    EXPECT_EQ(gpu.group_off[e] % 16, 0) << "expert " << e;
    ragged += (cpu.group_off[e + 1] - cpu.group_off[e]) % 16 != 0;
  }
  EXPECT_GT(ragged, 0) << "no expert needed padding: the test shows nothing";
  EXPECT_LT(calc_diff(gpu.y, cpu.y), 1e-3) << "output";
  EXPECT_LT(calc_diff(gpu.dx, cpu.dx), 1e-2) << "input gradient";
  ASSERT_EQ(gpu.grads.size(), cpu.grads.size());
  for (size_t i = 0; i < cpu.grads.size(); ++i)
    EXPECT_LT(calc_diff(gpu.grads[i], cpu.grads[i]), 1e-2) << "gradient " << i;
}

}  // namespace
}  // namespace moetron::kernels::gpu::testing
