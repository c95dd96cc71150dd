#!/usr/bin/env bash
# Golden numbers: per-step losses and gradient norms of configs/tiny.yaml for 10 steps at peak LR
# 1e-3 in the fp32, bf16 and fp8 recipes, against tests/golden/tiny_10steps.json, recorded from
# the code before the device-ready core (issue #11) with `tests/e2e_golden.sh BIN BUILD --record`
# and re-recorded once since, when the MTP MoE layer's balance loss and expert loads stopped
# counting the positions without a target (issue #13 item 9: the same runs without the balance
# loss and bias update, or without MTP, were bitwise unchanged; the torch parity test checks the
# new statistics).
# The variants below run the first 5 of the 10 steps.
# A refactor that keeps the arithmetic must keep these: fp32 to 1e-6 relative, bf16 and fp8 to
# 1e-4 (their GEMMs round inputs, so a changed summation order moves more bits). The same runs
# with the recompute of the norms and MLA up-projections (activations.recompute_*) must give the
# same numbers as without: recomputing runs the same ops on the same inputs. Runs with the
# activations kept in bf16 (activations.storage=bf16) may differ by bf16 round-off of what the
# backward reads: their losses must stay within 1e-3 and gradient norms within 1e-2 of fp32
# storage (measured: 1.2e-4 and 1.1e-3).
# The goldens hold the attention core in fp32 products (precision.overrides.attention_core=fp32,
# as every recipe computed it before the core took bf16 operands under bf16 and fp8): every run
# above pins it. The bf16 and fp8 runs with the recipe's own attention core (bf16 products, the
# default) are checked against the pinned goldens to 1e-3 in the loss and 2e-2 in the gradient
# norm (measured: 1.1e-4 / 1.9e-3 for bf16, 4.0e-4 / 7.9e-3 for fp8).
# The goldens are per CPU class (tests/golden_machine.sh: oneDNN's and OpenBLAS's kernels and
# GCC's -march=native differ between classes).
# Args: MOETRON_BIN BUILD_DIR [--record]
set -euo pipefail
BIN=$1; OUT=$2/e2e_golden; MODE=${3:-check}
source tests/golden_machine.sh
golden_file tiny_10steps.json
rm -rf "$OUT"; mkdir -p "$OUT"
RECOMPUTE=(--set activations.recompute_norms=on --set activations.recompute_mla_up=on)
for recipe in fp32 bf16 fp8; do
  for variant in plain recompute bf16store bf16core; do
    extra=(--set precision.overrides.attention_core=fp32)
    [[ $variant == recompute ]] && extra+=("${RECOMPUTE[@]}")
    [[ $variant == bf16store ]] && extra+=(--set activations.storage=bf16)
    [[ $variant == bf16core ]] && extra=()
    [[ $variant != plain && $MODE == --record ]] && continue
    [[ $variant == bf16store && $recipe == fp8 ]] && continue
    [[ $variant == bf16core && $recipe == fp32 ]] && continue
    name=$recipe; steps=10
    [[ $variant != plain ]] && name=$recipe+$variant && steps=5
    "$BIN" train configs/tiny.yaml --set run.steps=$steps --set schedule.lr.peak=1e-3 \
      --set schedule.lr.warmup_steps=2 --set run.threads=1 --set run.eval_interval=0 \
      --set run.log_interval=100 --set precision.recipe=$recipe --set run.dir="$OUT/$name" \
      "${extra[@]}" > "$OUT/$name.log" 2>&1 || { cat "$OUT/$name.log"; exit 1; }
  done
done
/usr/bin/python3 - "$OUT" "$GOLDEN" "$MODE" <<'PY'
import json, sys
out, golden, mode = sys.argv[1:]
import os
runs = {}
for r in ["fp32", "bf16", "fp8", "fp32+recompute", "bf16+recompute", "fp8+recompute",
          "fp32+bf16store", "bf16+bf16store", "bf16+bf16core", "fp8+bf16core"]:
    if not os.path.exists(f"{out}/{r}/metrics.jsonl"):
        continue
    m = [json.loads(l) for l in open(f"{out}/{r}/metrics.jsonl")]
    runs[r] = {"loss": [x["loss"] for x in m], "grad_norm": [x["grad_norm"] for x in m]}
if mode == "--record":
    json.dump(runs, open(golden, "w"), indent=1)
    print(f"recorded {golden}")
    sys.exit(0)
ref = json.load(open(golden))
tol = {"fp32": 1e-6, "bf16": 1e-4, "fp8": 1e-4}
store_tol = {"loss": 1e-3, "grad_norm": 1e-2}  # bf16 activation storage
core_tol = {"loss": 1e-3, "grad_norm": 2e-2}  # the attention core's bf16 products
passed = failed = 0
for r in runs:
    for key in ["loss", "grad_norm"]:
        t = store_tol[key] if r.endswith("+bf16store") else tol[r.split("+")[0]]
        t = core_tol[key] if r.endswith("+bf16core") else t
        a, b = runs[r][key], ref[r.split("+")[0]][key]
        assert len(a) == (5 if "+" in r else 10) and len(b) == 10, f"{r}: {len(a)} steps"
        b = b[:len(a)]
        err = max(abs(x - y) / abs(y) for x, y in zip(a, b))
        ok = err <= t
        print(f"{'ok  ' if ok else 'FAIL'} {r:15s} {key:9s} max rel err {err:.2e} (tol {t:.0e})"
              f"{' bitwise' if a == b else ''}")
        passed += ok; failed += not ok
    if r.endswith("+recompute"):  # recomputing changes no number: equal to the same run without it
        base = runs[r.split("+")[0]]
        same = runs[r] == {k: v[:len(runs[r][k])] for k, v in base.items()}
        print(f"{'ok  ' if same else 'FAIL'} {r:15s} equals {r.split('+')[0]} bit for bit")
        passed += same; failed += not same
print(f"e2e_golden: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
