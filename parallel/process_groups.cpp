// Sub-communicators from the rank grid (see process_groups.h).
#include "parallel/process_groups.h"

namespace moetron {

ProcessGroups::ProcessGroups(const RankGrid& g, Communicator& w, bool tied_embedding)
    : grid(g), world(&w) {
  // color = which group, key = position inside it
  pp = w.split(g.dp_rank, g.pp_rank);
  dp = w.split(g.pp_rank, g.dp_rank);
  ep = w.split(g.pp_rank * g.dp + g.dp_rank / g.ep, g.ep_rank);
  edp = w.split(g.pp_rank * g.ep + g.ep_rank, g.edp_rank);
  const bool end = tied_embedding && g.pp > 1 && (g.pp_rank == 0 || g.pp_rank == g.pp - 1);
  tied = w.split(end ? g.dp_rank : -1, g.pp_rank);
}

}  // namespace moetron
