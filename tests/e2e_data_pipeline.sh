#!/usr/bin/env bash
# The data pipeline in training: blended sources, the batch-size ramp, validation loss, and the
# sampler's resume promise. A small model trains 8 steps on two blended sources (weights 3:1)
# while the global batch ramps 8 -> 16 sequences, with the validation loss every 4 steps:
#   ref        1 rank, micro-batch 4
#   pp2dp2     PP2 x DP2 (4 ranks), micro-batch 2: evaluation runs through the pipeline
#   resumed    1 rank for 3 steps with a checkpoint, then resumed on DP2 (2 ranks) to step 8
# All three must read the same samples in the same steps: the same global batch per step, and
# losses, gradient norms and validation losses equal to fp32 round-off (layouts sum in different
# orders; tolerances as in e2e_parallel_equivalence). Running one rank twice must repeat the
# losses bit for bit (prefetching must not change anything).  Args: MOETRON_BIN BUILD_DIR
set -euo pipefail
BIN=$1; OUT=$2/e2e_data_pipeline
rm -rf "$OUT"; mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN=(mpirun --oversubscribe --mca btl self,vader --bind-to none)
DATA=data/cache/sotu
source tests/small_model.sh
SMALL=("${SMALL_MODEL[@]}" --set schedule.lr.peak=1e-3
       --set "data.train_path=3 $DATA/train 1 $DATA/valid" --set data.valid_path=$DATA/valid
       --set data.global_batch_size=16 --set data.batch_ramp_start=8
       --set data.batch_ramp_tokens=1024 --set run.eval_interval=4 --set run.eval_batches=3)
run() {  # name np steps args...
  local name=$1 np=$2 steps=$3; shift 3
  "${MPIRUN[@]}" -np "$np" "$BIN" train configs/tiny.yaml "${SMALL[@]}" --set run.steps=$steps \
    --set run.dir="$OUT/$name" "$@" >> "$OUT/$name.log" 2>&1 || { cat "$OUT/$name.log"; exit 1; }
}
run ref 1 8 --set data.micro_batch_size=4
run ref_again 1 8 --set data.micro_batch_size=4 --set data.prefetch=0
run pp2dp2 4 8 --set data.micro_batch_size=2 --set parallel.pp=2 --set parallel.dp=2
run resumed 1 3 --set data.micro_batch_size=4 --set run.save_interval=3
run resumed 2 8 --set data.micro_batch_size=2 --set parallel.dp=2 --resume auto
grep -q "resumed from .*step_3" "$OUT/resumed.log" || { echo "resumed run did not resume"; exit 1; }
grep -q "weight 0.75" "$OUT/ref.log" || { echo "blend weights not reported"; cat "$OUT/ref.log"; exit 1; }
/usr/bin/python3 - "$OUT" <<'PY'
import json, sys
out = sys.argv[1]
def metrics(name):
    return [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl")]
ref = metrics("ref")
assert [m["step"] for m in ref] == list(range(1, 9)), "ref: expected steps 1..8"
batches = [m["global_batch"] for m in ref]
# ramp 8 -> 16 over 1024 tokens in multiples of 4: 8 + 8 * tokens / 1024 rounded down
tokens, want = 0, []
for _ in range(8):
    b = 16 if tokens >= 1024 else max(4, (8 + 8 * tokens // 1024) // 4 * 4)
    want.append(b); tokens += b * 32
assert batches == want, f"global batches {batches}, expected the ramp {want}"
assert ref[-1]["tokens"] == tokens, (ref[-1]["tokens"], tokens)
evals = [m["step"] for m in ref if "valid_loss" in m]
assert evals == [4, 8], f"validation at steps {evals}, expected [4, 8]"
again = metrics("ref_again")
assert [m["loss"] for m in again] == [m["loss"] for m in ref], "same run, different losses"
assert [m.get("valid_loss") for m in again] == [m.get("valid_loss") for m in ref]
failed = 0
for name in ["pp2dp2", "resumed"]:
    m = metrics(name)
    assert [x["step"] for x in m] == list(range(1, 9)), f"{name}: steps {[x['step'] for x in m]}"
    assert [x["global_batch"] for x in m] == batches, f"{name}: global batches differ"
    rel = lambda a, b: abs(a - b) / abs(b)
    le = max(rel(a["loss"], b["loss"]) for a, b in zip(m, ref))
    ge = max(rel(a["grad_norm"], b["grad_norm"]) for a, b in zip(m, ref))
    ve = max(rel(a["valid_loss"], b["valid_loss"]) for a, b in zip(m, ref) if "valid_loss" in b)
    # (the first half of "resumed" also evaluated at its last step, 3)
    assert all("valid_loss" in a for a, b in zip(m, ref) if "valid_loss" in b), name
    ok = le < 1e-6 and ge < 1e-5 and ve < 1e-6
    failed += not ok
    print(f"{'ok  ' if ok else 'FAIL'} {name:8s} loss rel err {le:.2e}  grad-norm rel err {ge:.2e}"
          f"  valid-loss rel err {ve:.2e}")
print(f"ok   ramp {batches}; validation at steps {evals}: "
      f"{[round(m['valid_loss'], 4) for m in ref if 'valid_loss' in m]}")
sys.exit(1 if failed else 0)
PY
