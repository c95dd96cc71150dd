#!/usr/bin/env bash
# `moetron estimate` against measured step times of configs/tiny.yaml on this machine, side by
# side: `moetron probe` measures the CPU's fp32 GEMM peak, copy bandwidth and cores into a
# profile, one layout (the first: DP2 x EP2, one core and one intra-op thread per rank like every
# multi-rank layout — the 1-rank run's two intra-op threads scale worse than the probe's 1024^3
# GEMM on tiny's small ones, so it is predicted, not the anchor) is run and the profile's one GEMM
# factor calibrated on it (`estimate --calibrate`), then every other layout — 1, 2, 4 and 8 ranks, 1f1b, zb1p and
# dualpipe where the layout allows (an even micro-batch count >= 2 x PP) — is run and predicted
# with that profile unchanged. Ranks beyond the cores oversubscribe them (their MPI waits then
# sleep: parallel.wait auto); the estimator prices a busy rank at one core and adds the core wait
# (the node's total compute over its cores). The anchor's measured EP skew (metrics.jsonl's
# ep_imbalance: the busiest EP rank's routed rows over the mean) goes to every estimate as
# --ep-imbalance: the routing at these steps, which the layouts share. Measured: the
# median step_seconds of the second half of the steps: the first half warms up (8 processes on 2
# cores take ~10 steps to settle: 3.6 s, then 1.5, ... 1.0 s from step 11 on; 2 ranks settle after
# one step). Global batch 32 x 128 tokens, micro-batches of 4, fp32. The cores' busy percent in
# the second before each layout starts is a column (other jobs on the box share its cores and move
# the measured times), and a second table puts PP2 1F1B's measured forward and backward per
# micro-batch and stage (metrics.jsonl's op_F_s, op_B_s: one core per stage) beside the
# estimator's, which tests its split of the work between the stages apart from the anchor's level.
# Usage: bench/estimate_vs_measured.sh [STEPS=16] [--table]   (prints a Markdown table; --table:
# no runs, the table again from the last runs' metrics and profile)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-16}
OUT=build/bench_estimate
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
COMMON=(--set data.global_batch_size=32 --set data.micro_batch_size=4 --set run.eval_interval=0
        --set run.sample_interval=0)
# pp dp ep schedule
layouts=("1 2 2 1f1b" "1 1 1 1f1b" "2 1 1 1f1b" "2 1 1 zb1p" "2 1 1 dualpipe"
         "2 2 2 1f1b" "2 2 2 zb1p" "2 2 2 dualpipe" "4 1 1 dualpipe"
         "2 4 2 1f1b" "4 2 2 1f1b")
[ "${2:-}" = --table ] || { rm -rf "$OUT"; mkdir -p "$OUT"; build/moetron probe > "$OUT/cpu-probed.yaml"; }
cpu_busy() {  # percent of the cores busy over the second before a layout starts: other jobs
  local a b t=0 k
  read -ra a < /proc/stat; sleep 1; read -ra b < /proc/stat
  for k in 1 2 3 4 5 6 7 8; do t=$((t + b[k] - a[k])); done
  echo $((100 * (t - (b[4] - a[4]) - (b[5] - a[5])) / (t > 0 ? t : 1)))
}
for l in "${layouts[@]}"; do
  [ "${2:-}" = --table ] && break
  set -- $l
  name="pp$1_dp$2_ep$3_$4"
  cpu_busy > "$OUT/$name.load"
  mpirun --oversubscribe --bind-to none --mca btl self,vader -np $(( $1 * $2 )) build/moetron \
    train configs/tiny.yaml "${COMMON[@]}" --set run.steps="$STEPS" --set parallel.pp=$1 \
    --set parallel.dp=$2 --set parallel.ep=$3 --set parallel.schedule=$4 \
    --set run.dir="$OUT/$name" > "$OUT/$name.log" 2>&1 || { tail "$OUT/$name.log"; exit 1; }
