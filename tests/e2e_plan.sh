#!/usr/bin/env bash
# End to end: `moetron plan` on DeepSeek-V3 (configs/deepseek-v3-671b.yaml) runs in seconds on
# the meta device and reports 671B parameters (+-0.3%), ~37B activated per token and per-device
# memory against the H800, whose breakdown adds up; --json and the table give the same figures; a
# layout that does not fit exits 1 naming the term that is over, and `moetron train` refuses it
# before allocating anything with the same message; a bad hardware profile and a --world that
# does not match the layout are one clear message each.  Args: MOETRON_BIN BUILD_DIR
set -euo pipefail
BIN=$1; OUT=$2/e2e_plan
rm -rf "$OUT"; mkdir -p "$OUT"
/usr/bin/python3 - "$BIN" "$OUT" <<'PY'
import json, re, subprocess, sys, time
BIN, OUT = sys.argv[1], sys.argv[2]
GiB = 1 << 30

def run(*args):
    t0 = time.monotonic()
    r = subprocess.run([BIN, *args], capture_output=True, text=True)
    return r, time.monotonic() - t0

def one_error_line(r, *parts):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 1, f"exit {r.returncode}, expected 1: {r.stderr}"
    assert len(lines) == 1 and lines[0].startswith("moetron: error: "), f"not one error line: {r.stderr!r}"
    for p in parts:
        assert p in lines[0], f"{p!r} not in {lines[0]!r}"
    return lines[0]

# --- DeepSeek-V3 on 2048 H800: JSON ---
V3 = "configs/deepseek-v3-671b.yaml"
r, secs = run("plan", V3, "--json")
assert secs < 10, f"plan took {secs:.1f} s"
d = json.loads(r.stdout)
b = d["bytes_per_rank"]
print(f"V3 plan in {secs:.2f} s: {d['params_total']/1e9:.2f}B total, {d['params_activated']/1e9:.2f}B "
      f"activated, MTP {d['params_mtp']/1e9:.2f}B; peak pp rank {d['peak_pp_rank']}: "
      f"{b['total']/GiB:.1f} GiB of {d['memory_bytes']/GiB:.1f} ({d['hardware']}), fits {d['fits']}")
print("  " + ", ".join(f"{k} {v/GiB:.1f}" for k, v in b.items()))
assert abs(d["params_total"] - 671e9) <= 0.003 * 671e9, d["params_total"]
assert 36e9 <= d["params_activated"] <= 38e9, d["params_activated"]
assert abs(d["params_mtp"] - 11.6e9) <= 0.1e9, d["params_mtp"]
assert d["world"] == 2048 and d["layout"]["pp"] == 16 and d["layout"]["ep"] == 64
assert d["hardware"] == "H800" and d["memory_bytes"] == int(79.6 * GiB)
assert len(d["ranks"]) == 16 and d["ranks"][0]["stages"] == [0, 15]
for rk in d["ranks"]:
    bb = rk["bytes"]
    assert sum(v for k, v in bb.items() if k != "total") == bb["total"], rk
    assert bb["gradients"] == 4 * rk["params"]["total"]
    # fp8, DP 128 (EDP 2, both doubled by the twins): the Linears' fp32 masters only in the shards
    assert bb["weights"] < bb["gradients"] / 2 and 0 < bb["master_shard"] < bb["gradients"] / 8
peak = max(d["ranks"], key=lambda x: x["bytes"]["total"])
assert peak["bytes"] == b and peak["pp_rank"] == d["peak_pp_rank"]
assert d["params_per_rank"] == peak["params"]
fits = b["total"] <= d["memory_bytes"]
assert d["fits"] is fits and d["over_bytes"] == max(0, b["total"] - d["memory_bytes"])
if fits:
    assert r.returncode == 0, r.stderr
else:  # a finding, reported: the message names the rank, the device and the term(s) over
    err = one_error_line(r, f"{V3}: the layout does not fit in device memory: pipeline rank "
                            f"{d['peak_pp_rank']} ", "the H800 has 79.6 GiB", "over by ")
    over = [k for k, v in b.items() if k != "total" and v > d["memory_bytes"]]
    for k in over:
        assert f"the term {k} (" in err and "alone exceeds the device by" in err, (k, err)
    if not over:
        assert "no term alone exceeds the device" in err, err

# --- the table says the same ---
t, _ = run("plan", V3)
assert t.returncode == r.returncode and t.stderr == r.stderr
text = t.stdout
def params(s):
    return float(s[:-1]) * {"B": 1e9, "M": 1e6, "K": 1e3}[s[-1]]
