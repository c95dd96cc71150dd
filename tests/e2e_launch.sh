#!/usr/bin/env bash
# The multi-node launchers: launch/mpirun.sh's dry run on a 2-node hostfile and on --hosts (-np,
# placement, binding, the environment it forwards, parallel.ranks_per_node and the moetron
# arguments in order), launch/slurm.sbatch's dry run from SLURM_NTASKS_PER_NODE and from
# SLURM_TASKS_PER_NODE="8(x2)" (and through mpirun), bad inputs refused with one message and
# exit 2, and a real 2-rank run through launch/mpirun.sh on this machine's loopback (trains the
# small model 2 steps with parallel.dp=2; the effective config has ranks_per_node 2).
# Args: MOETRON_BIN BUILD_DIR
set -uo pipefail
BIN=$1; OUT=$2/e2e_launch
rm -rf "$OUT"; mkdir -p "$OUT"
export MOETRON_BIN=$BIN
unset MOETRON_MPIRUN_ARGS MOETRON_SRUN_ARGS MOETRON_LAUNCHER MOETRON_ROOT OMP_NUM_THREADS
unset SLURM_JOB_NUM_NODES SLURM_NNODES SLURM_NTASKS_PER_NODE SLURM_TASKS_PER_NODE SLURM_NTASKS \
      SLURM_CPUS_PER_TASK SLURM_CPUS_ON_NODE SLURM_JOB_NODELIST
source tests/small_model.sh
pass=0; fail=0
ok() { echo "ok   $1"; pass=$((pass+1)); }
bad() { echo "FAIL $1"; fail=$((fail+1)); }
has() {  # name text needle...: every needle is in text
  local name=$1 text=$2; shift 2
  for n in "$@"; do [[ "$text" == *"$n"* ]] || { bad "$name: no '$n' in: $text"; return; }; done
  ok "$name"
}
refused() {  # name expected-message command...: exit 2, stderr one line with the message
  local name=$1 want=$2 err rc; shift 2
  err=$("$@" 2>&1 >/dev/null); rc=$?
  if [ $rc -eq 2 ] && [ "$(wc -l <<<"$err")" -eq 1 ] && [[ "$err" == *"$want"* ]]; then ok "$name"
  else bad "$name: rc $rc, message: $err"; fi
}

# (a) launch/mpirun.sh dry runs
printf 'nodeA slots=4\nnodeB slots=4\n' > "$OUT/hosts2"
cmd=$(launch/mpirun.sh --hostfile "$OUT/hosts2" --ranks-per-node 2 --dry-run \
      train configs/tiny.yaml --set parallel.dp=4 --set run.steps=3)
echo "     $cmd"
has "mpirun.sh 2-node hostfile: command" "$cmd" "mpirun -np 4 --hostfile $OUT/hosts2 --map-by ppr:2:node" \
    "-x PATH" "$BIN train configs/tiny.yaml --set parallel.dp=4 --set run.steps=3 --set parallel.ranks_per_node=2"
if [[ "$cmd" == *"--map-by ppr:2:node:PE="*" --bind-to core"* || "$cmd" == *"--map-by ppr:2:node --bind-to none"* ]]
then ok "mpirun.sh CPU run binds cores (or none with fewer cores than ranks)"; else bad "binding: $cmd"; fi
cmd=$(launch/mpirun.sh --hostfile "$OUT/hosts2" --ranks-per-node 2 --cores-per-rank 3 --dry-run train x.yaml)
has "mpirun.sh --cores-per-rank 3" "$cmd" "--map-by ppr:2:node:PE=3 --bind-to core"
cmd=$(NCCL_DEBUG=WARN NCCL_IB_HCA=mlx5 OMP_NUM_THREADS=4 launch/mpirun.sh --hosts gpu1,gpu2 \
      --ranks-per-node 8 --gpu --dry-run train configs/deepseek-v3-mid.yaml --set run.steps=1)
echo "     $cmd"
has "mpirun.sh --hosts --gpu: command" "$cmd" "mpirun -np 16 --host gpu1:8,gpu2:8 --map-by ppr:8:node --bind-to none" \
    "-x OMP_NUM_THREADS" "-x CUDA_DEVICE_ORDER=PCI_BUS_ID" "-x NCCL_DEBUG -x NCCL_IB_HCA" \
    "$BIN train configs/deepseek-v3-mid.yaml --set run.steps=1 --set parallel.ranks_per_node=8"
