#!/usr/bin/env bash
# ZeRO-1's gradient reduce-scatter overlapped with the backward (optimizer.overlap_grad_reduce,
# parallel/zero1.h) against the reduction at the end of the step, side by side in one run, per
# layout of configs/tiny.yaml: the DP communication the step waits for (dp_comm_s: reduce-scatter
# waits + all-gather), the share of gradient elements whose reduction started during the backward
# (dp_early) and the step time; and the overlap with the MPI progress thread
# (parallel.progress_poll_us=200). The three runs alternate, REPEAT times, to spread the machine's
# drift over them. Ranks are oversubscribed on a small box (1 thread each); read the DP columns.
# Usage: bench/dp_overlap.sh [STEPS=6] [REPEAT=2] [BUCKET=1048576]
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-6}
REPEAT=${2:-2}
BUCKET=${3:-1048576}
OUT=build/bench_dp_overlap; rm -rf "$OUT"; mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
layouts=("1 2 1 1f1b" "1 4 1 1f1b" "2 2 1 1f1b" "2 2 1 zb1p" "2 2 2 dualpipe" "2 4 2 zb1p")
for rep in $(seq "$REPEAT"); do
  for l in "${layouts[@]}"; do
    set -- $l
    for ov in off on thread; do
      name="pp$1_dp$2_ep$3_$4.$ov.$rep"
      mpirun --oversubscribe --bind-to none --mca btl self,vader -np $(($1 * $2)) build/moetron \
        train configs/tiny.yaml --set run.steps="$STEPS" --set run.threads=1 \
        --set data.global_batch_size=32 --set data.micro_batch_size=2 --set parallel.pp=$1 \
        --set parallel.dp=$2 --set parallel.ep=$3 --set parallel.schedule=$4 \
        --set optimizer.overlap_grad_reduce=$([ $ov == off ] && echo off || echo on) \
        --set parallel.progress_poll_us=$([ $ov == thread ] && echo 200 || echo 0) \
        --set optimizer.grad_bucket_elements="$BUCKET" \
        --set run.eval_interval=0 --set run.dir="$OUT/$name" > "$OUT/$name.log" \
        || { tail "$OUT/$name.log"; exit 1; }
    done
  done
done
/usr/bin/python3 - "$OUT" "$BUCKET" <<'PY'
import collections, json, os, sys
out, bucket = sys.argv[1], sys.argv[2]
runs = collections.defaultdict(list)  # (layout, on/off) -> steps (warm-up skipped), all repeats
for d in os.listdir(out):
    if os.path.isdir(f"{out}/{d}"):
        layout, ov, _ = d.split(".")
        runs[layout, ov] += [json.loads(l) for l in open(f"{out}/{d}/metrics.jsonl")][2:]
def mean(rows, f):  # over steps and ranks
    return sum(sum(r[f]) / len(r[f]) for r in rows) / len(rows)
print(f"bucket {bucket} elements; seconds per step, mean over ranks and measured steps\n")
print("| layout | ranks | started early | DP comm off | on | hidden | on + thread | hidden | "
      "step off | on | on + thread |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for layout in sorted({k[0] for k in runs}, key=lambda n: (n.split("_")[0], n)):
    on, off, th = runs[layout, "on"], runs[layout, "off"], runs[layout, "thread"]
    dp_on, dp_off, dp_th = mean(on, "dp_comm_s"), mean(off, "dp_comm_s"), mean(th, "dp_comm_s")
    step = lambda rows: sum(r["step_seconds"] for r in rows) / len(rows)
    print(f"| {layout} | {len(on[0]['dp_comm_s'])} | {mean(on, 'dp_early'):.0%} | {dp_off:.4f} | "
          f"{dp_on:.4f} | {1 - dp_on / dp_off:.0%} | {dp_th:.4f} | {1 - dp_th / dp_off:.0%} | "
          f"{step(off):.3f} | {step(on):.3f} | {step(th):.3f} |")
PY
