// Sub-communicators from the rank grid (see process_groups.h).
#include "parallel/process_groups.h"

#include <algorithm>

namespace moetron {

Groups::Groups(const RankGrid& g, Communicator& w, bool tied_embedding, bool twins) {
  // color = which group, key = position inside it
  pp = w.split(g.dp_rank, g.pp_rank);
  dp = w.split(g.pp_rank, g.dp_rank);
  ep = w.split(g.pp_rank * g.dp + g.dp_rank / g.ep, g.ep_rank);
  edp = w.split(g.pp_rank * g.ep + g.ep_rank, g.edp_rank);
  const bool end = tied_embedding && g.pp > 1 && (g.pp_rank == 0 || g.pp_rank == g.pp - 1);
  tied = w.split(end ? g.dp_rank : -1, g.pp_rank);
  pp->set_name("pp"), dp->set_name("dp"), ep->set_name("ep"), edp->set_name("edp");
  if (tied) tied->set_name("tied");  // (names for the hang watchdog's messages)
  if (!twins) return;
  const int lower = std::min(g.pp_rank, g.pp - 1 - g.pp_rank);
  const int side = g.pp_rank == lower ? 0 : 1;
  const int edp_size = g.dp / g.ep;
  twin_dp = w.split(lower, side * g.dp + g.dp_rank);
  twin_edp = w.split(lower * g.ep + g.ep_rank, side * edp_size + g.edp_rank);
  twin_dp->set_name("twin_dp"), twin_edp->set_name("twin_edp");
}

ProcessGroups::ProcessGroups(const RankGrid& g, Communicator& w, bool tied_embedding, bool twins,
                             Communicator* dw)
    : grid(g), world(&w), device_world(dw ? dw : &w), host(g, w, tied_embedding, twins) {
  if (dw && dw != &w) own_device_ = Groups(g, *dw, tied_embedding, twins);
}

}  // namespace moetron