cmd=$(MOETRON_MPIRUN_ARGS="--tag-output" launch/mpirun.sh --hosts localhost --ranks-per-node 2 \
      --dry-run train x.yaml --set=parallel.ranks_per_node=2)
has "mpirun.sh loopback: shared memory, extra options, a matching ranks_per_node kept" "$cmd" \
    "--mca btl self,vader --tag-output $BIN train x.yaml --set=parallel.ranks_per_node=2"
[[ "$cmd" != *"--set parallel.ranks_per_node"* ]] || bad "ranks_per_node added twice: $cmd"
cmd=$(launch/mpirun.sh --hosts gpu1,gpu2 --ranks-per-node 8 --dry-run generate runs/x --prompt "it's")
has "mpirun.sh: no --set for generate, arguments quoted" "$cmd" "$BIN generate runs/x --prompt 'it'\\''s'"
[[ "$cmd" != *ranks_per_node* ]] || bad "ranks_per_node given to generate: $cmd"

# (b) launch/slurm.sbatch dry runs
cmd=$(SLURM_JOB_NUM_NODES=2 SLURM_NTASKS_PER_NODE=8 bash launch/slurm.sbatch --dry-run \
      train configs/deepseek-v3-mid.yaml --set run.steps=2)
echo "     $cmd"
has "slurm.sbatch SLURM_NTASKS_PER_NODE=8, 2 nodes" "$cmd" \
    "srun --mpi=pmix --nodes=2 --ntasks=16 --ntasks-per-node=8 --distribution=block" \
    "CUDA_DEVICE_ORDER=PCI_BUS_ID" \
    "$BIN train configs/deepseek-v3-mid.yaml --set run.steps=2 --set parallel.ranks_per_node=8"
cmd=$(SLURM_JOB_NUM_NODES=2 SLURM_TASKS_PER_NODE="8(x2)" SLURM_CPUS_ON_NODE=64 bash launch/slurm.sbatch \
      --dry-run train configs/deepseek-v3-mid.yaml)
echo "     $cmd"
has "slurm.sbatch SLURM_TASKS_PER_NODE=8(x2)" "$cmd" "--ntasks=16 --ntasks-per-node=8" "--cpus-per-task=8" \
    "$BIN train configs/deepseek-v3-mid.yaml --set parallel.ranks_per_node=8 --set run.threads=8"
cmd=$(SLURM_JOB_NUM_NODES=2 SLURM_TASKS_PER_NODE="4,4" SLURM_CPUS_PER_TASK=6 bash launch/slurm.sbatch \
      --dry-run train c.yaml --set run.threads=2)
has "slurm.sbatch SLURM_TASKS_PER_NODE=4,4, run.threads kept" "$cmd" "--ntasks=8 --ntasks-per-node=4" \
    "--cpus-per-task=6" "train c.yaml --set run.threads=2 --set parallel.ranks_per_node=4"
cmd=$(SLURM_JOB_NUM_NODES=2 SLURM_NTASKS_PER_NODE=8 SLURM_JOB_NODELIST=gpu1,gpu2 MOETRON_LAUNCHER=mpirun \
      bash launch/slurm.sbatch --dry-run train c.yaml)
has "slurm.sbatch MOETRON_LAUNCHER=mpirun" "$cmd" "mpirun -np 16 --host gpu1:8,gpu2:8 --map-by ppr:8:node" \
    "$BIN train c.yaml --set parallel.ranks_per_node=8"

# (c) bad inputs
: > "$OUT/empty"; printf '# nothing\n\n' > "$OUT/comments"; printf 'nodeA slots=1\nnodeB slots=1\n' > "$OUT/few"
M=(launch/mpirun.sh --dry-run)
refused "mpirun.sh: missing hostfile" "hostfile '$OUT/nope' does not exist" \
  "${M[@]}" --hostfile "$OUT/nope" --ranks-per-node 2 train x.yaml
refused "mpirun.sh: empty hostfile" "lists no hosts" "${M[@]}" --hostfile "$OUT/empty" --ranks-per-node 2 train x.yaml
refused "mpirun.sh: hostfile of comments" "lists no hosts" "${M[@]}" --hostfile "$OUT/comments" --ranks-per-node 2 train x.yaml
refused "mpirun.sh: ranks-per-node 0" "--ranks-per-node must be a positive integer, got '0'" \
  "${M[@]}" --hostfile "$OUT/hosts2" --ranks-per-node 0 train x.yaml
