// The communicators of one rank, made from the rank grid (see grid.h). Every rank creates every
// group in the same order (MPI_Comm_split is collective over the world).
//   pp    the pipeline this rank belongs to (activations and their gradients)
//   dp    the DP ranks of this stage (dense gradients, expert loads, losses)
//   ep    the ranks sharing out this stage's routed experts (token all-to-all)
//   edp   the replicas of this rank's experts (expert gradients)
//   tied  the first and last stage of this pipeline when both hold the embedding (PP > 1 and
//         MTP on): their two copies sum gradients
#pragma once

#include <memory>

#include "parallel/comm.h"
#include "parallel/grid.h"

namespace moetron {

struct ProcessGroups {
  RankGrid grid;
  Communicator* world = nullptr;
  std::unique_ptr<Communicator> pp, dp, ep, edp, tied;

  ProcessGroups(const RankGrid& g, Communicator& w, bool tied_embedding);
};

}  // namespace moetron
