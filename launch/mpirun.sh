#!/usr/bin/env bash
# Runs moetron on several nodes with OpenMPI, N ranks on each:
#   launch/mpirun.sh --hostfile FILE --ranks-per-node N [--gpu] [--dry-run] moetron-arguments...
#   launch/mpirun.sh --hosts node1,node2 --ranks-per-node 8 --gpu train configs/deepseek-v3-mid.yaml
# The nodes come from an OpenMPI hostfile ("nodeA slots=8", one node a line, # comments) or from
# --hosts; -np is nodes x N, placed N per node with --map-by ppr:N:node, so ranks 0..N-1 are on
# the first node, N..2N-1 on the second, and so on: the order moetron's rank grid assumes. The
# launcher tells the grid where the node boundaries are by appending
# --set parallel.ranks_per_node=N to train, plan and dump-grads (it overrides the config file; a
# --set of another value among the arguments is refused). Expert groups and node-limited routing
# (parallel.max_nodes_per_token) depend on it.
#
# Binding. A CPU run binds each rank to its own cores, --map-by ppr:N:node:PE=C --bind-to core,
# with C = --cores-per-rank, by default this machine's physical cores / N (the nodes are assumed
# alike; launch from one of them or give --cores-per-rank); moetron then runs cores / local
# ranks compute threads (run.threads overrides). --cores-per-rank 0, or fewer cores than ranks,
# binds nothing. A --gpu run binds nothing (--bind-to none): a rank's host work is small, and
# which cores are near which GPU depends on the machine (nvidia-smi topo -m), so a fixed rule
# would as often be wrong as right; --cores-per-rank C binds cores anyway, and
# MOETRON_MPIRUN_ARGS="--bind-to numa" (later options win) is the other choice.
#
# GPUs. One mpirun cannot give each rank its own CUDA_VISIBLE_DEVICES, so every rank of a node
# sees the node's GPUs (in PCI bus order: CUDA_DEVICE_ORDER=PCI_BUS_ID) and the convention is
# that rank picks device OMPI_COMM_WORLD_LOCAL_RANK mod the visible device count (SLURM_LOCALID
# under srun, see launch/slurm.sbatch); `moetron train` with run.device cuda takes its node-local
# MPI rank mod the visible count. --gpu prepares that environment.
#
# Environment. Remote ranks get PATH, LD_LIBRARY_PATH, OMP_NUM_THREADS (when set: moetron sets
# its own thread count, so only libraries reading it at start-up see it) and MOETRON_* variables
# (-x); --gpu adds CUDA_DEVICE_ORDER=PCI_BUS_ID, CUDA_VISIBLE_DEVICES when set and every NCCL_*
# variable set here. The checkout, the binary and the data must be at the same paths on every
# node (a shared file system); remote ranks start in this directory.
#
# Transports are OpenMPI's defaults (UCX/InfiniBand or TCP, whatever it finds), except that a
# run on this machine alone (the only host is localhost, 127.0.0.1 or this host's name) gets
# --mca btl self,vader like launch/local.sh. MOETRON_MPIRUN_ARGS adds options after the
# launcher's own (they win: e.g. "--mca btl_tcp_if_include eth0" or "--tag-output"; a btl
# setting there replaces the loopback one). The binary is build/moetron of this checkout unless
# MOETRON_BIN names another, MPIRUN names another mpirun; as root, OMPI_ALLOW_RUN_AS_ROOT is set
# (containers). --dry-run prints the mpirun command, shell-quoted on one line, and runs nothing.
set -euo pipefail
ME=launch/mpirun.sh
usage() {
  echo "usage: $ME (--hostfile FILE | --hosts h1,h2,...) --ranks-per-node N [--cores-per-rank C]" \
       "[--gpu] [--dry-run] moetron-arguments...   (e.g. $ME --hosts n1,n2 --ranks-per-node 8" \
       "train configs/tiny.yaml)" >&2
  exit 2
}
die() {
  echo "$ME: $*" >&2
  exit 2
}
need_value() { if [ $# -lt 2 ] || [ -z "$2" ]; then die "$1 needs a value"; fi; }

HOSTFILE="" HOSTS="" RPN="" CPR="" DRY=0 GPU=0 HAVE_HOSTFILE=0 HAVE_HOSTS=0
while [ $# -gt 0 ]; do
  case $1 in
    --hostfile) need_value "$@"; HOSTFILE=$2; HAVE_HOSTFILE=1; shift 2 ;;
    --hostfile=*) HOSTFILE=${1#*=}; HAVE_HOSTFILE=1; shift ;;
    --hosts) need_value "$@"; HOSTS=$2; HAVE_HOSTS=1; shift 2 ;;
    --hosts=*) HOSTS=${1#*=}; HAVE_HOSTS=1; shift ;;
    --ranks-per-node) need_value "$@"; RPN=$2; shift 2 ;;
    --ranks-per-node=*) RPN=${1#*=}; shift ;;
    --cores-per-rank) need_value "$@"; CPR=$2; shift 2 ;;
    --cores-per-rank=*) CPR=${1#*=}; shift ;;
    --gpu) GPU=1; shift ;;
    --dry-run) DRY=1; shift ;;
    -h | --help) usage ;;
    --) shift; break ;;
    -*) die "unknown option $1 (the launcher's options come before the moetron command)" ;;
    *) break ;;
  esac
