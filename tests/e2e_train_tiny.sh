#!/usr/bin/env bash
# End to end: configs/tiny.yaml trains on the real corpus, the loss falls, metrics.jsonl has every
# field, and the same seed reproduces the run bit for bit.  Args: MOETRON_BIN BUILD_DIR
set -euo pipefail
BIN=$1; OUT=$2/e2e_train_tiny
rm -rf "$OUT"
STEPS=40
common=(--set run.steps=$STEPS --set schedule.lr.warmup_steps=5 --set run.log_interval=10)
"$BIN" train configs/tiny.yaml "${common[@]}" --set run.dir="$OUT/a"
"$BIN" train configs/tiny.yaml "${common[@]}" --set run.dir="$OUT/b" > /dev/null
/usr/bin/python3 - "$OUT" "$STEPS" <<'PY'
import json, sys
out, steps = sys.argv[1], int(sys.argv[2])
a = [json.loads(l) for l in open(f"{out}/a/metrics.jsonl")]
b = [json.loads(l) for l in open(f"{out}/b/metrics.jsonl")]
assert len(a) == steps, f"expected {steps} metric lines, got {len(a)}"
need = {"step", "loss", "lm_loss", "mtp_loss", "balance_loss", "lr", "grad_norm", "tokens",
        "tokens_per_s", "expert_imbalance"}
missing = need - set(a[0])
assert not missing, f"metrics.jsonl lacks {missing}"
first = sum(r["loss"] for r in a[:5]) / 5
last = sum(r["loss"] for r in a[-5:]) / 5
print(f"loss first5 {first:.4f} last5 {last:.4f}")
assert last < first - 1.0, "the loss did not fall by at least 1 nat"
assert [r["loss"] for r in a] == [r["loss"] for r in b], "same seed, different losses"
assert a[-1]["tokens"] == steps * a[0]["tokens"], "token count is not cumulative"
print("e2e_train_tiny: 1 passed, 0 failed")
PY