m = re.search(r"total (\S+) \(main model", text); assert abs(params(m[1]) - d["params_total"]) <= 0.005e9
m = re.search(r"activated (\S+) per token", text); assert abs(params(m[1]) - d["params_activated"]) <= 0.005e9
m = re.search(r"MTP (\S+) \(own", text); assert abs(params(m[1]) - d["params_mtp"]) <= 0.005e9
assert "memory per device, GiB" in text
keys = ["weights", "gradients", "grad_staging", "master_shard", "optimizer_moments", "fp8_weight_cache",
        "bf16_weight_cache", "ep_buffers", "pp_messages", "activations", "moe_scratch", "layer_scratch", "total"]
rows = [l.split() for l in text.splitlines() if re.match(r"^\s+\d+\s+\d+(,\d+)*\s", l)]
assert len(rows) == 16, rows
for row, rk in zip(rows, d["ranks"]):
    assert int(row[0]) == rk["pp_rank"] and row[1] == ",".join(map(str, rk["stages"]))
    assert abs(params(row[2]) - rk["params"]["total"]) <= 0.005e9
    for k, cell in zip(keys, row[3:16]):
        assert abs(float(cell) - rk["bytes"][k] / GiB) <= 0.0051, (k, cell, rk["bytes"][k])
    assert int(row[16]) == rk["activation_slots"] and int(row[17]) == rk["gradient_sets"]
m = re.search(r"peak\s+pipeline rank (\d+): ([\d.]+) GiB per device of ([\d.]+)", text)
assert int(m[1]) == d["peak_pp_rank"] and abs(float(m[2]) - b["total"] / GiB) <= 0.0051
assert ("DOES NOT FIT" in text) == (not fits)
print("V3 table and JSON agree")

# --- the mid-size config fits one 8-GPU H100 node ---
r, _ = run("plan", "configs/deepseek-v3-mid.yaml", "--json")
mid = json.loads(r.stdout)
assert r.returncode == 0 and mid["fits"] is True and mid["world"] == 8, r.stderr
assert 2e9 <= mid["params_total"] <= 8e9, mid["params_total"]
print(f"mid: {mid['params_total']/1e9:.2f}B, {mid['params_activated']/1e9:.2f}B activated, "
      f"{mid['bytes_per_rank']['total']/GiB:.1f} GiB of {mid['memory_bytes']/GiB:.1f} ({mid['hardware']})")

# --- a layout that does not fit: plan and train refuse it with the same message ---
TINY = ["configs/tiny.yaml", "--set", "hardware.memory_gib=0.05"]
r, _ = run("plan", *TINY, "--json")
small = json.loads(r.stdout)
assert small["fits"] is False
msg = one_error_line(r, "configs/tiny.yaml: the layout does not fit in device memory",
                     "the device has 51.2 MiB (hardware.memory_gib): over by ",
                     "the term activations (", ") alone exceeds the device by ")
tr, _ = run("train", *TINY, "--set", f"run.dir={OUT}/refused")
assert one_error_line(tr) == msg, (tr.stderr, msg)
assert tr.stdout == "", f"train started: {tr.stdout!r}"
import os
assert not os.path.exists(f"{OUT}/refused"), "train wrote its run directory"
r, _ = run("plan", "configs/tiny.yaml", "--hardware", "configs/hardware/h200.yaml", "--json")
assert r.returncode == 0 and json.loads(r.stdout)["fits"] is True
assert json.loads(r.stdout)["memory_bytes"] == int(140.4 * GiB)
r, _ = run("plan", "configs/tiny.yaml", "--json")  # CPU default: memory unknown, not refused
assert r.returncode == 0 and json.loads(r.stdout)["fits"] is None
print("refusals: plan and train agree")

# --- one clear message for a bad profile and for a --world that does not match ---
open(f"{OUT}/missing.yaml", "w").write("name: X\nmemory_gib: 80\n")
open(f"{OUT}/wrong.yaml", "w").write(open("configs/hardware/h800.yaml").read().replace(
    "memory_gib: 79.6", "memory_gib: lots"))
r, _ = run("plan", "configs/tiny.yaml", "--hardware", f"{OUT}/missing.yaml")
one_error_line(r, f"{OUT}/missing.yaml: peak_bf16_tflops: missing: a hardware profile gives every key")
r, _ = run("plan", "configs/tiny.yaml", "--hardware", f"{OUT}/wrong.yaml")
one_error_line(r, f"hardware.profile: {OUT}/wrong.yaml: memory_gib: expected a number, got the string \"lots\"")
r, _ = run("plan", V3, "--world", "1024")
one_error_line(r, f"{V3}: --world 1024 does not match the layout: parallel.pp x parallel.dp = 16 x 128 = 2048 ranks")
assert r.stdout == ""
print("e2e_plan: 1 passed, 0 failed")
PY
