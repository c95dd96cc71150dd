// The op profile's table and TSV (trainer/step_profile.h): each op's TFLOP/s keeps its digits —
// two decimals from 1 up, three significant digits below (a small GEMM on a busy CPU runs at
// thousandths of a TFLOP/s, which two decimals showed as 0.00) — and "-" where the op is no GEMM.
#include <gtest/gtest.h>

#include <sstream>
#include <string>
#include <vector>

#include "trainer/step_profile.h"

namespace moetron {
namespace {

std::vector<std::vector<std::string>> rows_of(const std::string& tsv) {
  std::vector<std::vector<std::string>> out;
  std::istringstream in(tsv);
  for (std::string line; std::getline(in, line);) {
    out.emplace_back();
    std::istringstream l(line);
    for (std::string f; std::getline(l, f, '\t');) out.back().push_back(f);
  }
  return out;
}

TEST(StepProfile, TflopsKeepTheirDigitsAtEveryRate) {
  using kernels::op_profile::Row;
  const std::vector<Row> rows = {{"gemm", 4, 2.0, 4'000'000'000},                  // 0.002 TFLOP/s
                                 {"grouped_gemm", 2, 1.0, 1'500'000'000'000'000},  // 1500
                                 {"rmsnorm_forward", 8, 0.5, 0}};
  const auto t = rows_of(StepProfile::tsv(rows, 10.0));
  ASSERT_EQ(t.size(), 4u);
  EXPECT_EQ(t[0].back(), "tflops");
  EXPECT_EQ(t[1][5], "0.002");
  EXPECT_EQ(t[2][5], "1500.00");
  EXPECT_EQ(t[3][5], "-");
  EXPECT_EQ(t[1][3], "20.000");  // share of the steps, percent
  const std::string table = StepProfile::table(rows, 10.0, 15);
  EXPECT_NE(table.find("0.002"), std::string::npos) << table;
  EXPECT_NE(table.find("1500.00"), std::string::npos) << table;
}

}  // namespace
}  // namespace moetron
