#!/usr/bin/env bash
# Traces (run.trace_steps, parallel/trace.h), through the binary on 4 ranks (PP2 x DP2, EP2):
#  1. 1F1B with steps 3 and 4 traced (step 4 with a validation pass) writes one trace.json that
#     tests/check_trace.py takes: valid JSON, every rank a named process, no dropped events, per
#     rank and step the tiling slices add up to the step within 5 % and the step slice (less its
#     validation) is metrics.jsonl's step_seconds, PP flows matched one to one across ranks;
#  2. the same run untraced writes no trace and the same losses, gradient norms and validation
#     loss, bit for bit (tracing changes no arithmetic);
#  3. DualPipe (PP2 x DP2 x EP2) traced at step 2: the pieces of the overlapped pairs and the
#     F&B ops are in it, and it passes the same checks;
#  4. bench/plot_trace.py renders run 1's timeline and breakdown PNGs.
# Args: MOETRON_BIN BUILD_DIR
set -euo pipefail
BIN=$1; OUT=$2/e2e_trace
rm -rf "$OUT"; mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source tests/small_model.sh
SMALL=("${SMALL_MODEL[@]}" --set data.micro_batch_size=2 --set data.global_batch_size=16
       --set run.eval_interval=4 --set run.eval_batches=2 --set run.sample_interval=0
       --set parallel.pp=2 --set parallel.dp=2 --set parallel.ep=2)
train4() {  # dir steps [--set ...]
  local dir=$1 steps=$2; shift 2
  mpirun --oversubscribe --mca btl self,vader --bind-to none -np 4 "$BIN" train configs/tiny.yaml \
    "${SMALL[@]}" --set run.steps=$steps --set run.dir="$dir" "$@" > "$dir.log" 2>&1 \
    || { cat "$dir.log"; exit 1; }
}
CHECK=(/usr/bin/python3 tests/check_trace.py)

# 1. traced
train4 "$OUT/traced" 5 --set run.trace_steps=[3,4]
grep -q "trace of 2 step(s) written to $OUT/traced/trace.json" "$OUT/traced.log"
"${CHECK[@]}" "$OUT/traced/trace.json" "$OUT/traced/metrics.jsonl" 4 3 4 \
  --expect F --expect B --expect "EP wait dispatch" --expect dispatch --expect "send activation" \
  --expect "recv gradient" --expect "reduce-scatter" --expect all-gather --expect "next batch" \
  --expect validation --expect "wait receives"
echo "ok   1. the traced steps' trace is complete and tiles each step"

# 2. untraced: no file, the same numbers bit for bit
train4 "$OUT/plain" 5
[ ! -e "$OUT/plain/trace.json" ] || { echo "FAIL an untraced run wrote a trace"; exit 1; }
/usr/bin/python3 - "$OUT/traced/metrics.jsonl" "$OUT/plain/metrics.jsonl" <<'PY'
import json, sys
a, b = ([json.loads(l) for l in open(p)] for p in sys.argv[1:])
keys = ["loss", "lm_loss", "mtp_loss", "balance_loss", "grad_norm", "expert_imbalance", "valid_loss"]
assert len(a) == len(b) == 5, (len(a), len(b))
for x, y in zip(a, b):
    for k in keys:
        assert repr(x.get(k)) == repr(y.get(k)), (x["step"], k, x.get(k), y.get(k))
print("losses, gradient norms, imbalance and validation loss identical over", len(a), "steps")
PY
echo "ok   2. tracing changes no number"

# 3. DualPipe: pieces of the overlapped pairs
train4 "$OUT/dualpipe" 3 --set parallel.schedule=dualpipe --set run.trace_steps=[2] \
  --set run.eval_interval=0
"${CHECK[@]}" "$OUT/dualpipe/trace.json" "$OUT/dualpipe/metrics.jsonl" 4 2 \
  --expect "F&B" --expect "F piece" --expect "B piece" --expect "send gradient"
echo "ok   3. DualPipe's pairs are traced piece by piece"

# 4. the plot script
/usr/bin/python3 bench/plot_trace.py "$OUT/traced/trace.json" "$OUT/traced/plot" > "$OUT/plot.log"
for f in timeline breakdown; do
  [ "$(stat -c %s "$OUT/traced/plot_$f.png")" -gt 10000 ] || { echo "FAIL no $f PNG"; exit 1; }
done
echo "ok   4. timeline and breakdown PNGs"
