"""Renders a merged moetron trace (run.trace_steps; <run.dir>/trace.json) as two PNGs:

  PREFIX_timeline.png   one band per rank: compute ops (the pieces of a pair in F / B colours
                        below, EP waits inside them in red), PP waits, the executor's progress,
                        optimizer / data / host slices, and beside them the in-flight EP
                        exchanges, PP messages (an arrow from each send to its receive) and ZeRO
                        bucket collectives, over one traced step
  PREFIX_breakdown.png  per rank, where the traced steps' time went: compute, EP waits, PP waits,
                        the executor's posts and progress between ops, ZeRO-1 collectives, the
                        rest of the optimizer, data, host, and what no slice covers

Usage: /usr/bin/python3 bench/plot_trace.py TRACE.json PREFIX [--step N] [--title TEXT]
(matplotlib; the python3 on PATH may lack it). Perfetto (ui.perfetto.dev) opens TRACE.json itself.
"""
import argparse
import collections
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

OP_COLOURS = {"F": "#4c78a8", "B": "#54a24b", "BI": "#88d27a", "W": "#b79a20", "F&B": "#8e6bbf"}
PART_COLOURS = {"compute": "#4c78a8", "EP wait": "#e45756", "PP wait": "#bab0ac",
                "progress": "#d4a6c8", "DP collectives": "#f58518", "optimizer": "#eeca3b", "data": "#72b7b2",
                "host": "#9d755d", "uncovered": "#ffffff"}


def load(path):
    with open(path) as f:
        doc = json.load(f)
    ev = doc["traceEvents"]
    procs = {e["pid"]: e["args"]["name"] for e in ev
             if e["ph"] == "M" and e["name"] == "process_name"}
    threads = {(e["pid"], e["tid"]): e["args"]["name"] for e in ev
               if e["ph"] == "M" and e["name"] == "thread_name"}
    xs = [dict(e, track=threads[(e["pid"], e["tid"])]) for e in ev if e["ph"] == "X"]
    flows = collections.defaultdict(dict)
    for e in ev:
        if e["ph"] in "sf":
            flows[e["id"]][e["ph"]] = e
    return procs, xs, [f for f in flows.values() if len(f) == 2]


def steps_of(xs):
    return sorted({e["args"]["step"] for e in xs if e["cat"] == "step"})


def window(xs, pid, step):
    for e in xs:
        if e["cat"] == "step" and e["pid"] == pid and e["args"]["step"] == step:
            return e["ts"], e["ts"] + e["dur"]
    raise SystemExit(f"no step {step} on rank {pid}")


def inside(e, t0, t1):
    return e["ts"] < t1 and e["ts"] + e["dur"] > t0


def clipped(e, t0, t1):
    return max(0.0, min(e["ts"] + e["dur"], t1) - max(e["ts"], t0))


def breakdown(xs, pid, t0, t1):
    """Seconds per part of one rank's step window (the parts tile it, as step_stats does). DP
    collectives: the part of the DP buckets' flight inside the optimizer's slices (what the step
    waits for there; a bucket started during the backward is hidden behind it until then)."""
    out = collections.Counter()
    opt = [(max(e["ts"], t0), min(e["ts"] + e["dur"], t1)) for e in xs
           if e["pid"] == pid and inside(e, t0, t1) and e["cat"] == "part" and e["track"] == "optimizer"]
    for e in xs:
        if e["pid"] != pid or not inside(e, t0, t1):
            continue
        d = clipped(e, t0, t1) * 1e-6
        track, cat = e["track"].rstrip("0123456789 "), e["cat"]  # "dp 2": lane 2 of dp
        if cat == "part":
            part = {"compute": "compute", "pp wait": "PP wait", "progress": "progress", "data": "data",
                    "optimizer": "optimizer", "host": "host"}[e["track"]]
            out[part] += d
        elif cat == "detail" and e["name"].startswith("EP wait"):
            out["EP wait"] += d
            out["compute"] -= d
    # the union of the buckets in flight (several at once: lanes), within the optimizer's slices
    dp = sorted((e["ts"], e["ts"] + e["dur"]) for e in xs if e["pid"] == pid and inside(e, t0, t1)
                and e["cat"] == "comm" and e["track"].rstrip("0123456789 ") == "dp")
    merged = []
    for a, b in dp:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    waited = sum(max(0.0, min(b, o1) - max(a, o0)) for a, b in merged for o0, o1 in opt) * 1e-6
    out["DP collectives"] += waited
    out["optimizer"] -= waited
    out["uncovered"] = (t1 - t0) * 1e-6 - sum(out.values())
    return out


