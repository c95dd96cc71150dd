// The NCCL communicator of an MPI group (parallel/comm_nccl.h): NCCL's bootstrap needs one unique
// id, created on one rank and known to all. Rank 0 creates it and the group's own all-gather (the
// Communicator interface has no broadcast; the id is 128 bytes, once per run) carries it to every
// rank, which then constructs its NcclCommunicator with its group rank. No MPI call of its own:
// everything goes through the group's Communicator. Built into moetron_parallel with the CUDA
// backend; the communicator itself (moetron_nccl) does not depend on MPI.
#include <cstring>
#include <string>
#include <vector>

#include "parallel/comm_nccl.h"

namespace moetron {

std::unique_ptr<Communicator> make_nccl_communicator(Communicator& mpi_group,
                                                     const NcclOptions& options) {
  // what every rank contributes: a status byte (1: the id is valid) and an id; only rank 0's
  // block is read. A rank 0 that cannot create an id says so, and every rank throws (no hang).
  constexpr size_t kBlock = 1 + sizeof(ncclUniqueId);
  std::vector<char> mine(kBlock, 0), all(kBlock * mpi_group.size(), 0);
  std::string error;
  if (mpi_group.rank() == 0) {
    try {
      const ncclUniqueId id = NcclCommunicator::unique_id();
      mine[0] = 1;
      std::memcpy(mine.data() + 1, &id, sizeof(id));
    } catch (const CommError& e) {
      error = e.what();
    }
  }
  mpi_group.all_gather(mine.data(), all.data(), kBlock, CommDType::Bytes);
  if (all[0] != 1)
    throw CommError("NCCL bootstrap on rank " + std::to_string(mpi_group.rank()) +
                    ": rank 0 could not create the NCCL unique id" +
                    (error.empty() ? "" : " (" + error + ")"));
  ncclUniqueId id;
  std::memcpy(&id, all.data() + 1, sizeof(id));
  return std::make_unique<NcclCommunicator>(id, mpi_group.size(), mpi_group.rank(), options);
}

}  // namespace moetron
