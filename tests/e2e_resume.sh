#!/usr/bin/env bash
# Resume means resume (issue #15, part 6), through the real binary: `--resume auto` in a run
# directory whose checkpoints are all unusable stops with an error listing each one and why, exit
# 1, and the run directory keeps every byte (nothing written, nothing rotated out); newer corrupt
# checkpoints are skipped with one "moetron: warning:" line each; a directory without checkpoints
# still starts fresh; a config indented with a tab names the line.  Args: MOETRON_BIN BUILD_DIR
set -uo pipefail
BIN=$1; OUT=$2/e2e_resume
rm -rf "$OUT"; mkdir -p "$OUT"
source tests/small_model.sh
SMALL=("${SMALL_MODEL[@]}" --set data.micro_batch_size=2 --set data.global_batch_size=4
       --set run.eval_interval=0 --set run.sample_interval=0 --set run.keep_checkpoints=3)
pass=0; fail=0
ok() { echo "ok   $1"; pass=$((pass+1)); }
bad() { echo "FAIL $1"; fail=$((fail+1)); }
train() {  # dir steps [extra...]: stdout+stderr to dir.log, returns the exit status
  local dir=$1 steps=$2; shift 2
  "$BIN" train configs/tiny.yaml "${SMALL[@]}" --set run.steps="$steps" --set run.dir="$dir" "$@" \
    > "$dir.log" 2> "$dir.err"
}
flip() {  # file: one bit flipped in the middle (a corrupt shard)
  python3 - "$1" <<'PY'
import os, sys
with open(sys.argv[1], "r+b") as f:
    at = os.path.getsize(sys.argv[1]) // 2
    f.seek(at); b = f.read(1); f.seek(at); f.write(bytes([b[0] ^ 1]))
PY
}
tree_sum() { (cd "$1" && find . -type f -print0 | sort -z | xargs -0 sha256sum) | sha256sum; }

# 1. three checkpoints (steps 2, 4, 6), all corrupt: an error listing the three, nothing touched
D="$OUT/all_bad"
train "$D" 6 --set run.save_interval=2 || bad "setup run failed: $(cat "$D.err")"
for s in 2 4 6; do flip "$D/checkpoints/step_$s/rank_0.h5"; done
rm -f "$D/checkpoints/step_2/manifest.yaml"  # another reason: an incomplete checkpoint
before=$(tree_sum "$D")
train "$D" 9 --set run.save_interval=1 --resume auto; rc=$?
if [ $rc -eq 1 ] && grep -q "none of the 3 checkpoint(s) in $D/checkpoints is usable" "$D.err" \
   && grep -q "step_6/rank_0.h5: checksum mismatch" "$D.err" \
   && grep -q "step_4/rank_0.h5: checksum mismatch" "$D.err" \
   && grep -q "step_2/manifest.yaml: missing" "$D.err" \
   && ! grep -qv "^moetron: error: " "$D.err" && [ "$(tree_sum "$D")" == "$before" ]; then
  ok "all checkpoints corrupt: exit 1, run.dir unchanged: $(cat "$D.err" | tr '\n' '|')"
else bad "all corrupt: rc $rc: $(cat "$D.err"; ls -R "$D")"; fi

# 2. the two newest corrupt: one warning line each (every line prefixed), resumed from step 2
D="$OUT/two_bad"
train "$D" 6 --set run.save_interval=2 || bad "setup run failed: $(cat "$D.err")"
flip "$D/checkpoints/step_6/rank_0.h5"; flip "$D/checkpoints/step_4/rank_0.h5"
train "$D" 7 --set run.save_interval=100 --resume auto; rc=$?
warn=$(grep -c "skipping checkpoint" "$D.log")
if [ $rc -eq 0 ] && [ "$warn" -eq 2 ] && [ "$(grep -c "^moetron: warning: skipping checkpoint" "$D.log")" -eq 2 ] \
   && grep -q "resumed from .*step_2 (step 2" "$D.log"; then
  ok "newer corrupt checkpoints skipped, one prefixed warning line each"
else bad "two corrupt: rc $rc, $warn warnings: $(cat "$D.log" "$D.err")"; fi

# 3. no checkpoint at all (a new or an empty directory): --resume auto starts fresh
D="$OUT/fresh"
mkdir -p "$D/checkpoints"
if train "$D" 2 --resume auto && grep -q "no checkpoint in $D/checkpoints, starting fresh" "$D.log" \
   && [ "$(wc -l < "$D/metrics.jsonl")" -eq 2 ]; then ok "no checkpoint: a fresh start"
else bad "fresh: $(cat "$D.log" "$D.err")"; fi

# 4. a config indented with a tab names the file and line
printf 'model:\n  hidden_size: 64\n\tvocab_size: 8192\n' > "$OUT/tab.yaml"
msg=$("$BIN" train "$OUT/tab.yaml" 2>&1 >/dev/null); rc=$?
if [ $rc -eq 1 ] && [ "$msg" == "moetron: error: $OUT/tab.yaml: line 3 is indented with a tab; YAML indentation must be spaces" ]; then
  ok "tab indentation: $msg"; else bad "tab: rc $rc: $msg"; fi

echo "e2e_resume: $pass passed, $fail failed"
[ $fail -eq 0 ]
