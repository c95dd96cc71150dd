#!/usr/bin/env bash
# Golden numbers of a parallel layout: configs/tiny.yaml, fp32, 10 steps on PP2 x DP2 x EP2
# (4 ranks, zb1p), every per-step number of metrics.jsonl but the timings equal (to the 9 digits
# it writes) to tests/golden/tiny_10steps_pp2dp2ep2.jsonl, recorded before the refactor of issue
# #12 with `tests/e2e_golden_layout.sh BIN BUILD --record` (re-recorded for issue #13 item 9, the
# MTP balance statistics over S - k positions, like e2e_golden.sh). The one-rank golden is
# e2e_golden.sh.
# The goldens are per CPU class (tests/golden_machine.sh).
# Args: MOETRON_BIN BUILD_DIR [--record]
set -euo pipefail
BIN=$1; OUT=$2/e2e_golden_layout; MODE=${3:-check}
source tests/golden_machine.sh
golden_file tiny_10steps_pp2dp2ep2.jsonl
rm -rf "$OUT"; mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMP_NUM_THREADS=1
mpirun --oversubscribe --mca btl self,vader --bind-to none -np 4 "$BIN" train configs/tiny.yaml \
  --set run.steps=10 --set schedule.lr.peak=1e-3 --set schedule.lr.warmup_steps=2 \
  --set run.threads=1 --set run.eval_interval=0 --set run.log_interval=100 \
  --set parallel.pp=2 --set parallel.dp=2 --set parallel.ep=2 --set parallel.schedule=zb1p \
  --set data.global_batch_size=32 --set run.dir="$OUT/run" > "$OUT/run.log" 2>&1 ||
  { cat "$OUT/run.log"; exit 1; }
if [[ $MODE == --record ]]; then
  /usr/bin/python3 -c '
import json, sys
keep = lambda d: {k: v for k, v in d.items() if k not in ("tokens_per_s", "step_seconds", "rank_times")}
with open(sys.argv[2], "w") as f:
    for l in open(sys.argv[1]):
        f.write(json.dumps(keep(json.loads(l))) + "\n")
print("recorded", sys.argv[2])' "$OUT/run/metrics.jsonl" "$GOLDEN"
  exit 0
fi
/usr/bin/python3 tests/compare_metrics.py "$OUT/run/metrics.jsonl" "$GOLDEN"
