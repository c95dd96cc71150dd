#!/usr/bin/python3
"""Smoothed training-loss curves of several runs, and their relative gaps (docs/fp8.md).

usage: bench/plot_loss.py [--out PNG] [--title T] [--key loss] [--window 50]
                          LABEL=metrics.jsonl[,metrics.jsonl...] ...

The first LABEL is the reference. A LABEL names one variant; its comma-separated metrics.jsonl
files (one JSON object per step, from `moetron train`) are its runs over several seeds, paired by
position with the reference's runs (same seed, same data order). Curves are smoothed with a
trailing moving average of `window` steps (the first steps average what exists), and cut to the
steps all runs have (so runs in progress compare fairly). The measure of a run is the mean of its
smoothed loss over the last 20% of the steps; its gap is (run - ref) / ref in percent against the
reference run of the same seed (the V3 report's FP8 target: |gap| <= 0.25%). Printed per variant:
each seed's gap, then the mean over seeds with its standard deviation and standard error, for the
total loss and the main next-token loss (lm_loss). Plotted: each variant's loss averaged over
seeds, and below it the mean gap curve with a band of +-1 standard error over seeds.
"""
import argparse
import json
import math

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


def mean_sd_se(xs):
    m = sum(xs) / len(xs)
    if len(xs) < 2:
        return m, float("nan"), float("nan")
    sd = math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1))
    return m, sd, sd / math.sqrt(len(xs))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("runs", nargs="+",
                    help="LABEL=metrics.jsonl[,metrics.jsonl...] (one per seed); the first is the reference")
    ap.add_argument("--out", default="docs/fp8_loss.png")
    ap.add_argument("--title", default="")
    ap.add_argument("--key", default="loss")
    ap.add_argument("--window", type=int, default=50)
    a = ap.parse_args()
    variants = []
    for r in a.runs:
        if "=" not in r:
            ap.error(f"{r}: expected LABEL=metrics.jsonl[,...]")
        label, paths = r.split("=", 1)
        variants.append((label, paths.split(",")))
    nseeds = len(variants[0][1])
    for label, paths in variants:
        if len(paths) != nseeds:
            ap.error(f"{label}: {len(paths)} runs, the reference has {nseeds} (runs pair by seed)")
    keys = (a.key, "lm_loss")
    # curves[label][key][seed] = smoothed values, all cut to the common number of steps
    raw = {lbl: {k: [read(p, k) for p in paths] for k in keys} for lbl, paths in variants}
    common = min(len(s) for v in raw.values() for runs in v.values() for s, _ in runs)
    if common == 0:
        raise SystemExit("plot_loss: a run has no steps")
    steps = raw[variants[0][0]][a.key][0][0][:common]
    curves = {lbl: {k: [smooth(vals[:common], a.window) for _, vals in raw[lbl][k]] for k in keys}
              for lbl in raw}
    ref = variants[0][0]

    fig, (ax, axg) = plt.subplots(2, 1, figsize=(8, 7), sharex=True,
                                  gridspec_kw={"height_ratios": [3, 2]})
    print(f"{common} steps, {nseeds} seed(s); gap = (run - {ref}) / {ref} of the smoothed loss, "
          f"mean over the last 20% of the steps")
    print(f"{'run':<34} {'loss':>9} {'gap mean':>9} {'sd':>7} {'se':>7} {'lm gap':>9} "
          f"{'se':>7}  per-seed gaps (loss)")
    for label, _ in variants:
        row = {}
        for k in keys:
            gaps = [100.0 * (tail_mean(c) - tail_mean(r)) / tail_mean(r)
                    for c, r in zip(curves[label][k], curves[ref][k])]
            row[k] = (sum(tail_mean(c) for c in curves[label][k]) / nseeds, gaps, mean_sd_se(gaps))
        loss, gaps, (m, sd, se) = row[a.key]
        _, _, (lm_m, _, lm_se) = row["lm_loss"]
        per_seed = " ".join(f"{g:+.3f}" for g in gaps)
        print(f"{label:<34} {loss:>9.5f} {m:>+8.3f}% {sd:>6.3f}% {se:>6.3f}% {lm_m:>+8.3f}% "
              f"{lm_se:>6.3f}%  {per_seed}")
        mean_curve = [sum(c[i] for c in curves[label][a.key]) / nseeds for i in range(common)]
        line, = ax.plot(steps, mean_curve, label=label, linewidth=1.2)
        # the gap curve step by step: mean over seeds and its standard error
        per_step = [[100.0 * (c[i] - r[i]) / r[i] for c, r in zip(curves[label][a.key],
                                                                   curves[ref][a.key])]
                    for i in range(common)]
        stats = [mean_sd_se(g) for g in per_step]
        gm = [s[0] for s in stats]
        axg.plot(steps, gm, label=label, linewidth=1.0, color=line.get_color())
        if nseeds > 1:
            axg.fill_between(steps, [s[0] - s[2] for s in stats], [s[0] + s[2] for s in stats],
                             color=line.get_color(), alpha=0.15, linewidth=0)
    axg.set_xlabel("step")
    axg.set_ylabel(f"gap to {ref} (%)" + (", mean +- se" if nseeds > 1 else ""))
    axg.axhspan(-0.25, 0.25, color="grey", alpha=0.12, label="+-0.25%")
    axg.set_ylim(-0.75, 0.75)
    axg.grid(alpha=0.3)
    axg.legend(fontsize=8, ncol=2)
    ax.set_ylabel(f"{a.key} (moving average over {a.window} steps"
                  + (f", mean of {nseeds} seeds)" if nseeds > 1 else ")"))
    ax.set_title(a.title or "training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    lo = min(min(c[common // 5:] or [0]) for v in curves.values() for c in v[a.key])
    ax.set_ylim(bottom=lo * 0.95, top=lo * 1.6)
    fig.tight_layout()
    fig.savefig(a.out, dpi=120)
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