def plot_breakdown(procs, xs, prefix, title):
    steps = steps_of(xs)
    pids = sorted(procs)
    fig, ax = plt.subplots(figsize=(9, 0.6 * len(pids) + 1.6))
    parts = list(PART_COLOURS)
    totals = {}
    for pid in pids:
        c = collections.Counter()
        for s in steps:
            c.update(breakdown(xs, pid, *window(xs, pid, s)))
        totals[pid] = c
    for i, pid in enumerate(pids):
        left = 0.0
        for p in parts:
            w = totals[pid][p] * 1e3 / len(steps)
            ax.barh(i, w, left=left, color=PART_COLOURS[p], edgecolor="#333333", linewidth=0.4,
                    label=p if i == 0 else None)
            left += w
    ax.set_yticks(range(len(pids)), [procs[p] for p in pids])
    ax.invert_yaxis()
    ax.set_xlabel(f"ms per step (mean of traced steps {', '.join(map(str, steps))})")
    ax.set_title(title or "where each rank's step time went")
    ax.legend(ncol=9, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.45 / len(pids) - 0.1))
    fig.tight_layout()
    fig.savefig(prefix + "_breakdown.png", dpi=130)
    return totals


def rows_of(xs, pid):
    """The band of one rank: (label, track names) top to bottom."""
    names = sorted({e["track"] for e in xs if e["pid"] == pid})
    lanes = lambda base: [n for n in names if n == base or n.startswith(base + " ")]
    return [("compute", ["compute"]), ("pp wait, progress", ["pp wait", "progress"]),
            ("optimizer, data, host", ["optimizer", "data", "host"]),
            ("ep in flight", lanes("ep")), ("pp send / recv", lanes("pp send") + lanes("pp recv")),
            ("dp buckets", lanes("dp"))]


def colour(e):
    if e["track"] == "compute":
        if e["cat"] == "part":
            return OP_COLOURS.get(e["name"], "#4c78a8")
        if e["name"].endswith(" piece"):  # a pair's pieces: F and B alternating
            return OP_COLOURS[e["name"][0]]
        return "#e45756" if e["name"].startswith("EP wait") else None
    base = e["track"].rstrip("0123456789 ")
    return {"pp wait": "#bab0ac", "progress": "#d4a6c8", "optimizer": "#eeca3b", "data": "#72b7b2", "host": "#9d755d",
            "dp": "#f58518", "ep": "#9ecae9"}.get(base, "#bbbbbb")


def plot_timeline(procs, xs, flows, prefix, step, title):
    pids = sorted(procs)
    t0, t1 = window(xs, pids[0], step)
    fig, ax = plt.subplots(figsize=(13, 1.2 * len(pids) + 1.5))
    y, yticks, ylabels, row_y = 0, [], [], {}
    for pid in pids:
        for label, tracks in rows_of(xs, pid):
            for e in xs:
                if e["pid"] != pid or e["track"] not in tracks or not inside(e, t0, t1):
                    continue
                c = colour(e)
                if c is None:
                    continue
                h = 0.8 if e["cat"] != "detail" else 0.4
                ax.broken_barh([((e["ts"] - t0) / 1e3, max(e["dur"], 1) / 1e3)], (y - h / 2, h),
                               facecolors=c, edgecolors="#222222" if e["cat"] == "part" else "none",
                               linewidth=0.2, alpha=0.55 if e["cat"] == "comm" else 1.0)
                row_y[(pid, e["tid"])] = y
            yticks.append(y)
            ylabels.append(f"r{pid} {label}")
            y += 1
        y += 0.6
    for f in flows:
        s, r = f["s"], f["f"]
        if (s["pid"], s["tid"]) in row_y and (r["pid"], r["tid"]) in row_y and t0 <= s["ts"] <= t1:
            ax.annotate("", xy=((r["ts"] - t0) / 1e3, row_y[(r["pid"], r["tid"])]),
                        xytext=((s["ts"] - t0) / 1e3, row_y[(s["pid"], s["tid"])]),
                        arrowprops=dict(arrowstyle="->", color="#333333", lw=0.6, alpha=0.7))
    ax.set_yticks(yticks, ylabels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, (t1 - t0) / 1e3)
    ax.set_xlabel(f"ms since step {step} began")
    handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in OP_COLOURS.values()]
    handles += [plt.Rectangle((0, 0), 1, 1, color=c) for c in
                ("#e45756", "#bab0ac", "#d4a6c8", "#eeca3b", "#72b7b2", "#9d755d", "#9ecae9",
                 "#f58518")]
    ax.legend(handles, list(OP_COLOURS) + ["EP wait", "PP wait", "progress", "optimizer", "data", "host",
                                           "EP in flight", "DP bucket"],
              ncol=13, fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.1))
    ax.set_title((title or "timeline") + f" — step {step}")
    fig.tight_layout()
    fig.savefig(prefix + "_timeline.png", dpi=130)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("trace")
    ap.add_argument("prefix")
    ap.add_argument("--step", type=int, default=None, help="the step of the timeline (first traced)")
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    procs, xs, flows = load(a.trace)
    steps = steps_of(xs)
    step = a.step if a.step is not None else steps[0]
    plot_timeline(procs, xs, flows, a.prefix, step, a.title)
    totals = plot_breakdown(procs, xs, a.prefix, a.title)
    for pid in sorted(procs):
        row = ", ".join(f"{p} {1e3 * v / len(steps):.1f}" for p, v in totals[pid].items() if v)
        print(f"{procs[pid]}: ms per step: {row}")
    print(f"wrote {a.prefix}_timeline.png and {a.prefix}_breakdown.png")


main()
