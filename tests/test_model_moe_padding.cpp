// Expert row padding (PrecisionPolicy::expert_row_align, model/moe.h): each routed expert's rows
// padded with zero rows to a multiple of the alignment, so that cuBLASLt can run every expert's
// block-scaled FP8 GEMM on a GPU (kernels/cuda/fp8_gemm.cu). The zero rows must change no value:
// a MoE layer's output, input gradient and every parameter gradient are bit for bit those of the
// unpadded layer under the FP8 recipe (its GEMMs are our own kernels, whose sums over the rows
// add exact zeros), on the CPU and on the guard device (which faults on any touch of device
// memory outside an op, so the pad rows' buffers are the ops' own). The groups here are ragged
// and cross 128-row tiles, so the padding is really there (checked) and lands inside the 128x1
// tiles of the Wgrad quantisation.
#include <gtest/gtest.h>

#include <cstring>
#include <string>
#include <vector>

#include "tests/moe_layer_run.h"

using namespace moetron;
using test_moe::LayerRun;
using test_moe::run_layer;

namespace {

bool same_bits(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

// The padded layer against the unpadded one: the padding is real, every value the same bits.
void expect_padding_changes_no_bit(const PrecisionPolicy& pol, int64_t align, Device dev,
                                   const std::string& what) {
  const LayerRun plain = run_layer(pol, 1, dev), padded = run_layer(pol, align, dev);
  ASSERT_EQ(plain.group_off.back(), plain.pairs) << what;
  ASSERT_EQ(padded.group_off.size(), plain.group_off.size()) << what;
  int64_t ragged = 0;
  for (size_t e = 0; e + 1 < padded.group_off.size(); ++e) {
    const int64_t rows = padded.group_off[e + 1] - padded.group_off[e];
    const int64_t own = plain.group_off[e + 1] - plain.group_off[e];
    EXPECT_EQ(padded.group_off[e] % align, 0) << what << " expert " << e;
    EXPECT_EQ(rows, (own + align - 1) / align * align) << what << " expert " << e;
    ragged += own % align != 0;
  }
  EXPECT_GT(ragged, 0) << what << ": no expert's rows needed padding; the test shows nothing";
  EXPECT_TRUE(same_bits(padded.y, plain.y)) << what << ": output";
  EXPECT_TRUE(same_bits(padded.dx, plain.dx)) << what << ": input gradient";
  ASSERT_EQ(padded.grads.size(), plain.grads.size());
  for (size_t i = 0; i < plain.grads.size(); ++i)
    EXPECT_TRUE(same_bits(padded.grads[i], plain.grads[i])) << what << ": gradient " << i;
}

}  // namespace

TEST(MoEPadding, Fp8ExpertsPaddedTo16ChangeNoBit) {
  expect_padding_changes_no_bit(PrecisionPolicy::from(Recipe::FP8), 16, Device::CPU, "fp8 16");
}

TEST(MoEPadding, Fp8VariantsAndOddAlignmentsChangeNoBit) {
  PrecisionPolicy pol = PrecisionPolicy::from(Recipe::FP8);
  pol.pow2_scales = Pow2Scales::All;
  pol.dgrad_tile = DgradTile::Tile128x128;  // Dgrad's 128x128 blocks of dY span the pad rows
  pol.store_bf16 = true;
  expect_padding_changes_no_bit(pol, 16, Device::CPU, "fp8 pow2 all, dgrad 128x128, bf16 store");
  expect_padding_changes_no_bit(PrecisionPolicy::from(Recipe::FP8), 7, Device::CPU, "fp8 7");
}

TEST(MoEPadding, OnTheGuardDeviceThePadRowsAreTheOpsOwn) {
  expect_padding_changes_no_bit(PrecisionPolicy::from(Recipe::FP8), 16, Device::Guard,
                                "fp8 16 guard");
}
