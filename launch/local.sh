#!/usr/bin/env bash
# Runs moetron as NP processes on this machine:
#   launch/local.sh NP moetron-arguments...
#   launch/local.sh 4 train configs/tiny.yaml --set parallel.dp=4
# It sets what OpenMPI needs on one box: the shared-memory transport (--mca btl self,vader),
# more ranks than cores allowed (--oversubscribe), no core binding (--bind-to none: moetron gives
# each rank cores / local ranks compute threads itself, from OMPI_COMM_WORLD_LOCAL_SIZE, unless
# run.threads says otherwise — so OMP_NUM_THREADS is unset), and permission to run as root
# (containers). The binary is build/moetron of this checkout unless MOETRON_BIN names another;
# MPIRUN names another mpirun, MOETRON_MPIRUN_ARGS adds options to it (e.g. "--tag-output").
set -euo pipefail
usage() {
  echo "usage: launch/local.sh NP moetron-arguments...   (e.g. launch/local.sh 4 train configs/tiny.yaml)" >&2
  exit 2
}
[ $# -ge 2 ] || usage
NP=$1
shift
[[ "$NP" =~ ^[1-9][0-9]*$ ]] || { echo "launch/local.sh: NP must be a positive integer, got '$NP'" >&2; usage; }
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${MOETRON_BIN:-$ROOT/build/moetron}
if [ ! -x "$BIN" ]; then
  echo "launch/local.sh: no moetron binary at $BIN (build it, or set MOETRON_BIN)" >&2
  exit 2
fi
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
unset OMP_NUM_THREADS
# shellcheck disable=SC2086  # MOETRON_MPIRUN_ARGS is a list of options
exec "${MPIRUN:-mpirun}" -np "$NP" --oversubscribe --bind-to none --mca btl self,vader \
  ${MOETRON_MPIRUN_ARGS:-} "$BIN" "$@"
