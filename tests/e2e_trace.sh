#!/usr/bin/env bash
# Traces (run.trace_steps, parallel/trace.h), through the binary on 4 ranks (PP2 x DP2, EP2):
#  1. 1F1B with steps 3 and 4 traced (step 4 with a validation pass) writes one trace.json that
#     tests/check_trace.py takes: valid JSON, every rank a named process, no dropped events, per
#     rank and step the tiling slices add up to the step within 5 % and the step slice (less its
#     validation) is metrics.jsonl's step_seconds, PP flows matched one to one across ranks;
#  2. the same run untraced writes no trace and the same losses, gradient norms and validation
#     loss, bit for bit (tracing changes no arithmetic);
#  1b. run 1 also profiles its ops (run.profile_steps, kernels/op_profile.h): every rank writes its
#     totals, the GEMMs carry their FLOPs, the ops' time is within the steps' time, and rank 0 logs
#     the table (run 2 shows the profile changes no number either);
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
train4 "$OUT/traced" 5 --set run.trace_steps=[3,4] --set run.profile_steps=[3,4]
grep -q "trace of 2 step(s) written to $OUT/traced/trace.json" "$OUT/traced.log"
"${CHECK[@]}" "$OUT/traced/trace.json" "$OUT/traced/metrics.jsonl" 4 3 4 \
  --expect F --expect B --expect "EP wait dispatch" --expect dispatch --expect "send activation" \
  --expect "recv gradient" --expect "reduce-scatter" --expect all-gather --expect "next batch" \
  --expect validation --expect "wait receives"
echo "ok   1. the traced steps' trace is complete and tiles each step"
grep -q "op profile of 2 step(s), rank 0 (cpu): ops ran" "$OUT/traced.log" \
  || { echo "FAIL no op profile in the log"; cat "$OUT/traced.log"; exit 1; }
/usr/bin/python3 - "$OUT/traced" <<'PY'
import json, sys
run = sys.argv[1]
steps = [json.loads(l) for l in open(f"{run}/metrics.jsonl")]
for rank in range(4):
    rows = [l.rstrip("\n").split("\t") for l in open(f"{run}/op_profile/rank_{rank}.tsv")]
    assert rows[0] == ["op", "calls", "ms", "share_pct", "ms_per_call", "tflops"], rows[0]
    ops = {r[0]: r for r in rows[1:]}
    share = sum(float(r[3]) for r in rows[1:])
    # the ops of two steps (validation excepted) are within those steps (4 ranks on 2 cores of a
    # model this small spend most of a step waiting for each other: 10-30 % is ops)
    assert 1 < share <= 100.5, (rank, share)
    gemms = [r for r in rows[1:] if "gemm" in r[0] or "lm_head" in r[0]]
    assert gemms and all(float(r[5]) > 0 for r in gemms), (rank, gemms)
    assert all(r[5] == "-" for r in rows[1:] if r not in gemms and "fp8" not in r[0]), rank
    assert int(ops["rmsnorm_forward"][1]) > 0, rank
print("op profile: 4 ranks; ops", ", ".join(f"{r[0]} {r[3]}%" for r in rows[1:4]))
PY
echo "ok   1b. the profiled steps' ops: every rank's totals, GEMM TFLOP/s, within the steps"

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
echo "ok   2. tracing and profiling change no number"

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