done
[ $# -ge 1 ] || { echo "$ME: no moetron arguments (e.g. train configs/tiny.yaml)" >&2; usage; }
[ $((HAVE_HOSTFILE + HAVE_HOSTS)) -eq 1 ] ||
  die "give the nodes with exactly one of --hostfile FILE or --hosts h1,h2,..."
[ -n "$RPN" ] || die "--ranks-per-node N is required (the ranks on each node, e.g. its GPU count)"
[[ "$RPN" =~ ^[1-9][0-9]*$ ]] || die "--ranks-per-node must be a positive integer, got '$RPN'"
[ -z "$CPR" ] || [[ "$CPR" =~ ^[0-9]+$ ]] ||
  die "--cores-per-rank must be a non-negative integer, got '$CPR'"

# The nodes: NAMES in order, and for a hostfile the slots each one offers (0: not given).
NAMES=() SLOTS=()
if [ $HAVE_HOSTFILE = 1 ]; then
  [ -e "$HOSTFILE" ] || die "hostfile '$HOSTFILE' does not exist"
  if [ ! -f "$HOSTFILE" ] || [ ! -r "$HOSTFILE" ]; then die "hostfile '$HOSTFILE' is not a readable file"; fi
  # one "name slots" line per distinct host; a host on several lines adds its slots (as OpenMPI)
  while read -r name slots; do NAMES+=("$name"); SLOTS+=("$slots"); done < <(awk '
    { sub(/#.*/, "") }
    NF == 0 { next }
    { s = 0; for (i = 2; i <= NF; i++) if ($i ~ /^slots=[0-9]+$/) s = substr($i, 7) + 0
      if (!($1 in slots)) order[n++] = $1
      slots[$1] += s }
    END { for (i = 0; i < n; i++) print order[i], slots[order[i]] }' "$HOSTFILE")
  [ ${#NAMES[@]} -gt 0 ] || die "hostfile '$HOSTFILE' lists no hosts (one per line: 'nodeA slots=$RPN')"
  for i in "${!NAMES[@]}"; do
    [ "${SLOTS[$i]}" = 0 ] || [ "${SLOTS[$i]}" -ge "$RPN" ] ||
      die "hostfile '$HOSTFILE': ${NAMES[$i]} has slots=${SLOTS[$i]}, fewer than --ranks-per-node $RPN"
  done
  HOST_ARGS=(--hostfile "$HOSTFILE")
else
  IFS=, read -ra NAMES <<< "$HOSTS"
  [ ${#NAMES[@]} -gt 0 ] || die "--hosts lists no hosts (e.g. --hosts node1,node2)"
  spec=""
  for name in "${NAMES[@]}"; do
    [[ "$name" =~ ^[A-Za-z0-9._-]+$ ]] ||
      die "--hosts takes host names separated by commas (the slots are --ranks-per-node), got '$HOSTS'"
    [[ ",$spec" != *",$name:"* ]] || die "--hosts lists $name twice"
    spec+="${spec:+,}$name:$RPN"
  done
  HOST_ARGS=(--host "$spec")
fi
NODES=${#NAMES[@]}
NP=$((NODES * RPN))

# Binding (see the header).
if [ -z "$CPR" ]; then
  if [ $GPU = 1 ]; then
    CPR=0
  else
    cores=$(lscpu -p=Core,Socket 2>/dev/null | grep -v '^#' | sort -u | wc -l || true)
    [ "${cores:-0}" -gt 0 ] || cores=$(nproc)
    CPR=$((cores / RPN))
  fi
fi
if [ "$CPR" -gt 0 ]; then
  MAP_ARGS=(--map-by "ppr:$RPN:node:PE=$CPR" --bind-to core)
else
  MAP_ARGS=(--map-by "ppr:$RPN:node" --bind-to none)
fi

# The environment remote ranks need.
ENV_ARGS=(-x PATH)
[ -z "${LD_LIBRARY_PATH:-}" ] || ENV_ARGS+=(-x LD_LIBRARY_PATH)
[ -z "${OMP_NUM_THREADS:-}" ] || ENV_ARGS+=(-x OMP_NUM_THREADS)
for v in $(compgen -e | grep '^MOETRON_' | sort); do
  case $v in MOETRON_BIN | MOETRON_MPIRUN_ARGS | MOETRON_LAUNCHER | MOETRON_ROOT) ;; *) ENV_ARGS+=(-x "$v") ;; esac
done
if [ $GPU = 1 ]; then
  ENV_ARGS+=(-x CUDA_DEVICE_ORDER=PCI_BUS_ID)
  [ -z "${CUDA_VISIBLE_DEVICES+x}" ] || ENV_ARGS+=(-x CUDA_VISIBLE_DEVICES)
  for v in $(compgen -e | grep '^NCCL_' | sort); do ENV_ARGS+=(-x "$v"); done
fi

# Options from MOETRON_MPIRUN_ARGS (words; they come last, so they win).
read -ra EXTRA <<< "${MOETRON_MPIRUN_ARGS:-}"
LOOP_ARGS=()
if [ "$NODES" = 1 ]; then
  case ${NAMES[0]} in
    localhost | 127.0.0.1 | "$(hostname)" | "$(hostname -s 2>/dev/null || hostname)")
      [[ " ${EXTRA[*]:-} " =~ [[:space:]]-?-mca[[:space:]]+btl[[:space:]] ]] ||
        LOOP_ARGS=(--mca btl "self,vader") ;;
  esac
fi

# moetron's arguments, then the node boundary for the commands that build a rank grid.
ARGS=("$@")
case $1 in
  train | plan | dump-grads)
    given="" prev=""
    for a in "$@"; do
      if [ "$prev" = --set ] && [[ $a == parallel.ranks_per_node=* ]]; then given=${a#*=}
      elif [[ $a == --set=parallel.ranks_per_node=* ]]; then given=${a#--set=parallel.ranks_per_node=}
      fi
      prev=$a
    done
    if [ -z "$given" ]; then
      ARGS+=(--set "parallel.ranks_per_node=$RPN")
    elif ! [[ "$given" =~ ^[0-9]+$ ]] || [ "$given" -ne "$RPN" ]; then
      die "the moetron arguments set parallel.ranks_per_node=$given but --ranks-per-node is $RPN" \
          "(the rank grid must know the real node boundary; drop the --set, the launcher adds it)"
    fi ;;
esac

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN=${MOETRON_BIN:-$ROOT/build/moetron}
MPIRUN=${MPIRUN:-mpirun}
CMD=("$MPIRUN" -np "$NP" "${HOST_ARGS[@]}" "${MAP_ARGS[@]}" "${ENV_ARGS[@]}"
     ${LOOP_ARGS[@]+"${LOOP_ARGS[@]}"} ${EXTRA[@]+"${EXTRA[@]}"} "$BIN" "${ARGS[@]}")
if [ $DRY = 1 ]; then  # words of safe characters bare, others in single quotes
  line=""
  for w in "${CMD[@]}"; do
    [[ "$w" =~ ^[A-Za-z0-9_@%+=:,./-]+$ ]] || w="'${w//\'/\'\\\'\'}'"
    line+="${line:+ }$w"
  done
  echo "$line"
  exit 0
fi
[ -x "$BIN" ] || die "no moetron binary at $BIN (build it, or set MOETRON_BIN)"
command -v "$MPIRUN" > /dev/null || die "no $MPIRUN on PATH (install openmpi-bin, or set MPIRUN)"
[ "$(id -u)" != 0 ] || export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
exec "${CMD[@]}"
