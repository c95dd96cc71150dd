#!/usr/bin/env bash
# Where the step time goes, per parallel layout and pipeline schedule of configs/tiny.yaml on this
# machine, from the per-rank fields of metrics.jsonl (trainer/step_stats.h): compute, expert
# all-to-all waits inside DualPipe's overlapped pairs and outside them, EP exchanges in flight,
# pipeline idle against the bubble simulate() predicts from the step's measured op costs, ZeRO-1
# communication, optimizer and the rest; and whether the fields add up to the step time. 1f1b,
# zb1p, dualpipe and dualpipev side by side at 4 ranks (PP2 x DP2, EP2) and 8 ranks (PP2 x DP4,
# EP2), the same global batch (32 x 64 tokens) and micro-batch (2), in one run. Ranks are
# oversubscribed on a small box (1 thread each), so absolute times mix in CPU sharing; the split
# is what to read. Then one layout's per-rank breakdown.
# Usage: bench/layouts.sh [STEPS=6] [LAYOUT-FOR-BREAKDOWN=pp2_dp2_ep2_dualpipe]
# SHAPES (environment): the "pp dp ep" shapes, separated by commas (default "2 2 2,2 4 2"; the
# tests' smoke run takes the 4-rank one alone). SET (environment): extra "key=value ..." settings
# for every run (the smoke run narrows the model).
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-6}
DETAIL=${2:-pp2_dp2_ep2_dualpipe}
OUT=build/bench_layouts; rm -rf "$OUT"; mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
extra=(); for kv in ${SET:-}; do extra+=(--set "$kv"); done
layouts=()
IFS=, read -r -a shapes <<< "${SHAPES:-2 2 2,2 4 2}"
for shape in "${shapes[@]}"; do
  for schedule in 1f1b zb1p dualpipe dualpipev; do layouts+=("$shape $schedule"); done
done
for l in "${layouts[@]}"; do
  set -- $l
  name="pp$1_dp$2_ep$3_$4"
  mpirun --oversubscribe --bind-to none --mca btl self,vader -np $(( $1 * $2 )) build/moetron \
    train configs/tiny.yaml --set run.steps="$STEPS" --set run.threads=1 \
    --set data.global_batch_size=32 --set data.micro_batch_size=2 --set parallel.pp=$1 \
    --set parallel.dp=$2 --set parallel.ep=$3 --set parallel.schedule=$4 \
    --set run.dir="$OUT/$name" "${extra[@]}" > "$OUT/$name.log" || { tail "$OUT/$name.log"; exit 1; }
done
/usr/bin/python3 - "$OUT" "$DETAIL" <<'PY'
import json, os, sys
out, detail = sys.argv[1], sys.argv[2]
F = ["compute_s", "ep_wait_pair_s", "ep_wait_single_s", "ep_inflight_s", "pp_idle_s",
     "bubble_pred_s", "dp_comm_s", "optimizer_s", "other_s"]
ADD = ["compute_s", "ep_wait_pair_s", "ep_wait_single_s", "pp_idle_s", "dp_comm_s",
       "optimizer_s", "other_s"]
def load(name):
    return [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl")][2:]  # skip warm-up
print("| layout | ranks | step s | compute | EP wait pair | EP wait single | EP in flight | "
      "PP idle | bubble pred. | DP comm | optimizer | other | sum/step |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
names = sorted((n for n in os.listdir(out) if os.path.isdir(f"{out}/{n}")),
               key=lambda n: (len(n) > 20, n.split("_")[1], n))
for name in names:
    rows = load(name)
    step = sum(r["step_seconds"] for r in rows) / len(rows)
    n = len(rows[0]["compute_s"])
    mean = {f: sum(sum(r[f]) for r in rows) / len(rows) / n for f in F}  # mean over ranks
    worst = max(sum(sum(r[f][k] for f in ADD) for r in rows) / len(rows) / step for k in range(n))
    print(f"| {name} | {n} | {step:.3f} | " + " | ".join(f"{mean[f]:.3f}" for f in F) +
          f" | {worst:.2f} |")
print(f"\nPer rank, {detail} (seconds per step, mean over the measured steps):\n")
rows = load(detail)
n = len(rows[0]["compute_s"])
step = sum(r["step_seconds"] for r in rows) / len(rows)
print("| rank | " + " | ".join(F) + " | sum/step |")
print("|---|" + "---|" * (len(F) + 1))
for k in range(n):
    v = {f: sum(r[f][k] for r in rows) / len(rows) for f in F}
    print(f"| {k} | " + " | ".join(f"{v[f]:.3f}" for f in F) +
          f" | {sum(v[f] for f in ADD) / step:.2f} |")
PY
