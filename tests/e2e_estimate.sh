#!/usr/bin/env bash
# End to end: `moetron estimate` on DeepSeek-V3 / 2048 H800 reproduces the point its H800 profile
# was calibrated on (1543 tokens/s/GPU, 180K GPU-hours per 10^12 tokens, 40.7% MFU) and predicts
# Megatron-Core's 1297 tokens/s/GPU on 1024 H100 within 15%; --json and the table give the same
# step; the breakdown adds up to the step; --calibrate reaches its target; bad input — a profile
# missing a key, a profile with unknown figures, a layout that does not fit in memory, a --world
# that does not match, no --hardware — is one clear message each.  Args: MOETRON_BIN BUILD_DIR
set -euo pipefail
BIN=$1; OUT=$2/e2e_estimate
rm -rf "$OUT"; mkdir -p "$OUT"
/usr/bin/python3 - "$BIN" "$OUT" <<'PY'
import json, subprocess, sys
BIN, OUT = sys.argv[1], sys.argv[2]
V3, MEG = "configs/deepseek-v3-671b.yaml", "configs/megatron-v3-h100.yaml"
H800, H100 = "configs/hardware/h800.yaml", "configs/hardware/h100.yaml"
NOMEM = ["--set", "hardware.memory_gib=0"]  # time estimates of layouts today's memory model refuses

def run(*args):
    return subprocess.run([BIN, *args], capture_output=True, text=True)

def one_error_line(r, *parts, code=1):
    lines = r.stderr.strip().splitlines()
    assert r.returncode == code, f"exit {r.returncode}, expected {code}: {r.stderr}"
    assert lines and lines[0].startswith("moetron"), r.stderr
    for p in parts:
        assert p in lines[0], f"{p!r} not in {lines[0]!r}"
    return lines[0]

r = run("estimate", V3, "--hardware", H800, "--json", *NOMEM)
assert r.returncode == 0, r.stderr
v3 = json.loads(r.stdout)
b = v3["breakdown"]
assert abs(sum(b.values()) - v3["step_seconds"]) < 1e-6 * v3["step_seconds"], (b, v3["step_seconds"])
assert abs(v3["tokens_per_s_per_gpu"] - 1543) < 0.01 * 1543, v3["tokens_per_s_per_gpu"]
assert abs(v3["gpu_hours_per_1e12_tokens"] - 180e3) < 0.01 * 180e3
assert abs(v3["mfu"] - 0.407) < 0.005 and v3["world"] == 2048 and v3["schedule"] == "dualpipe"
assert len(v3["stages"]) == 16 and all(s["op_FB_s"] > 0 for s in v3["stages"])
r = run("estimate", V3, "--hardware", H800, *NOMEM)
assert r.returncode == 0 and f"{v3['step_seconds']:.3f} s" in r.stdout, r.stdout
print(f"V3 on 2048 H800: {v3['tokens_per_s_per_gpu']:.1f} tokens/s/GPU, step {v3['step_seconds']:.2f} s")

r = run("estimate", MEG, "--hardware", H100, "--json", *NOMEM)
assert r.returncode == 0, r.stderr
meg = json.loads(r.stdout)["tokens_per_s_per_gpu"]
err = (meg - 1297) / 1297
print(f"Megatron-Core layout on 1024 H100: predicted {meg:.1f} tokens/s/GPU vs 1297 ({100*err:+.1f}%)")
assert abs(err) <= 0.15, err

r = run("estimate", MEG, "--hardware", H100, "--calibrate", "1297", "--json", *NOMEM)
assert r.returncode == 0 and r.stdout.startswith("calibrated: gemm_efficiency: "), r.stdout
cal = json.loads(r.stdout.split("\n", 1)[1])
assert abs(cal["tokens_per_s_per_gpu"] - 1297) < 1, cal["tokens_per_s_per_gpu"]

# CPU: a probe-written profile estimates tiny.yaml at 4 ranks, oversubscribed
r = run("probe")
assert r.returncode == 0 and "peak_fp32_tflops: " in r.stdout, r.stderr
open(f"{OUT}/cpu.yaml", "w").write(r.stdout)
r = run("estimate", "configs/tiny.yaml", "--hardware", f"{OUT}/cpu.yaml", "--json", "--set",
        "parallel.pp=2", "--set", "parallel.dp=2", "--set", "parallel.ep=2", "--set",
        "data.global_batch_size=32", "--set", "data.micro_batch_size=4")
