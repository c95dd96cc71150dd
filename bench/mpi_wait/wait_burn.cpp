// What a waiting MPI rank costs the ranks that compute, on an oversubscribed CPU node: rank 0 runs
// a fixed arithmetic loop while every other rank waits for it in MPI_Recv (how a pipeline rank
// waits for its input, or an EP rank for its partner); rank 0's wall and CPU seconds and the
// waiting ranks' CPU seconds (getrusage: user + system) are printed as one Markdown row. A waiting
// rank that burns CPU takes it from the computing ones once the ranks outnumber the cores. Built
// and run by bench/mpi_wait_burn.sh (not by CMake: it is an MPI program of its own).
#include <mpi.h>
#include <sys/resource.h>

#include <cstdio>
#include <cstdlib>
#include <vector>

namespace {

double cpu_seconds() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_utime.tv_sec + u.ru_stime.tv_sec) +
         1e-6 * static_cast<double>(u.ru_utime.tv_usec + u.ru_stime.tv_usec);
}

double compute(long iterations) {
  double x = 1;
  for (long i = 0; i < iterations; ++i) x = x * 1.0000001 + 1e-9;
  return x;
}

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int rank = 0, size = 1;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  const long iterations = argc > 1 ? std::atol(argv[1]) : 400000000L;
  MPI_Barrier(MPI_COMM_WORLD);
  const double t0 = MPI_Wtime(), c0 = cpu_seconds();
  double x = 0;
  if (rank == 0) {
    x = compute(iterations);
    for (int r = 1; r < size; ++r) MPI_Send(&x, 1, MPI_DOUBLE, r, 0, MPI_COMM_WORLD);
  } else {
    MPI_Recv(&x, 1, MPI_DOUBLE, 0, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
  }
  const double wall = MPI_Wtime() - t0, cpu = cpu_seconds() - c0;
  std::vector<double> all(static_cast<size_t>(size));
  MPI_Gather(&cpu, 1, MPI_DOUBLE, all.data(), 1, MPI_DOUBLE, 0, MPI_COMM_WORLD);
  if (rank == 0) {
    double waiting = 0;
    for (int r = 1; r < size; ++r) waiting += all[static_cast<size_t>(r)];
    std::printf("| %d | %.3f | %.3f | %.3f | %.2f |\n", size, wall, cpu, waiting,
                size > 1 ? waiting / (size - 1) / wall : 0.0);
  }
  MPI_Finalize();
  return x == 0 ? 1 : 0;
}
