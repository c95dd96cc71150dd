// Unit tests of the load imbalances a step reports (trainer/expert_balance.h): over experts, and
// over the EP ranks that hold them in contiguous equal parts.
#include <gtest/gtest.h>

#include <cstdint>
#include <vector>

#include "trainer/expert_balance.h"

namespace moetron {
namespace {

TEST(LoadImbalance, MaxOverMeanOfContiguousParts) {
  // 8 experts on 2 EP ranks: rank 0 holds 0..3 (10 rows), rank 1 holds 4..7 (30 rows)
  const std::vector<int64_t> loads = {1, 2, 3, 4, 5, 6, 7, 12};
  EXPECT_DOUBLE_EQ(part_imbalance(loads.data(), 8, 8), 12 / 5.0);  // experts: 12 over 40 / 8
  EXPECT_DOUBLE_EQ(part_imbalance(loads.data(), 8, 2), 30 / 20.0);
  EXPECT_DOUBLE_EQ(part_imbalance(loads.data(), 8, 4), 19 / 10.0);  // parts 3, 7, 11, 19
  EXPECT_DOUBLE_EQ(part_imbalance(loads.data(), 8, 1), 1.0);        // one rank waits for no one
  const std::vector<int64_t> none(8, 0);
  EXPECT_EQ(part_imbalance(none.data(), 8, 2), 0);  // no rows routed: no figure
}

}  // namespace
}  // namespace moetron
