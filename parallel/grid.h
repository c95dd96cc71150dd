// The rank grid: world = PP x DP, with EP dividing DP (ARCHITECTURE contract 5).
//
// rank = pp_stage * DP + dp_rank: the DP ranks of one pipeline stage are adjacent, so an EP group
// (EP consecutive DP ranks) shares a node whenever EP <= ranks_per_node.
//   pp group  : the PP ranks with the same dp_rank (a pipeline)
//   dp group  : the DP ranks of one stage (dense gradients reduce here)
//   ep group  : dp_rank / EP equal — these ranks shard the routed experts among themselves
//   edp group : dp_rank % EP equal — the replicas of the same experts (expert grads reduce here)
// Pure arithmetic, no MPI: communicators are made from these rank lists.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

namespace moetron {

struct LayoutError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct RankGrid {
  int world = 1, pp = 1, dp = 1, ep = 1, ranks_per_node = 0;
  int rank = 0;
  int pp_rank = 0, dp_rank = 0, ep_rank = 0, edp_rank = 0;

  // Validates the layout against the world size; throws LayoutError with a clear message.
  static RankGrid make(int world, int rank, int pp, int dp, int ep, int ranks_per_node);

  int rank_of(int pp_stage, int dp_r) const { return pp_stage * dp + dp_r; }
  std::vector<int> pp_group() const;
  std::vector<int> dp_group() const;
  std::vector<int> ep_group() const;
  std::vector<int> edp_group() const;
  int node_of(int r) const { return ranks_per_node > 0 ? r / ranks_per_node : 0; }
};

}  // namespace moetron
