#!/usr/bin/env bash
# Before/after of a change to the core, side by side in one run: two moetron binaries (e.g. the
# commit before the change built into /tmp/old, and build/moetron) on the same machine, the runs
# alternated so that load drifts hit both.
#   1. step time: configs/tiny.yaml, 1 rank, 2 threads, per recipe; median tokens/s of steps 3..
#   2. peak RSS per rank: tiny.yaml and small.yaml at PP2 (1F1B) with 8 micro-batches per step
#      (global batch = 8 x micro-batch), 3 steps, 1 thread per rank.
# Usage: bench/core_compare.sh OLD_BIN NEW_BIN [ROUNDS=3] [STEPS=12] [RECIPES="fp32 fp8"]
# OLD_SET / NEW_SET (environment): extra "key=value ..." settings for each side, so one binary
# can be compared with itself under two settings (RSS_CONFIGS: the configs of table 2), e.g.
#   NEW_SET="activations.storage=bf16" bench/core_compare.sh build/moetron build/moetron
# Needs data/cache/sotu (scripts/demo.sh or scripts/test.sh prepare it). Prints two tables.
set -euo pipefail
cd "$(dirname "$0")/.."
OLD=$1; NEW=$2; ROUNDS=${3:-3}; STEPS=${4:-12}; RECIPES=${5:-fp32 fp8}
OUT=build/bench_core_compare; rm -rf "$OUT"; mkdir -p "$OUT"
sets() {  # the --set arguments of side $1
  local s=$OLD_SET; [[ $1 == new ]] && s=$NEW_SET
  for kv in $s; do printf -- '--set\n%s\n' "$kv"; done
}
OLD_SET=${OLD_SET:-}; NEW_SET=${NEW_SET:-}
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
for recipe in $RECIPES; do
  for r in $(seq "$ROUNDS"); do
    for which in old new; do
      bin=$OLD; [[ $which == new ]] && bin=$NEW
      mapfile -t extra < <(sets $which)
      "$bin" train configs/tiny.yaml --set run.steps="$STEPS" --set run.threads=2 \
        --set run.eval_interval=0 --set precision.recipe="$recipe" "${extra[@]}" \
        --set run.dir="$OUT/speed_${recipe}_${which}_$r" > /dev/null
    done
  done
done
for cfg in ${RSS_CONFIGS:-tiny small}; do
  mb=$(grep -E '^\s+micro_batch_size:' configs/$cfg.yaml | awk '{print $2}')
  for which in old new; do
    bin=$OLD; [[ $which == new ]] && bin=$NEW
    mapfile -t extra < <(sets $which)
    mpirun --oversubscribe --mca btl self,vader --bind-to none -np 2 \
      bash -c '/usr/bin/time -f "maxrss_kb %M" -o "$0.$OMPI_COMM_WORLD_RANK" "$@"' \
      "$OUT/rss_${cfg}_${which}" "$bin" train configs/$cfg.yaml --set run.steps=3 --set run.threads=1 \
      --set run.eval_interval=0 --set parallel.pp=2 --set data.global_batch_size=$((8 * mb)) \
      --set run.dir="$OUT/rss_${cfg}_${which}" "${extra[@]}" > "$OUT/rss_${cfg}_${which}.log" 2>&1
  done
done
/usr/bin/python3 - "$OUT" "$ROUNDS" "$RECIPES" "${RSS_CONFIGS:-tiny small}" <<'PY'
import glob, json, statistics, sys
out, rounds, recipes = sys.argv[1], int(sys.argv[2]), sys.argv[3].split()
print("| tiny.yaml, 1 rank, 2 threads | old tokens/s | new tokens/s | new / old |")
print("|---|---:|---:|---:|")
for recipe in recipes:
    rate = {}
    for which in ["old", "new"]:
        v = []
        for r in range(1, rounds + 1):
            rows = [json.loads(l) for l in open(f"{out}/speed_{recipe}_{which}_{r}/metrics.jsonl")]
            v += [x["tokens_per_s"] for x in rows[2:]]
        rate[which] = statistics.median(v)
    print(f"| {recipe} | {rate['old']:,.0f} | {rate['new']:,.0f} | {rate['new'] / rate['old']:.3f} |")
print()
print("| PP2, 8 micro-batches per step | old peak RSS MiB (stage 0 / 1) | new | new / old |")
print("|---|---:|---:|---:|")
for cfg in sys.argv[4].split():
    rss = {}
    for which in ["old", "new"]:
        files = sorted(glob.glob(f"{out}/rss_{cfg}_{which}.*"))
        files = [f for f in files if not f.endswith(".log")]
        rss[which] = [int(open(f).read().split()[-1]) / 1024 for f in files]
    o, n = rss["old"], rss["new"]
    print(f"| {cfg}.yaml | {o[0]:.0f} / {o[1]:.0f} | {n[0]:.0f} / {n[1]:.0f} | "
          f"{sum(n) / sum(o):.2f} |")
PY
