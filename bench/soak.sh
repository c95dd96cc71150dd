#!/usr/bin/env bash
# Crash soak (issue #15 part 3): does a run killed at a random moment resume exactly?
#
# One uninterrupted reference run, then TRIALS trials. Each trial starts the same run (4 ranks:
# PP2 x DP2 with EP2, the small model of tests/small_model.sh, STEPS steps, a checkpoint every
# SAVE steps), waits until rank 0 has logged a random step, SIGKILLs a random rank, waits for
# the job to end (mpirun takes the other ranks down), relaunches it with --resume auto and lets
# it finish. A trial matches when every step the relaunch logged has the reference's loss and
# gradient norm exactly as metrics.jsonl writes them (%.9g), and every rank's final parameters
# (run.save_params, HDF5) are the reference's bit for bit (tests/h5_equal.py). The choices come
# from bash's RANDOM seeded with SEED, so a seed replays the same trials (the moment the kill
# lands inside a step, and therefore which save it interrupts, is the machine's).
#
# Prints one table row per trial: trial, the rank killed, the last step rank 0 logged before the
# job went down, the step the relaunch resumed from (0: no checkpoint yet, a fresh start), the
# steps lost (logged but redone), whether losses and parameters match, and the trial's seconds.
# Exits 1 if a trial does not match.
#
# Usage: bench/soak.sh TRIALS [SEED=15]
#   env: MOETRON_BIN (default build/moetron), SOAK_DIR (default build/soak), STEPS (default 12),
#        SAVE (default 3)
set -uo pipefail
cd "$(dirname "$0")/.."
TRIALS=${1:?usage: bench/soak.sh TRIALS [SEED]}
SEED=${2:-15}
BIN=${MOETRON_BIN:-build/moetron}
OUT=${SOAK_DIR:-build/soak}
STEPS=${STEPS:-12}
SAVE=${SAVE:-3}
rm -rf "$OUT"; mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source tests/small_model.sh
source tests/rank_procs.sh
ARGS=("${SMALL_MODEL[@]}" --set data.micro_batch_size=2 --set data.global_batch_size=16
      --set parallel.pp=2 --set parallel.dp=2 --set parallel.ep=2 --set run.steps=$STEPS
      --set run.save_interval=$SAVE --set run.eval_interval=0 --set run.sample_interval=0)
run() {  # dir log [extra...]: the job, in the foreground unless the caller backgrounds it
  local dir=$1 log=$2; shift 2
  timeout 300 mpirun --oversubscribe --mca btl self,vader --bind-to none -np 4 "$BIN" train \
    configs/tiny.yaml "${ARGS[@]}" --set run.dir="$dir" --set run.save_params="$dir/params" \
    "$@" > "$log" 2>&1
}
# "step loss grad_norm" per line of metrics.jsonl from line $2 on, as written
steps_from() {
  /usr/bin/python3 - "$1/metrics.jsonl" "$2" <<'PY'
import re, sys
for line in open(sys.argv[1]).readlines()[int(sys.argv[2]) - 1:]:
    f = dict(re.findall(r'"(step|loss|grad_norm)":([^,]*)', line))
    print(f["step"], f["loss"], f["grad_norm"])
PY
}

REF="$OUT/reference"
run "$REF" "$REF.log" || { echo "soak: the reference run failed:"; tail -5 "$REF.log"; exit 1; }
steps_from "$REF" 1 > "$REF.steps"

RANDOM=$SEED
printf "%-5s %-4s %-11s %-12s %-10s %-7s %-7s %s\n" trial rank "killed at" "resumed at" "steps lost" losses params seconds
matched=0
for t in $(seq "$TRIALS"); do
  rank=$((RANDOM % 4)); at=$((2 + RANDOM % (STEPS - 4)))  # kill once step `at` is logged: 2..STEPS-3
  D="$OUT/trial_$t"; t0=$SECONDS
  run "$D" "$D.crash.log" & job=$!
  for i in $(seq 3000); do [ "$(steps_done "$D")" -ge 1 ] && break; sleep 0.02; done
  victim=$(rank_pid "$D" $rank)
  for i in $(seq 3000); do [ "$(steps_done "$D")" -ge $at ] && break; sleep 0.01; done
  [ -n "$victim" ] || victim=$(rank_pid "$D" $rank)
  [ -n "$victim" ] && kill -KILL $victim 2>/dev/null || echo "soak: trial $t: rank $rank not found to kill"
  wait $job; crash_rc=$?
  n0=$(steps_done "$D"); killed=$n0  # the last step rank 0 logged before the job went down
  run "$D" "$D.resume.log" --resume auto; rc=$?
  resumed=$(grep -o "resumed from [^ ]*step_[0-9]*" "$D.resume.log" | grep -o "[0-9]*$")
  resumed=${resumed:-0}  # no checkpoint yet: a fresh start
  losses=no; params=no
  if [ $crash_rc -ne 0 ] && [ $rc -eq 0 ]; then
    steps_from "$D" $((n0 + 1)) > "$D.steps"
    if [ -s "$D.steps" ] && [ "$(head -1 "$D.steps" | cut -d' ' -f1)" == $((resumed + 1)) ] \
       && diff -q "$D.steps" <(tail -n +$((resumed + 1)) "$REF.steps") > /dev/null; then losses=yes; fi
    /usr/bin/python3 tests/h5_equal.py params "$REF/params" "$D/params" > "$D.params.txt" && params=yes
  else
    losses="rc $crash_rc/$rc"
  fi
  [ "$losses" == yes ] && [ "$params" == yes ] && matched=$((matched + 1))
  printf "%-5s %-4s %-11s %-12s %-10s %-7s %-7s %s\n" $t $rank $killed $resumed $((killed - resumed)) "$losses" $params $((SECONDS - t0))
done
echo "soak: $matched/$TRIALS trials bitwise equal to the uninterrupted run (seed $SEED, $STEPS steps, a checkpoint every $SAVE, PP2 x DP2 x EP2)"
[ $matched -eq "$TRIALS" ]
