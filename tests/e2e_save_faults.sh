#!/usr/bin/env bash
# Faults during checkpoint saves (issue #15 part 4), 4 ranks (PP2 x DP2, EP2), a checkpoint every
# 2 steps, a save held open by MOETRON_FAULT_SLOW_SAVE (trainer/fault_inject.h) so that the fault
# lands inside it:
#  1. a rank SIGKILLed while step 4's checkpoint is being written: the job ends non-zero, step_4
#     is only a .tmp, step_2 stays complete; --resume auto uses step_2 and the run then equals the
#     uninterrupted one bit for bit (every later loss, the final parameters of every rank);
#  2. step 4's step_4.tmp removed during its save: the save fails on every rank with a message
#     naming it and the job exits non-zero; step_2 is intact and the next resume uses it (again
#     bit for bit);
#  3. the newest complete checkpoint (step_2) removed while step 4 is being written: the job does
#     not notice beyond it, keeps saving and ends with exit 0 and a complete final checkpoint;
#  4. a crash inside publish() between its two renames (a re-save of step 6 had moved the old
#     step_6 to step_6.old and not yet renamed step_6.tmp in): --resume auto uses step_6.old and
#     the run equals the uninterrupted one bit for bit; the next save removes the stale .tmp.
# A disk that fills up during a save is tests/e2e_checkpoint.sh's case 5b.
# Args: MOETRON_BIN BUILD_DIR
set -uo pipefail
BIN=$1; OUT=$2/e2e_save_faults
rm -rf "$OUT"; mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source tests/small_model.sh
source tests/rank_procs.sh
ARGS=("${SMALL_MODEL[@]}" --set data.micro_batch_size=2 --set data.global_batch_size=16
      --set parallel.pp=2 --set parallel.dp=2 --set parallel.ep=2 --set run.save_interval=2
      --set run.eval_interval=0 --set run.sample_interval=0)
pass=0; fail=0
ok() { echo "ok   $1"; pass=$((pass+1)); }
bad() { echo "FAIL $1"; fail=$((fail+1)); }
run() {  # dir log steps [extra...]
  local dir=$1 log=$2 steps=$3; shift 3
  timeout 120 mpirun --oversubscribe --mca btl self,vader --bind-to none -np 4 \
    -x MOETRON_FAULT_SLOW_SAVE "$BIN" train configs/tiny.yaml "${ARGS[@]}" --set run.steps=$steps \
    --set run.dir="$dir" --set run.save_params="$dir/params" "$@" > "$log" 2>&1
}
wait_shards() { for i in $(seq 1200); do [ "$(ls "$1"/rank_*.h5 2>/dev/null | wc -l)" -eq 4 ] && return; sleep 0.05; done; }
same_as_ref() {  # dir from: the steps logged from line `from` on (the last launch) and the final
  # parameters equal the reference's
  local got; got=$(tail -n +"$2" "$1/metrics.jsonl" | grep -o '"step":[0-9]*,"loss":[^,]*')
  [ -n "$got" ] && [ "$got" == "$(grep -o '"step":[0-9]*,"loss":[^,]*' "$REF/metrics.jsonl" | tail -n "$(echo "$got" | wc -l)")" ] &&
    /usr/bin/python3 tests/h5_equal.py params "$REF/params" "$1/params" > /dev/null
}

REF="$OUT/reference"
MOETRON_FAULT_SLOW_SAVE= run "$REF" "$REF.log" 8 || { echo "reference failed"; tail "$REF.log"; exit 1; }

# 1. a rank killed mid-save
D="$OUT/killed"
MOETRON_FAULT_SLOW_SAVE=4:60 run "$D" "$D.log" 8 & job=$!
wait_shards "$D/checkpoints/step_4.tmp"
kill -KILL "$(rank_pid "$D" 2)"
wait $job; rc=$?
n0=$(wc -l < "$D/metrics.jsonl")
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && [ ! -e "$D/checkpoints/step_4" ] && [ -d "$D/checkpoints/step_4.tmp" ] \
   && [ -f "$D/checkpoints/step_2/manifest.yaml" ]; then
  ok "rank 2 killed while step 4 was being written: job ended (rc $rc), checkpoints: $(ls "$D/checkpoints" | tr '\n' ' ')"
