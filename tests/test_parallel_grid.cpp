// The rank grid's arithmetic and its layout errors (no MPI needed).
#include <gtest/gtest.h>

#include "parallel/grid.h"

using moetron::LayoutError;
using moetron::RankGrid;

TEST(RankGrid, GroupsForPP2xDP4WithEP2) {
  // rank = pp * DP + dp
  RankGrid g = RankGrid::make(8, 6, 2, 4, 2, 4);
  EXPECT_EQ(g.pp_rank, 1);
  EXPECT_EQ(g.dp_rank, 2);
  EXPECT_EQ(g.ep_rank, 0);
  EXPECT_EQ(g.edp_rank, 1);
  EXPECT_EQ(g.pp_group(), (std::vector<int>{2, 6}));
  EXPECT_EQ(g.dp_group(), (std::vector<int>{4, 5, 6, 7}));
  EXPECT_EQ(g.ep_group(), (std::vector<int>{6, 7}));
  EXPECT_EQ(g.edp_group(), (std::vector<int>{4, 6}));
  EXPECT_EQ(g.node_of(6), 1);
}

TEST(RankGrid, OneRank) {
  RankGrid g = RankGrid::make(1, 0, 1, 1, 1, 0);
  EXPECT_EQ(g.pp_group(), std::vector<int>{0});
  EXPECT_EQ(g.ep_group(), std::vector<int>{0});
}

TEST(RankGrid, BadLayoutsSayWhich) {
  auto msg = [](auto f) {
    try {
      f();
    } catch (const LayoutError& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(msg([] { RankGrid::make(6, 0, 2, 2, 1, 0); }).find("parallel.pp x parallel.dp"),
            std::string::npos);
  EXPECT_NE(msg([] { RankGrid::make(6, 0, 1, 6, 4, 0); }).find("parallel.ep (4) must divide"),
            std::string::npos);
  EXPECT_NE(msg([] { RankGrid::make(6, 0, 1, 6, 2, 4); }).find("ranks_per_node"),
            std::string::npos);
}
