// Rank grid arithmetic and layout validation (see grid.h).
#include "parallel/grid.h"

namespace moetron {

RankGrid RankGrid::make(int world, int rank, int pp, int dp, int ep, int ranks_per_node) {
  auto fail = [&](const std::string& m) { throw LayoutError("layout: " + m); };
  if (pp < 1 || dp < 1 || ep < 1) fail("parallel.pp, parallel.dp and parallel.ep must be >= 1");
  if (pp * dp != world)
    fail("parallel.pp x parallel.dp = " + std::to_string(pp) + " x " + std::to_string(dp) + " = " +
         std::to_string(pp * dp) + " ranks, but the job has " + std::to_string(world) +
         (world == 1 ? " process" : " processes"));
  if (dp % ep != 0)
    fail("parallel.ep (" + std::to_string(ep) + ") must divide parallel.dp (" + std::to_string(dp) +
         ")");
  if (ranks_per_node < 0) fail("parallel.ranks_per_node must be >= 0");
  if (ranks_per_node > 0 && world % ranks_per_node != 0)
    fail("parallel.ranks_per_node (" + std::to_string(ranks_per_node) +
         ") must divide the world size (" + std::to_string(world) + ")");
  if (rank < 0 || rank >= world) fail("rank " + std::to_string(rank) + " outside the world");
  RankGrid g;
  g.world = world, g.pp = pp, g.dp = dp, g.ep = ep, g.ranks_per_node = ranks_per_node;
  g.rank = rank;
  g.pp_rank = rank / dp;
  g.dp_rank = rank % dp;
  g.ep_rank = g.dp_rank % ep;
  g.edp_rank = g.dp_rank / ep;
  return g;
}

std::vector<int> RankGrid::pp_group() const {
  std::vector<int> r;
  for (int s = 0; s < pp; ++s) r.push_back(rank_of(s, dp_rank));
  return r;
}

std::vector<int> RankGrid::dp_group() const {
  std::vector<int> r;
  for (int d = 0; d < dp; ++d) r.push_back(rank_of(pp_rank, d));
  return r;
}

std::vector<int> RankGrid::ep_group() const {
  std::vector<int> r;
  const int base = (dp_rank / ep) * ep;
  for (int e = 0; e < ep; ++e) r.push_back(rank_of(pp_rank, base + e));
  return r;
}

std::vector<int> RankGrid::edp_group() const {
  std::vector<int> r;
  for (int d = ep_rank; d < dp; d += ep) r.push_back(rank_of(pp_rank, d));
  return r;
}

}  // namespace moetron
