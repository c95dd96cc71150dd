#!/usr/bin/env bash
# Runs moetron on NP processes of this machine:  launch/local.sh NP train configs/tiny.yaml ...
# Sets what OpenMPI needs on one box: shared-memory transport, oversubscription (more ranks than
# cores), no core binding, and permission to run as root. moetron gives each rank
# cores / local ranks threads unless run.threads says otherwise. MOETRON_BIN overrides the binary.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: launch/local.sh NP moetron-arguments..." >&2
  exit 2
fi
NP=$1; shift
BIN=${MOETRON_BIN:-$(dirname "$0")/../build/moetron}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
unset OMP_NUM_THREADS
exec mpirun -np "$NP" --oversubscribe --bind-to none --mca btl self,vader "$BIN" "$@"
