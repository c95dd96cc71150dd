// The communicators of one rank, made from the rank grid (see grid.h). Every rank creates every
// group in the same order (MPI_Comm_split is collective over the world).
//   pp    the pipeline this rank belongs to (activations and their gradients)
//   dp    the DP ranks of this stage (dense gradients, expert loads, losses)
//   ep    the ranks sharing out this stage's routed experts (token all-to-all)
//   edp   the replicas of this rank's experts (expert gradients)
//   tied  the first and last stage of this pipeline when both hold the embedding (PP > 1 and
//         MTP on, one stage per rank): their two copies sum gradients
// DualPipe places every stage on two pipeline ranks, r and P-1-r (the twins; SPEC §4.2: their
// gradients are summed). With `twins`, two more groups join the twins:
//   twin_dp   the DP ranks of both twins (2 DP ranks): the dense ZeRO-1 group and the expert
//             loads' sum, so both copies get the same summed gradients, the same update and the
//             same bias update, and each element is owned (and counted) once
//   twin_edp  the expert replicas of both twins (2 EDP ranks): the experts' ZeRO-1 group
// Ranks are ordered lower twin first, so both twins list the same parameters in the same order
// (chunks are built in stage order).
//
// Two sets of these groups, for the two kinds of data (comm_checked.h): `host` over the host
// world (MPI: losses, counts, clocks, norms) and `device()` over the device world (run.device
// memory: activations, EP rows, gradients, parameters, expert loads). On the CPU the device world
// is the host world and device() is `host`; on a GPU it is NCCL's (make_nccl_communicator), split
// by the same colors and keys, so a group has the same members and ranks in both sets.
#pragma once

#include <memory>

#include "parallel/comm.h"
#include "parallel/grid.h"

namespace moetron {

// One set of a rank's groups, split from one world.
struct Groups {
  std::unique_ptr<Communicator> pp, dp, ep, edp, tied, twin_dp, twin_edp;
  Groups() = default;
  Groups(const RankGrid& g, Communicator& w, bool tied_embedding, bool twins);
  // The group dense gradients (and expert loads) reduce over, and the experts' group.
  Communicator& dense_group() const { return twin_dp ? *twin_dp : *dp; }
  Communicator& expert_group() const { return twin_edp ? *twin_edp : *edp; }
};

struct ProcessGroups {
  RankGrid grid;
  Communicator* world = nullptr;         // host data
  Communicator* device_world = nullptr;  // device data (the world itself unless given)
  Groups host;

  // device_world null: device data travels on the host groups (the CPU).
  ProcessGroups(const RankGrid& g, Communicator& w, bool tied_embedding, bool twins = false,
                Communicator* device_world = nullptr);
  const Groups& device() const { return own_device_.pp ? own_device_ : host; }
  // Whether this rank writes what a stage holds once (the lower twin; every rank without twins).
  bool primary_twin() const { return !host.twin_dp || grid.pp_rank <= grid.pp - 1 - grid.pp_rank; }

 private:
  Groups own_device_;  // when the device world is not the host world
};

}  // namespace moetron
