#!/usr/bin/env bash
# The non-finite guard (issue #15 part 1), through the binary on 4 ranks (PP2 x DP2, EP2):
#  1. a NaN injected into one rank's gradient at step 3 (MOETRON_FAULT_NAN, trainer/fault_inject.h)
#     skips that step everywhere: its checkpoint holds the parameters, expert bias and Adam moments
#     of step 2 bit for bit; metrics.jsonl marks it (skipped, bad_ranks [3], bad_steps) and the
#     log names the rank; the run goes on and exits 0, and its final parameters equal, bit for
#     bit, those of a run that resumed from step 2's state at step 3's data position (a run that
#     skipped that update by construction);
#  2. a NaN loss on one rank for 3 steps in a row with run.max_bad_steps=3 stops the run at the
#     third with a clear message and a non-zero exit; no checkpoint of that step; the newest one
#     holds step 1's state; --resume auto continues from it;
#  3. bad values of MOETRON_FAULT_NAN and run.max_bad_steps are refused naming them.
# Args: MOETRON_BIN BUILD_DIR
set -uo pipefail
BIN=$1; OUT=$2/e2e_guard
rm -rf "$OUT"; mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source tests/small_model.sh
SMALL=("${SMALL_MODEL[@]}" --set data.micro_batch_size=2 --set data.global_batch_size=16
       --set run.save_interval=1 --set run.keep_checkpoints=10 --set run.eval_interval=0
       --set run.sample_interval=0)
EQ=(/usr/bin/python3 tests/h5_equal.py)
pass=0; fail=0
ok() { echo "ok   $1"; pass=$((pass+1)); }
bad() { echo "FAIL $1"; fail=$((fail+1)); }
train4() {  # dir steps [extra...]   (MOETRON_FAULT_NAN passed to every rank when set)
  local dir=$1 steps=$2; shift 2
  mpirun --oversubscribe --mca btl self,vader --bind-to none -np 4 -x MOETRON_FAULT_NAN "$BIN" \
    train configs/tiny.yaml "${SMALL[@]}" --set parallel.pp=2 --set parallel.dp=2 \
    --set parallel.ep=2 --set run.steps=$steps --set run.dir="$dir" "$@" > "$dir.log" 2>&1
}
field() {  # metrics.jsonl step field
  /usr/bin/python3 -c "import json,sys; print(json.dumps([json.loads(l) for l in open(sys.argv[1])][int(sys.argv[2]) - 1].get(sys.argv[3])))" "$1/metrics.jsonl" "$2" "$3"
}

# 1. one bad step
A="$OUT/grad"
MOETRON_FAULT_NAN=grad:3:3 train4 "$A" 5 --set run.save_params="$A/params"; rc=$?
if [ $rc -eq 0 ] && [ "$(field "$A" 3 skipped)" == true ] && [ "$(field "$A" 3 bad_ranks)" == "[3]" ] \
   && [ "$(field "$A" 3 grad_norm)" == null ] && [ "$(field "$A" 3 bad_steps)" == 1 ] \
   && [ "$(field "$A" 4 skipped)" == null ] && [ "$(field "$A" 5 bad_steps)" == 1 ] \
   && grep -q "warning: step 3: gradient norm nan (non-finite loss or gradients on rank(s) 3); update skipped" "$A.log"; then
  ok "NaN gradient on rank 3 at step 3: skipped, logged and counted: $(grep -o 'warning: step 3.*' "$A.log" | cut -c1-110)..."
else bad "NaN gradient at step 3: rc $rc, step 3: skipped $(field "$A" 3 skipped) bad_ranks $(field "$A" 3 bad_ranks); $(tail -3 "$A.log")"; fi
if msg=$("${EQ[@]}" ckpt "$A/checkpoints/step_2" "$A/checkpoints/step_3"); then
  ok "the skipped step changed nothing: step_3 == step_2 ($msg: parameters, expert bias, moments)"
else bad "step_3 differs from step_2: $msg"; fi
if ! "${EQ[@]}" ckpt "$A/checkpoints/step_3" "$A/checkpoints/step_4" > /dev/null; then
  ok "the next step updates again (step_4 != step_3)"; else bad "step 4 changed nothing"; fi