refused "mpirun.sh: ranks-per-node abc" "--ranks-per-node must be a positive integer, got 'abc'" \
  "${M[@]}" --hostfile "$OUT/hosts2" --ranks-per-node abc train x.yaml
refused "mpirun.sh: no ranks-per-node" "--ranks-per-node N is required" "${M[@]}" --hostfile "$OUT/hosts2" train x.yaml
refused "mpirun.sh: fewer slots than ranks" "nodeA has slots=1, fewer than --ranks-per-node 2" \
  "${M[@]}" --hostfile "$OUT/few" --ranks-per-node 2 train x.yaml
refused "mpirun.sh: no nodes" "exactly one of --hostfile FILE or --hosts" "${M[@]}" --ranks-per-node 2 train x.yaml
refused "mpirun.sh: a host twice" "--hosts lists a twice" "${M[@]}" --hosts a,b,a --ranks-per-node 2 train x.yaml
refused "mpirun.sh: conflicting ranks_per_node" "set parallel.ranks_per_node=4 but --ranks-per-node is 2" \
  "${M[@]}" --hosts a,b --ranks-per-node 2 train x.yaml --set parallel.ranks_per_node=4
refused "mpirun.sh: unknown option" "unknown option --np" "${M[@]}" --hosts a --ranks-per-node 2 --np 4 train x.yaml
refused "mpirun.sh: no binary" "no moetron binary at $OUT/none" \
  env MOETRON_BIN="$OUT/none" launch/mpirun.sh --hosts localhost --ranks-per-node 2 train x.yaml
refused "slurm.sbatch: outside a job" "not inside a SLURM job" bash launch/slurm.sbatch --dry-run train x.yaml
refused "slurm.sbatch: uneven tasks" "gives nodes different task counts" \
  env SLURM_JOB_NUM_NODES=2 SLURM_TASKS_PER_NODE="8(x1),4" bash launch/slurm.sbatch --dry-run train x.yaml
refused "slurm.sbatch: tasks cover other nodes" "covers 2 nodes, the job has 3" \
  env SLURM_JOB_NUM_NODES=3 SLURM_TASKS_PER_NODE="8(x2)" bash launch/slurm.sbatch --dry-run train x.yaml
refused "slurm.sbatch: ntasks-per-node 0" "SLURM_NTASKS_PER_NODE must be a positive integer, got '0'" \
  env SLURM_JOB_NUM_NODES=2 SLURM_NTASKS_PER_NODE=0 bash launch/slurm.sbatch --dry-run train x.yaml
refused "slurm.sbatch: unknown launcher" "MOETRON_LAUNCHER must be srun or mpirun" \
  env SLURM_JOB_NUM_NODES=1 SLURM_NTASKS_PER_NODE=8 MOETRON_LAUNCHER=ssh bash launch/slurm.sbatch --dry-run train x.yaml

# (d) a real run on the loopback: 2 ranks, DP2, byte-level tokens from the repository's docs
"$BIN" prepare-text --out "$OUT/bytes.h5" README.md docs/*.md > /dev/null
start=$SECONDS
launch/mpirun.sh --hosts localhost --ranks-per-node 2 train configs/tiny.yaml "${SMALL_MODEL[@]}" \
  --set parallel.dp=2 --set run.steps=2 --set data.micro_batch_size=2 --set data.global_batch_size=4 \
  --set data.train_path="$OUT/bytes.h5" --set data.valid_path= --set data.tokenizer= \
  --set model.vocab_size=264 --set run.eval_interval=0 --set run.sample_interval=0 \
  --set run.dir="$OUT/run" > "$OUT/run.log" 2>&1
rc=$?
line=$(grep -m1 "^step 2/2 | loss " "$OUT/run.log")
if [ $rc -eq 0 ] && [ -n "$line" ] && grep -q "2 rank(s) (pp 1 x dp 2" "$OUT/run.log" &&
   grep -q "ranks_per_node: 2" "$OUT/run/config.yaml"; then
  ok "loopback run, 2 ranks DP2 in $((SECONDS - start)) s: $line"
else bad "loopback run: rc $rc, $(tail -5 "$OUT/run.log")"; fi

echo "e2e_launch: $pass passed, $fail failed"
[ $fail -eq 0 ]
