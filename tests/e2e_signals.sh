#!/usr/bin/env bash
# Stop signals on a real 2-rank mpirun (issue #15 part 7):
#  1. SIGTERM to rank 1 alone (DP2): every rank learns of it at the step's end (the flag is
#     all-reduced each step), the job saves that step's checkpoint and exits 0;
#  2. SIGINT to rank 0 alone (PP2): the same;
#  3. a second SIGTERM while the save is in flight (held open by MOETRON_FAULT_SLOW_SAVE,
#     trainer/fault_inject.h) exits at once (128 + 15) without finishing it: the half-written
#     step_N.tmp is never loaded, and --resume auto uses the previous complete checkpoint.
# Args: MOETRON_BIN BUILD_DIR
set -uo pipefail
BIN=$1; OUT=$2/e2e_signals
rm -rf "$OUT"; mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source tests/small_model.sh
source tests/rank_procs.sh
SMALL=("${SMALL_MODEL[@]}" --set data.micro_batch_size=2 --set data.global_batch_size=16
       --set run.eval_interval=0 --set run.sample_interval=0)
pass=0; fail=0
ok() { echo "ok   $1"; pass=$((pass+1)); }
bad() { echo "FAIL $1"; fail=$((fail+1)); }
launch() {  # dir pp dp steps [extra...]: a 2-rank job in the background ($job)
  local dir=$1 pp=$2 dp=$3 steps=$4; shift 4
  timeout 120 mpirun --oversubscribe --mca btl self,vader --bind-to none -np 2 \
    -x MOETRON_FAULT_SLOW_SAVE "$BIN" train configs/tiny.yaml "${SMALL[@]}" \
    --set parallel.pp=$pp --set parallel.dp=$dp --set run.steps=$steps --set run.dir="$dir" \
    "$@" > "$dir.log" 2>&1 &
  job=$!
}
wait_steps() { for i in $(seq 600); do [ "$(steps_done "$1")" -ge "$2" ] && return; sleep 0.1; done; }

# 1, 2: one signal to one rank
one_signal() {  # name sig rank pp dp
  local D="$OUT/$1" sig=$2 rank=$3
  MOETRON_FAULT_SLOW_SAVE= launch "$D" $4 $5 1000 --set run.save_interval=1000
  wait_steps "$D" 2
  local pid; pid=$(rank_pid "$D" $rank)
  kill -$sig "$pid"
  local k; k=$(steps_done "$D")  # steps written when the signal was sent (or just after)
  wait $job; local rc=$?
  local n; n=$(steps_done "$D")
  if [ $rc -eq 0 ] && grep -q "stopped by signal after step $n" "$D.log" && [ $n -le $((k + 2)) ] \
     && [ -f "$D/checkpoints/step_$n/manifest.yaml" ] \
     && [ "$(ls "$D/checkpoints")" == "step_$n" ]; then
    ok "SIG$sig to rank $rank alone (pp $4 dp $5): signalled after step $k, every rank stopped after step $n, step_$n saved, exit 0"
  else bad "SIG$sig to rank $rank: rc $rc, k $k n $n: $(ls "$D/checkpoints" 2>&1) $(tail -3 "$D.log")"; fi
}
one_signal term TERM 1 1 2
one_signal int INT 0 2 1

# 3. a second signal during the save of step 4 (held open 60 s): immediate exit, nothing partial
D="$OUT/twice"
MOETRON_FAULT_SLOW_SAVE=4:60 launch "$D" 1 2 1000 --set run.save_interval=2
for i in $(seq 600); do [ -f "$D/checkpoints/step_4.tmp/rank_1.h5" ] && break; sleep 0.1; done
sleep 0.5
t0=$(date +%s.%N)
pid=$(rank_pid "$D" 1)
kill -TERM "$pid"; sleep 0.3; kill -TERM "$pid"
wait $job; rc=$?
secs=$(/usr/bin/python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "second stop signal: exiting now without a checkpoint" "$D.log" \
   && grep -Eq "Exit code: +143" "$D.log" \
   && [ ! -f "$D/checkpoints/step_4/manifest.yaml" ] && [ -f "$D/checkpoints/step_2/manifest.yaml" ]; then
  ok "a second SIGTERM during the save of step 4 exits at once (rc $rc after ${secs} s), leaving $(ls "$D/checkpoints" | tr '\n' ' ')"
else bad "second signal: rc $rc after ${secs} s: $(ls "$D/checkpoints") $(tail -5 "$D.log")"; fi
mv "$D.log" "$D.first.log"
MOETRON_FAULT_SLOW_SAVE= launch "$D" 1 2 5 --set run.save_interval=2 --resume auto
wait $job; rc=$?
if [ $rc -eq 0 ] && grep -q "resumed from $D/checkpoints/step_2 " "$D.log" && ! grep -q "warning" "$D.log" \
   && [ -f "$D/checkpoints/step_4/manifest.yaml" ] && [ ! -e "$D/checkpoints/step_4.tmp" ]; then
  ok "--resume auto ignores the partial step_4.tmp, resumes from step_2 and later saves step 4 in full"
else bad "resume after a second signal: rc $rc: $(tail -3 "$D.log")"; fi

echo "e2e_signals: $pass passed, $fail failed"
[ $fail -eq 0 ]
