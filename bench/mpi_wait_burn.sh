#!/usr/bin/env bash
# What a waiting rank costs on an oversubscribed CPU node (bench/mpi_wait/wait_burn.cpp): rank 0
# computes a fixed loop, the other ranks wait in MPI_Recv, launched as the trainer's benchmarks
# launch it (mpirun --oversubscribe --bind-to none, shared-memory transport); 1 rank, then 2, 3, 5
# and 9. Columns: ranks, rank 0's wall and CPU seconds, the waiting ranks' CPU seconds together,
# and each waiting rank's share of a core. Run it twice or more: other jobs on the box move it.
# Usage: bench/mpi_wait_burn.sh [ITERATIONS=400000000]
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p build
mpicxx -DOMPI_SKIP_MPICXX -O2 -std=c++20 -Wall -Wextra -Werror -o build/mpi_wait_burn bench/mpi_wait/wait_burn.cpp
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
echo "cores: $(nproc), load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
echo "| ranks | rank 0 wall s | rank 0 CPU s | waiting ranks' CPU s | per waiting rank, of a core |"
echo "|---|---|---|---|---|"
for np in 1 2 3 5 9; do
  mpirun --oversubscribe --bind-to none --mca btl self,vader -np "$np" build/mpi_wait_burn "${1:-400000000}"
done