assert r.returncode == 0, r.stderr
t = json.loads(r.stdout)
cores = int(open(f"{OUT}/cpu.yaml").read().split("cores_per_node: ")[1].split()[0])
assert t["rank_share"] == 0.25 and t["busy_share"] == 1 / min(4, cores), t
assert t["step_seconds"] > 0 and t["breakdown"]["exposed_ep_s"] > 0, t
k = t["breakdown"]  # the breakdown adds up to the step, the core wait included
assert abs(sum(k.values()) - t["step_seconds"]) < 1e-6 * t["step_seconds"], t
print(f"tiny.yaml, PP2 x DP2 x EP2 on this CPU: {t['step_seconds']:.3f} s predicted")

# --trace: the predicted timeline in a run's trace format — a process per pipeline rank, compute
# slices that never overlap on a rank, the step ending at the predicted step time
r = run("estimate", "configs/tiny.yaml", "--hardware", f"{OUT}/cpu.yaml", "--trace",
        f"{OUT}/predicted.json", "--set", "parallel.pp=2", "--set", "parallel.dp=2", "--set",
        "parallel.ep=2", "--set", "parallel.schedule=dualpipe", "--set", "data.global_batch_size=32",
        "--set", "data.micro_batch_size=4")
assert r.returncode == 0, r.stderr
tr = json.load(open(f"{OUT}/predicted.json"))
xs = [e for e in tr["traceEvents"] if e["ph"] == "X"]
assert sorted({e["pid"] for e in xs}) == [0, 1], tr["traceEvents"][:4]
names = {e["pid"]: e["args"]["name"] for e in tr["traceEvents"] if e["name"] == "process_name"}
assert all("predicted" in n for n in names.values()), names
for pid in (0, 1):
    comp = sorted((e["ts"], e["ts"] + e["dur"], e["name"]) for e in xs
                  if e["pid"] == pid and e["cat"] != "comm" and e["name"] in ("F", "B", "F&B"))
    assert comp and all(a[1] <= b[0] + 1e-3 for a, b in zip(comp, comp[1:])), comp[:6]
    assert any(n == "F&B" for _, _, n in comp), "DualPipe's overlapped pairs are in the timeline"
    end = max(e["ts"] + e["dur"] for e in xs if e["pid"] == pid)
    assert abs(end / 1e6 - tr["otherData"]["step_seconds"]) < 1e-6 * end, (end, tr["otherData"])
print(f"--trace: {len(xs)} predicted slices on 2 pipeline ranks, step {end / 1e6:.3f} s")

# --- bad input: one clear message each ---
open(f"{OUT}/missing.yaml", "w").write(open(H800).read().replace("comm_efficiency:", "# "))
one_error_line(run("estimate", "configs/tiny.yaml", "--hardware", f"{OUT}/missing.yaml"),
               f"{OUT}/missing.yaml: comm_efficiency: missing: a hardware profile gives every key")
one_error_line(run("estimate", "configs/tiny.yaml", "--hardware", "configs/hardware/cpu.yaml"),
               "hardware.peak_fp32_tflops is 0 (unknown in configs/hardware/cpu.yaml): moetron "
               "estimate needs it for fp32 GEMMs")
r = run("estimate", V3, "--hardware", H800)  # V3's layout fits (plan): estimated, exit 0
assert r.returncode == 0 and "tokens/s/GPU" in r.stdout, r.stderr
r = run("estimate", MEG, "--hardware", H100)  # the Megatron-style one does not
one_error_line(r, f"{MEG}: the layout does not fit in device memory: pipeline rank ")
assert "tokens/s/GPU" in r.stdout  # the estimate is printed, then refused like `plan` refuses it
one_error_line(run("estimate", V3, "--hardware", H800, "--world", "1024"),
               f"{V3}: --world 1024 does not match the layout: parallel.pp x parallel.dp = 16 x 128 = 2048 ranks")
one_error_line(run("estimate", V3), "estimate needs --hardware FILE", code=2)
one_error_line(run("estimate", V3, "--hardware", H800, "--calibrate", "1e9", *NOMEM),
               "calibration: ", "out of reach")
print("e2e_estimate: 1 passed, 0 failed")
PY
