#!/usr/bin/env bash
# Hang detection (issue #15 part 2; parallel/watchdog.h), 4 ranks (PP2 x DP2, EP2),
# run.comm_timeout_s=10:
#  1. an undisturbed run completes (exit 0): the watchdog never fires on normal waits, and every
#     rank's heartbeat <run.dir>/status/rank_<R>.json ends at the last step;
#  2. SIGSTOP of rank 3 mid-run: the job exits non-zero within comm_timeout_s + 30 s, a rank
#     reports "hang: waited ... in <wait>" with the step, and names rank 3 as the one most behind
#     (its heartbeat stopped); no process of the job is left behind.
# Args: MOETRON_BIN BUILD_DIR
set -uo pipefail
BIN=$1; OUT=$2/e2e_hang
rm -rf "$OUT"; mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source tests/small_model.sh
source tests/rank_procs.sh
TIMEOUT=10  # seconds: well above any normal wait on 2 oversubscribed cores under a parallel ctest
ARGS=("${SMALL_MODEL[@]}" --set data.micro_batch_size=2 --set data.global_batch_size=16
      --set parallel.pp=2 --set parallel.dp=2 --set parallel.ep=2 --set run.eval_interval=0
      --set run.sample_interval=0 --set run.comm_timeout_s=$TIMEOUT)
pass=0; fail=0
ok() { echo "ok   $1"; pass=$((pass+1)); }
bad() { echo "FAIL $1"; fail=$((fail+1)); }
victim=""
cleanup() { [ -n "$victim" ] && kill -KILL "$victim" 2>/dev/null; }
trap cleanup EXIT
launch() {  # dir steps: a 4-rank job in the background ($job)
  timeout 120 mpirun --oversubscribe --mca btl self,vader --bind-to none -np 4 \
    "$BIN" train configs/tiny.yaml "${ARGS[@]}" --set run.steps=$2 --set run.dir="$1" > "$1.log" 2>&1 &
  job=$!
}

# 1. no hang: the watchdog stays quiet; heartbeats end at the last step
D="$OUT/quiet"
launch "$D" 4; wait $job; rc=$?
steps=$(for r in 0 1 2 3; do grep -o '"step":[0-9]*' "$D/status/rank_$r.json" 2>/dev/null; done | sort -u)
if [ $rc -eq 0 ] && [ "$(steps_done "$D")" -eq 4 ] && ! grep -q "hang" "$D.log" && [ "$steps" == '"step":4' ]; then
  ok "an undisturbed run with run.comm_timeout_s=$TIMEOUT completes; all 4 heartbeats end at step 4"
else bad "undisturbed run: rc $rc, steps $(steps_done "$D"), heartbeat steps '$steps': $(tail -3 "$D.log")"; fi

# 2. SIGSTOP of rank 3 after step 2
D="$OUT/stopped"
launch "$D" 1000
for i in $(seq 600); do [ "$(steps_done "$D")" -ge 2 ] && break; sleep 0.1; done
victim=$(rank_pid "$D" 3)
t0=$(date +%s.%N)
kill -STOP "$victim"
wait $job; rc=$?
secs=$(/usr/bin/python3 -c "import time; print(f'{time.time() - $t0:.1f}')")
msg=$(grep -m1 "hang: waited" "$D.log")
within=$(/usr/bin/python3 -c "print(int($secs <= $TIMEOUT + 30))")
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ "$within" == 1 ] \
   && echo "$msg" | grep -Eq "^moetron: error: rank [0-2]: hang: waited [0-9.]+ s \(run.comm_timeout_s $TIMEOUT\) in [a-z_]+ .*\(step [0-9]+, phase [a-z ]+.*\); most behind: rank 3 \(no heartbeat for [0-9.]+ s: stopped, dead or unreachable"; then
  ok "SIGSTOP of rank 3: the job exited $rc after $secs s (run.comm_timeout_s $TIMEOUT): $msg"
else bad "SIGSTOP of rank 3: rc $rc after $secs s: ${msg:-no hang message}: $(tail -5 "$D.log")"; fi
sleep 1
state=$(awk '/^State/ {print $2}' /proc/$victim/status 2>/dev/null)  # Z: dead, not yet reaped
if { [ -z "$state" ] || [ "$state" == Z ]; } && [ -z "$(pgrep -f "run.dir=$D")" ]; then
  ok "no process of the job is left (the stopped rank included)"
else bad "processes left: rank 3 in state '$state'; $(pgrep -af "run.dir=$D")"; fi

echo "e2e_hang: $pass passed, $fail failed"
[ $fail -eq 0 ]
