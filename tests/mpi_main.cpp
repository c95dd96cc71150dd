// GoogleTest main for the multi-rank tests (run under mpirun by CTest). MPI comes up through
// moetron::world(); only rank 0 prints gtest's report; the exit code is non-zero if ANY rank
// failed, so a failure on rank 3 fails the CTest entry.
#include <gtest/gtest.h>

#include "parallel/comm.h"

int main(int argc, char** argv) {
  ::testing::InitGoogleTest(&argc, argv);
  moetron::Communicator& w = moetron::world();
  if (w.rank() != 0) {
    auto& listeners = ::testing::UnitTest::GetInstance()->listeners();
    delete listeners.Release(listeners.default_result_printer());
  }
  int64_t failed = RUN_ALL_TESTS() != 0 ? 1 : 0;
  w.all_reduce(&failed, 1);
  if (w.rank() == 0 && failed)
    std::fprintf(stderr, "mpi_tests: %lld rank(s) failed\n", static_cast<long long>(failed));
  return failed ? 1 : 0;
}