done
/usr/bin/python3 - "$OUT" "${layouts[@]}" <<'PY'
import json, os, statistics, subprocess, sys
out, layouts = sys.argv[1], sys.argv[2:]
COMMON = ["--set", "data.global_batch_size=32", "--set", "data.micro_batch_size=4"]
def measured(name, key="step_seconds"):
    rows = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl")]
    return statistics.median(r[key] for r in rows[len(rows) // 2:])
def estimate(pp, dp, ep, sched, profile, *extra):
    r = subprocess.run(["build/moetron", "estimate", "configs/tiny.yaml", "--hardware", profile,
                        *COMMON, "--set", f"parallel.pp={pp}", "--set", f"parallel.dp={dp}",
                        "--set", f"parallel.ep={ep}", "--set", f"parallel.schedule={sched}",
                        "--ep-imbalance", f"{skew:.6f}", *extra], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout
names = [("pp{}_dp{}_ep{}_{}".format(*l.split()), l.split()) for l in layouts]
# calibrate on the first layout, with its measured EP skew (the busiest EP rank's rows over the
# mean, metrics.jsonl's ep_imbalance) given to every estimate: a property of the routing at these
# steps, the same tokens on every layout
name0, (pp, dp, ep, s) = names[0]
skew = measured(name0, "ep_imbalance")
tps = 32 * 128 / measured(name0) / (int(pp) * int(dp))
cal = estimate(pp, dp, ep, s, f"{out}/cpu-probed.yaml", "--calibrate", str(tps))
eff = cal.splitlines()[0].split("gemm_efficiency: ")[1].split(",")[0]
prof = open(f"{out}/cpu-probed.yaml").read().replace("gemm_efficiency: 1\n", f"gemm_efficiency: {eff}\n")
open(f"{out}/cpu-calibrated.yaml", "w").write(prof)
print(f"profile: {out}/cpu-calibrated.yaml (gemm_efficiency {eff}, calibrated on {name0}; "
      f"--ep-imbalance {skew:.3f} measured there)\n")
print("| layout | ranks | busy before % | measured step s | predicted s | error | pred. compute | exposed EP | bubble | core wait | DP | optimizer |")
print("|---|---|---|---|---|---|---|---|---|---|---|---|")
errs = []
for name, (pp, dp, ep, s) in names:
    m = measured(name)
    e = json.loads(estimate(pp, dp, ep, s, f"{out}/cpu-calibrated.yaml", "--json"))
    p, b = e["step_seconds"], e["breakdown"]
    err = (p - m) / m
    if name != name0: errs.append(abs(err))
    load = open(f"{out}/{name}.load").read().strip() if os.path.exists(f"{out}/{name}.load") else "?"
    print(f"| {name} | {int(pp)*int(dp)} | {load} | {m:.3f} | {p:.3f} | {100*err:+.1f}% | {b['compute_s']:.3f} | "
          f"{b['exposed_ep_s']:.3f} | {b['bubble_s']:.3f} | {b['core_wait_s']:.3f} | {b['dp_s']:.3f} | {b['optimizer_s']:.3f} |")
print(f"\npredicted layouts: mean |error| {100*sum(errs)/len(errs):.1f}%, max {100*max(errs):.1f}%, "
      f"within 20%: {sum(e <= 0.2 for e in errs)} of {len(errs)}")
print("\n| layout | stage | measured F ms | predicted F ms | measured B ms | predicted B ms |")
print("|---|---|---|---|---|---|")
for name, (pp, dp, ep, s) in names:
    if (pp, dp, s) != ("2", "1", "1f1b"):
        continue
    rows = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl")]
    rows = rows[len(rows) // 2:]
    e = json.loads(estimate(pp, dp, ep, s, f"{out}/cpu-calibrated.yaml", "--json"))
    for st in range(2):
        mf = statistics.median(r["op_F_s"][st] for r in rows)
        mb = statistics.median(r["op_B_s"][st] for r in rows)
        pe = e["stages"][st]
        print(f"| {name} | {st} | {1e3*mf:.1f} | {1e3*pe['op_F_s']:.1f} | {1e3*mb:.1f} | {1e3*pe['op_B_s']:.1f} |")
PY
