#!/usr/bin/env bash
# Per-rank step time split into compute, communication (waited for: expert all-to-all, ZeRO-1
# reduce-scatter/all-gather) and pipeline idle (bubble + p2p waits), for each parallel layout
# of configs/tiny.yaml on this machine, with the exposed-communication fraction
# (communication / step time). Ranks are oversubscribed on a 2-core box (1 thread each), so
# absolute times mix in CPU sharing; the split is what to read.
# Usage: bench/layouts.sh [STEPS=6]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-6}
OUT=build/bench_layouts; rm -rf "$OUT"; mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
layouts=("1 1 1 1f1b" "1 2 1 1f1b" "1 2 2 1f1b" "2 1 1 1f1b" "2 1 1 zb1p" "2 2 1 1f1b"
         "2 2 2 zb1p" "2 4 2 1f1b")
for l in "${layouts[@]}"; do
  set -- $l
  name="pp$1_dp$2_ep$3_$4"
  mpirun --oversubscribe --bind-to none --mca btl self,vader -np $(( $1 * $2 )) build/moetron \
    train configs/tiny.yaml --set run.steps="$STEPS" --set run.threads=1 \
    --set data.global_batch_size=32 --set data.micro_batch_size=4 --set parallel.pp=$1 \
    --set parallel.dp=$2 --set parallel.ep=$3 --set parallel.schedule=$4 \
    --set run.dir="$OUT/$name" > /dev/null
done
/usr/bin/python3 - "$OUT" <<'PY'
import json, os, sys
out = sys.argv[1]
print("| layout | ranks | step s | compute s | comm s | idle s | exposed comm | bubble |")
print("|---|---|---|---|---|---|---|---|")
for name in os.listdir(out):
    pass
for name in sorted(os.listdir(out), key=lambda n: (len(n), n)):
    rows = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl")][2:]  # skip warm-up
    step = sum(r["step_seconds"] for r in rows) / len(rows)
    t = [sum(r["rank_times"][i] for r in rows) / len(rows) for i in range(len(rows[0]["rank_times"]))]
    n = len(t) // 3
    comp = sum(t[0::3]) / n; comm = sum(t[1::3]) / n; idle = sum(t[2::3]) / n
    print(f"| {name} | {n} | {step:.3f} | {comp:.3f} | {comm:.3f} | {idle:.3f} | "
          f"{comm / step:.1%} | {idle / step:.1%} |")
PY