# the reference: step 2's state placed at step 3's position (manifest step/tokens/samples of
# step 3), trained on to step 5 without a fault
R="$OUT/ref"; mkdir -p "$R/checkpoints"
cp -r "$A/checkpoints/step_2" "$R/checkpoints/step_3"
for k in step tokens samples; do
  v=$(grep "^$k: " "$A/checkpoints/step_3/manifest.yaml")
  sed -i "s/^$k: .*/$v/" "$R/checkpoints/step_3/manifest.yaml"
done
MOETRON_FAULT_NAN= train4 "$R" 5 --set run.save_params="$R/params" --resume auto; rc=$?
if [ $rc -eq 0 ] && grep -q "resumed from $R/checkpoints/step_3" "$R.log" \
   && msg=$("${EQ[@]}" params "$A/params" "$R/params") \
   && [ "$(tail -2 "$A/metrics.jsonl" | cut -d, -f2)" == "$(cut -d, -f2 "$R/metrics.jsonl")" ]; then
  ok "after the skipped step the run equals one that skipped the update: final parameters ($msg) and losses of steps 4-5"
else bad "reference: rc $rc: ${msg:-} $(tail -2 "$R.log")"; fi

# 2. max_bad_steps in a row stop the run
B="$OUT/halt"
MOETRON_FAULT_NAN=loss:1:2:3 train4 "$B" 8 --set run.max_bad_steps=3; rc=$?
want="training stopped at step 4: 3 steps in a row (2 to 4) had a non-finite loss or gradient norm (run.max_bad_steps = 3)"
if [ $rc -ne 0 ] && grep -q "moetron: error: rank 0: $want.*the newest checkpoint is $B/checkpoints/step_3" "$B.log" \
   && [ "$(wc -l < "$B/metrics.jsonl")" -eq 4 ] && [ "$(field "$B" 4 bad_ranks)" == "[1]" ] \
   && [ ! -e "$B/checkpoints/step_4" ] && [ ! -e "$B/checkpoints/step_4.tmp" ]; then
  ok "3 bad steps in a row stop the run (rc $rc): $(grep -o "rank 0: training stopped.*" "$B.log" | cut -c1-100)..."
else bad "halt: rc $rc: $(tail -3 "$B.log"); $(ls "$B/checkpoints")"; fi
if msg=$("${EQ[@]}" ckpt "$B/checkpoints/step_1" "$B/checkpoints/step_3"); then
  ok "the newest checkpoint after the halt holds step 1's state ($msg)"
else bad "halt: step_3 != step_1: $msg"; fi
MOETRON_FAULT_NAN= train4 "$B" 5 --resume auto; rc=$?
if [ $rc -eq 0 ] && grep -q "resumed from $B/checkpoints/step_3" "$B.log" && [ "$(field "$B" 6 step)" == 5 ]; then
  ok "--resume auto continues from it"; else bad "resume after halt: rc $rc: $(tail -3 "$B.log")"; fi

# 3. bad values
expect_err() {  # name want env args...
  local name=$1 want=$2 env=$3; shift 3
  local msg; msg=$(MOETRON_FAULT_NAN=$env "$BIN" train configs/tiny.yaml "${SMALL[@]}" --set run.steps=2 \
    --set run.dir="$OUT/x_$name" "$@" 2>&1 >/dev/null); local rc=$?
  if [ $rc -ne 0 ] && [[ "$msg" == *"$want"* ]] && [ ! -e "$OUT/x_$name" ]; then ok "$name: $msg"
  else bad "$name: rc $rc: $msg"; fi
}
expect_err fault_what "MOETRON_FAULT_NAN='weights:0:1': WHAT must be grad or loss" weights:0:1
expect_err fault_step "MOETRON_FAULT_NAN='grad:0:0': STEP must be an integer >= 1" grad:0:0
expect_err fault_rank "MOETRON_FAULT_NAN: rank 2 is not a rank of this job (1)" grad:2:1
expect_err max_bad_steps "run.max_bad_steps" "" --set run.max_bad_steps=-1

echo "e2e_guard: $pass passed, $fail failed"
[ $fail -eq 0 ]
