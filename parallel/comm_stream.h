// A Communicator with NCCL's ordering, over MPI: a GPU run's communication schedule, checked on
// the CPU.
//
// NCCL (comm_nccl.h) differs from MPI in what a caller may rely on: every operation of every
// communicator of a process is enqueued on one communication stream and runs after everything
// posted before it, so a receive whose sender has not yet posted holds back all later operations,
// of any group; point-to-point ignores tags (the k-th send from A to B matches B's k-th receive
// from A); a batch of sends and receives (one ncclGroupStart/End) progresses together. A rank
// that posts, say, a pipeline receive before the send its peer is waiting for deadlocks on NCCL
// and not on MPI. This communicator gives MPI those rules: one worker thread per process runs the
// operations of this communicator and of every split of it, one at a time, each to completion
// (the stream), on the wrapped MPI communicators with one tag (in-order matching); tags_match()
// is false, so callers take their NCCL paths. Non-blocking operations return a Request that
// completes when the worker has run them; blocking ones return when it has (the host is the
// compute stream). A guard run with set_guard_nccl_order(true) carries its device data on it, so
// a schedule that would deadlock NCCL hangs (and the watchdog stops it) on the CPU.
#pragma once

#include <memory>

#include "parallel/comm.h"

namespace moetron {

// A copy of `mpi` (a split: collective over it) in NCCL's order.
std::unique_ptr<Communicator> nccl_ordered_communicator(Communicator& mpi);

// Whether a guard run's device data travels on nccl_ordered_communicator (tests; off by default).
bool guard_nccl_order();
void set_guard_nccl_order(bool on);

}  // namespace moetron