else bad "kill mid-save: rc $rc: $(ls "$D/checkpoints") $(tail -3 "$D.log")"; fi
MOETRON_FAULT_SLOW_SAVE= run "$D" "$D.resume.log" 8 --resume auto; rc=$?
if [ $rc -eq 0 ] && grep -q "resumed from $D/checkpoints/step_2 " "$D.resume.log" && ! grep -q warning "$D.resume.log" \
   && same_as_ref "$D" $((n0 + 1)); then
  ok "the next resume uses step_2 and reproduces the uninterrupted run (steps 3-8, final parameters)"
else bad "resume after a kill mid-save: rc $rc: $(grep -E 'resumed|warning' "$D.resume.log")"; fi

# 2. the .tmp of the save in flight removed
D="$OUT/tmp_removed"
MOETRON_FAULT_SLOW_SAVE=4:3 run "$D" "$D.log" 8 & job=$!
wait_shards "$D/checkpoints/step_4.tmp"
rm -rf "$D/checkpoints/step_4.tmp"
wait $job; rc=$?
n0=$(wc -l < "$D/metrics.jsonl")
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "checkpoint of step 4 failed: .*step_4.tmp" "$D.log" \
   && [ "$(ls "$D/checkpoints")" == step_2 ]; then
  ok "step_4.tmp removed during its save: $(grep -o 'rank 0: checkpoint of step 4 failed.*' "$D.log" | head -1)"
else bad "tmp removed: rc $rc: $(ls "$D/checkpoints") $(grep error "$D.log" | head -3)"; fi
MOETRON_FAULT_SLOW_SAVE= run "$D" "$D.resume.log" 8 --resume auto; rc=$?
if [ $rc -eq 0 ] && grep -q "resumed from $D/checkpoints/step_2 " "$D.resume.log" && same_as_ref "$D" $((n0 + 1)); then
  ok "the next resume uses step_2 and reproduces the uninterrupted run"
else bad "resume after tmp removed: rc $rc: $(grep -E 'resumed|warning' "$D.resume.log")"; fi

# 3. the newest complete checkpoint removed while the next one is written
D="$OUT/newest_removed"
MOETRON_FAULT_SLOW_SAVE=4:2 run "$D" "$D.log" 8 & job=$!
wait_shards "$D/checkpoints/step_4.tmp"
rm -rf "$D/checkpoints/step_2"
wait $job; rc=$?
if [ $rc -eq 0 ] && [ "$(ls "$D/checkpoints" | tr '\n' ' ')" == "step_4 step_6 step_8 " ] \
   && /usr/bin/python3 tests/h5_equal.py params "$REF/params" "$D/params" > /dev/null; then
  ok "step_2 removed while step 4 was being written: the run went on, saved step_4 step_6 step_8, exit 0, same parameters"
else bad "newest removed: rc $rc: $(ls "$D/checkpoints") $(grep error "$D.log" | head -3)"; fi

# 4. a crash between publish()'s renames: step_6.old (complete) and step_6.tmp, no step_6
D="$OUT/publish_crash"; mkdir -p "$D"
cp -r "$REF/checkpoints" "$D/"
rm -rf "$D/checkpoints/step_8"
mv "$D/checkpoints/step_6" "$D/checkpoints/step_6.old"
cp -r "$D/checkpoints/step_6.old" "$D/checkpoints/step_6.tmp"
rm "$D/checkpoints/step_6.tmp/manifest.yaml"  # the new one may still lack its manifest
MOETRON_FAULT_SLOW_SAVE= run "$D" "$D.log" 8 --resume auto; rc=$?
if [ $rc -eq 0 ] && grep -q "resumed from $D/checkpoints/step_6.old " "$D.log" \
   && [ "$(grep -o '"step":[0-9]*,"loss":[^,]*' "$D/metrics.jsonl")" == "$(tail -2 "$REF/metrics.jsonl" | grep -o '"step":[0-9]*,"loss":[^,]*')" ] \
   && /usr/bin/python3 tests/h5_equal.py params "$REF/params" "$D/params" > /dev/null \
   && [ "$(ls "$D/checkpoints" | tr '\n' ' ')" == "step_4 step_6.old step_8 " ]; then
  ok "a crash inside publish(): --resume auto uses step_6.old, steps 7-8 and the parameters equal the uninterrupted run's; kept: $(ls "$D/checkpoints" | tr '\n' ' ')"
else bad "publish crash: rc $rc: $(grep -E 'resumed|warning|error' "$D.log") $(ls "$D/checkpoints")"; fi

echo "e2e_save_faults: $pass passed, $fail failed"
[ $fail -eq 0 ]
