#!/usr/bin/env bash
# Training throughput of configs/tiny.yaml: moetron vs the same model in PyTorch
# (bench/torch_train.py, tests/torch_ref/deepseek_v3.py), same batch (8 x 128 tokens per
# micro-batch, 2 micro-batches per step), same thread count, on the SOTU tokens, in one run.
# The two are run alternately ROUNDS times; the median per-step rate of each is reported.
# Usage: bench/train_vs_torch.sh [STEPS=12] [THREADS=2] [ROUNDS=2]   (after scripts/demo.sh or
# scripts/test.sh, which prepare data/cache/sotu)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-12}; THREADS=${2:-2}; ROUNDS=${3:-2}
OUT=build/bench_train_vs_torch; rm -rf "$OUT"; mkdir -p "$OUT"
for r in $(seq "$ROUNDS"); do
  build/moetron train configs/tiny.yaml --set run.steps="$STEPS" --set run.threads="$THREADS" \
    --set run.dir="$OUT/moetron_$r" --set run.eval_interval=0 > /dev/null
  /usr/bin/python3 bench/torch_train.py --config configs/tiny.yaml --steps "$STEPS" \
    --micro-batch 8 --seq 128 --grad-accum 2 --threads "$THREADS" \
    --data data/cache/sotu/train/tokens_00000.h5 > "$OUT/torch_$r.log" 2>&1
done
/usr/bin/python3 - "$OUT" "$ROUNDS" "$THREADS" <<'PY'
import json, re, statistics, sys
out, rounds, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3]
m, t = [], []
# per-step rates, warm-up steps skipped; the median resists the stalls a shared 2-core box
# produces now and then
for r in range(1, rounds + 1):
    rows = [json.loads(l) for l in open(f"{out}/moetron_{r}/metrics.jsonl")][2:]
    m += [x["tokens_per_s"] for x in rows]
    log = open(f"{out}/torch_{r}.log").read()
    # torch_train.py already marks its first two steps "(untimed)", which the pattern skips
    ms = [float(v) for v in re.findall(r"([0-9.]+) ms\s*$", log, re.M)]
    t += [8 * 128 * 2 / (v / 1000) for v in ms]
mm, tt = statistics.median(m), statistics.median(t)
print(f"| implementation | tokens/s ({threads} threads, median of {rounds}) |")
print("|---|---|")
print(f"| moetron (C++) | {mm:,.0f} |")
print(f"| PyTorch {__import__('torch').__version__} | {tt:,.0f} |")
print(f"| ratio | {mm / tt:.2f}x |")
PY
