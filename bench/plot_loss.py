#!/usr/bin/python3
"""Smoothed training-loss curves of several runs, and their relative gaps (docs/fp8.md).

usage: bench/plot_loss.py [--out PNG] [--title T] [--key loss] [--window 50] LABEL=metrics.jsonl ...

The first run is the reference. Each metrics.jsonl (one JSON object per step, from `moetron
train`) gives `key` per step; curves are smoothed with a trailing moving average of `window`
steps (the first steps average what exists). Runs are cut to the steps they all have (so a run
still in progress compares fairly). Printed per run: the mean of the smoothed loss over
the last 20% of the steps and its relative gap to the reference, (run - ref) / ref, in percent
(the V3 report's FP8 target: <= 0.25%), for the total loss and the main next-token loss (lm_loss).
"""
import argparse
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def read(path, key):
    steps, vals = [], []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line:
                continue
            r = json.loads(line)
            if key in r and "step" in r:
                steps.append(r["step"])
                vals.append(float(r[key]))
    return steps, vals


def smooth(v, w):
    out, acc = [], 0.0
    for i, x in enumerate(v):
        acc += x
        if i >= w:
            acc -= v[i - w]
        out.append(acc / min(i + 1, w))
    return out


def tail_mean(v, frac=0.2):
    n = max(1, int(round(len(v) * frac)))
    return sum(v[-n:]) / n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+", help="LABEL=path/to/metrics.jsonl; the first is the reference")
    ap.add_argument("--out", default="docs/fp8_loss.png")
    ap.add_argument("--title", default="")
    ap.add_argument("--key", default="loss")
    ap.add_argument("--window", type=int, default=50)
    a = ap.parse_args()
    runs = [r.split("=", 1) for r in a.runs]
    common = min(len(read(p, a.key)[0]) for _, p in runs)
    fig, (ax, axg) = plt.subplots(2, 1, figsize=(8, 7), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 2]})
    ref = {}
    ref_curve = None
    print(f"{'run':<22} {'steps':>6} {'loss (last 20%)':>16} {'gap':>9} {'lm_loss':>9} {'gap':>9}")
    for i, (label, path) in enumerate(runs):
        row = {}
        for key in (a.key, "lm_loss"):
            steps, vals = read(path, key)
            steps, vals = steps[:common], vals[:common]
            sm = smooth(vals, a.window)
            row[key] = (steps, sm, tail_mean(sm))
        steps, sm, _ = row[a.key]
        ax.plot(steps, sm, label=label, linewidth=1.2)
        if i == 0:
            ref = {k: v[2] for k, v in row.items()}
            ref_curve = sm
        # the smoothed curve's relative gap to the reference, step by step
        axg.plot(steps, [100.0 * (x - r) / r for x, r in zip(sm, ref_curve)], label=label,
                 linewidth=1.0)
        gaps = {k: 100.0 * (row[k][2] - ref[k]) / ref[k] for k in row}
        print(f"{label:<22} {len(steps):>6} {row[a.key][2]:>16.5f} {gaps[a.key]:>+8.3f}% "
              f"{row['lm_loss'][2]:>9.5f} {gaps['lm_loss']:>+8.3f}%")
    axg.set_xlabel("step")
    axg.set_ylabel(f"gap to {runs[0][0]} (%)")
    axg.axhspan(-0.25, 0.25, color="grey", alpha=0.15, label="+-0.25%")
    axg.set_ylim(-1.5, 1.5)
    axg.grid(alpha=0.3)
    axg.legend(fontsize=8, ncol=2)
    ax.set_ylabel(f"{a.key} (moving average over {a.window} steps)")
    ax.set_title(a.title or "training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    lo = min(min(smooth(read(p, a.key)[1][:common], a.window)[common // 5:] or [0]) for _, p in runs)
    ax.set_ylim(bottom=lo * 0.95, top=lo * 1.6)
    fig.tight_layout()
    fig.savefig(a.out, dpi=120)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
