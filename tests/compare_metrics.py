#!/usr/bin/env python3
"""Compare the per-step numbers of two runs' metrics.jsonl files (or a run against a golden list).

A pure refactor must give bit-identical numbers: `compare_metrics.py A/metrics.jsonl
B/metrics.jsonl` exits 1 and names the first step and field that differ unless every step's
numbers — losses, gradient norm, expert imbalance, learning rate and every other number that is
not a timing — are equal as written (metrics.jsonl writes 9 significant digits, so "equal" means
equal to about 1e-9 relative, over a dozen fields per step). `--rtol X` accepts a relative
difference up to X instead.
"""
import json
import sys


# wall-clock fields: they differ between any two runs
TIMINGS = {"tokens_per_s", "step_seconds", "mfu", "mfu_fp8", "elapsed_s", "eta_seconds",
           "tokens_per_s_per_device", "model_tflops_per_device", "device_hours_per_1e12_tokens"}


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def main(argv):
    rtol = 0.0
    if "--rtol" in argv:
        i = argv.index("--rtol")
        rtol = float(argv[i + 1])
        argv = argv[:i] + argv[i + 2:]
    if len(argv) != 2:
        print(__doc__)
        return 2
    a, b = load(argv[0]), load(argv[1])
    if len(a) != len(b):
        print(f"FAIL: {argv[0]} has {len(a)} steps, {argv[1]} has {len(b)}")
        return 1
    worst = 0.0
    for x, y in zip(a, b):
        for key in sorted(set(x) & set(y)):
            u, v = x[key], y[key]
            if key in TIMINGS or not isinstance(u, (int, float)) or not isinstance(v, (int, float)):
                continue
            err = 0.0 if u == v else abs(u - v) / max(abs(v), 1e-300)
            worst = max(worst, err)
            if err > rtol:
                print(f"FAIL: step {x.get('step')} {key}: {u!r} vs {v!r} (rel {err:.3e})")
                return 1
    what = "bit for bit" if worst == 0 else f"max rel diff {worst:.3e} <= {rtol:g}"
    print(f"ok: {len(a)} steps equal {what}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
