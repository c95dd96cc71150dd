"""Checks a merged trace (run.trace_steps; parallel/trace.h) of a training run.

Usage: check_trace.py TRACE.json METRICS.jsonl RANKS STEP [STEP ...] [--expect NAME ...]

The file must load as JSON with every rank a process (named), every slice on a named track, no
dropped events, each traced step a step slice on every rank, and per rank and step the top-level
slices of the tiling tracks (cat "part") must not overlap and must add up to the step slice
within 5 %; rank 0's step slice less its validation time must be metrics.jsonl's step_seconds
(1 %), the other ranks' step slices as long as rank 0's (5 % + 5 ms).
Every PP send has a flow start and every receive a flow end, matched one to one by id across two
ranks. Every --expect NAME is the name of some slice. Prints the per-rank residuals and event
counts.
"""
import collections
import json
import sys


def fail(msg):
    print("check_trace: FAIL:", msg)
    sys.exit(1)


def main():
    args = sys.argv[1:]
    expect = [args[i + 1] for i, a in enumerate(args) if a == "--expect"]
    args = [a for i, a in enumerate(args) if a != "--expect" and (i == 0 or args[i - 1] != "--expect")]
    path, metrics_path, ranks = args[0], args[1], int(args[2])
    steps = [int(s) for s in args[3:]]
    with open(path) as f:
        doc = json.load(f)
    ev = doc["traceEvents"]
    other = doc["otherData"]
    if other["ranks"] != ranks:
        fail(f"otherData.ranks {other['ranks']} != {ranks}")
    if any(other["dropped_per_rank"]):
        fail(f"dropped events: {other['dropped_per_rank']}")
    procs = {e["pid"]: e["args"]["name"] for e in ev if e["ph"] == "M" and e["name"] == "process_name"}
    if sorted(procs) != list(range(ranks)):
        fail(f"processes {sorted(procs)}, want ranks 0..{ranks - 1}")
    threads = {(e["pid"], e["tid"]) for e in ev if e["ph"] == "M" and e["name"] == "thread_name"}
    xs = [e for e in ev if e["ph"] == "X"]
    for e in xs:
        if (e["pid"], e["tid"]) not in threads:
            fail(f"slice {e['name']} on an unnamed track {e['pid']}/{e['tid']}")
        if e["dur"] < 0:
            fail(f"negative duration: {e}")
    metrics = {m["step"]: m for m in map(json.loads, open(metrics_path))}
    worst, step0 = 0.0, {}
    for r in range(ranks):
        mine = [e for e in xs if e["pid"] == r]
        step_slices = {e["args"]["step"]: e for e in mine if e["cat"] == "step"}
        if sorted(step_slices) != steps:
            fail(f"rank {r}: step slices {sorted(step_slices)}, want {steps}")
        kinds = collections.Counter(e["name"] for e in mine)
        line = [f"rank {r} ({procs[r]}): {len(mine)} slices"]
        for s in steps:
            st = step_slices[s]
            t0, t1 = st["ts"], st["ts"] + st["dur"]
            parts = sorted((max(e["ts"], t0), min(e["ts"] + e["dur"], t1)) for e in mine
                           if e["cat"] == "part" and e["ts"] < t1 and e["ts"] + e["dur"] > t0)
            for (a0, a1), (b0, b1) in zip(parts, parts[1:]):
                if b0 < a1 - 1e-3:
                    fail(f"rank {r} step {s}: tiling slices overlap at {b0} us")
            total = sum(b - a for a, b in parts)
            resid = (st["dur"] - total) / st["dur"]
            worst = max(worst, abs(resid))
            line.append(f"step {s}: {st['dur'] / 1e3:.2f} ms, slices {total / 1e3:.2f} ms, "
                        f"residual {100 * resid:+.2f}%")
            if abs(resid) > 0.05:
                fail(f"rank {r} step {s}: slices sum to {total:.0f} us of the step's "
                     f"{st['dur']:.0f} us ({100 * resid:+.1f}%, more than 5%)")
            if r == 0:  # metrics.jsonl has rank 0's step time (less its validation)
                want = metrics[s]["step_seconds"] * 1e6
                got = st["dur"] - st["args"]["eval_us"]
                if abs(got - want) > 0.01 * want + 50:
                    fail(f"step {s}: rank 0's step slice {got:.0f} us, metrics.jsonl {want:.0f} us")
            else:  # one step for all: from a barrier's end to the next one's
                d0 = step0[s]
                # 5 % + 5 ms: a rank leaves each barrier when the scheduler next runs it, which
                # with 4 ranks on 2 busy cores was 7.3 ms late on a 183 ms step (ctest -j2)
                if abs(st["dur"] - d0) > 0.05 * d0 + 5000:
                    fail(f"rank {r} step {s}: step slice {st['dur']:.0f} us, rank 0's {d0:.0f} us")
            if r == 0:
                step0[s] = st["dur"]
        print("; ".join(line))
        print("   ", dict(sorted(kinds.items())))
    names = {e["name"] for e in xs}
    missing = [n for n in expect if n not in names]
    if missing:
        fail(f"no slice named {missing}")
    sends = sum(1 for e in xs if e["cat"] == "comm" and e["name"].startswith("send "))
    recvs = sum(1 for e in xs if e["cat"] == "comm" and e["name"].startswith("recv "))
    flows = collections.defaultdict(list)
    for e in ev:
        if e["ph"] in "sf":
            flows[e["id"]].append(e)
    if sends == 0 or sends != recvs or len(flows) != sends:
        fail(f"{sends} PP sends, {recvs} receives, {len(flows)} flow ids")
    for fid, pair in flows.items():
        phs = sorted(e["ph"] for e in pair)
        if phs != ["f", "s"] or pair[0]["pid"] == pair[1]["pid"]:
            fail(f"flow {fid}: {pair}")
    print(f"check_trace: ok: {ranks} ranks, {len(xs)} slices, {len(flows)} PP flows matched, "
          f"worst step residual {100 * worst:.2f}%")


main()
