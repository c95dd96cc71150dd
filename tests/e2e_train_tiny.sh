#!/usr/bin/env bash
# End to end: configs/tiny.yaml trains on the real corpus, the loss falls, metrics.jsonl has every
# field, the same seed reproduces the run bit for bit (a second run of its first 10 steps), and
# the model FLOPs per token equal an independent count from the run's config (2 per
# multiply-accumulate, x3 for training, causal attention over S/2 keys) with the per-device rates
# and the MFU that follow from them; with run.count_flops the GEMM FLOPs the ops executed in each
# step, less the head's recomputed logits, equal the step's tokens x the count's GEMM part
# (attention cores out) exactly, and counting changes no loss.  Args: MOETRON_BIN BUILD_DIR
set -euo pipefail
BIN=$1; OUT=$2/e2e_train_tiny
rm -rf "$OUT"
STEPS=40
common=(--set run.steps=$STEPS --set schedule.lr.warmup_steps=5 --set run.log_interval=10)
"$BIN" train configs/tiny.yaml "${common[@]}" --set run.dir="$OUT/a" --set hardware.peak_bf16_tflops=0.5 \
  --set run.count_flops=on
"$BIN" train configs/tiny.yaml "${common[@]}" --set run.steps=10 --set run.dir="$OUT/b" > /dev/null
/usr/bin/python3 - "$OUT" "$STEPS" <<'PY'
import json, sys
out, steps = sys.argv[1], int(sys.argv[2])
a = [json.loads(l) for l in open(f"{out}/a/metrics.jsonl")]
b = [json.loads(l) for l in open(f"{out}/b/metrics.jsonl")]
assert len(a) == steps, f"expected {steps} metric lines, got {len(a)}"
need = {"step", "loss", "lm_loss", "mtp_loss", "balance_loss", "lr", "grad_norm", "tokens",
        "tokens_per_s", "expert_imbalance"}
missing = need - set(a[0])
assert not missing, f"metrics.jsonl lacks {missing}"
first = sum(r["loss"] for r in a[:5]) / 5
last = sum(r["loss"] for r in a[-5:]) / 5
print(f"loss first5 {first:.4f} last5 {last:.4f}")
assert last < first - 1.0, "the loss did not fall by at least 1 nat"
assert len(b) == 10 and [r["loss"] for r in a[:10]] == [r["loss"] for r in b], "same seed, different losses"
assert a[-1]["tokens"] == steps * a[0]["tokens"], "token count is not cumulative"

import yaml
cfg = yaml.safe_load(open(f"{out}/a/config.yaml"))
m, S = cfg["model"], cfg["data"]["seq_len"]
D, H, V = m["hidden_size"], m["num_attention_heads"], m["vocab_size"]
dn, dr, dv, ql, kl = (m[k] for k in ["qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim",
                                     "q_lora_rank", "kv_lora_rank"])
def block(layer, core=True):  # one decoder block's forward multiply-accumulates per token
    q = D * ql + ql * H * (dn + dr) if ql else D * H * (dn + dr)
    macs = q + D * (kl + dr) + kl * H * (dn + dv) + H * dv * D
    macs += H * (dn + dr + dv) * S / 2 if core else 0  # attention core: not a GEMM op
    if layer < m["first_k_dense_replace"]:
        return macs + 3 * D * m["intermediate_size"]
    F = m["moe_intermediate_size"]
    return macs + D * m["n_routed_experts"] + 3 * D * F * (m["n_shared_experts"] + m["num_experts_per_tok"])
L, mtp = m["num_hidden_layers"], m["num_nextn_predict_layers"]
macs = sum(block(l) for l in range(L)) + D * V
macs += sum(2 * D * D + block(L + k) + D * V for k in range(mtp))
want = 3 * 2 * macs
gemm_macs = sum(block(l, False) for l in range(L)) + D * V
gemm_macs += sum(2 * D * D + block(L + k, False) + D * V for k in range(mtp))
gemm_want = 3 * 2 * gemm_macs  # integer: the GEMM part of the count
for r in a:
    assert r["flops_per_token"] == float(f"{want:.9g}"), f"flops_per_token {r['flops_per_token']} != {want}"
    per_dev = r["tokens_per_s"] / 1  # one process
    assert abs(r["tokens_per_s_per_device"] - per_dev) <= 1e-8 * per_dev
    assert abs(r["model_tflops_per_device"] - per_dev * want / 1e12) <= 1e-8 * r["model_tflops_per_device"]
    assert abs(r["device_hours_per_1e12_tokens"] - 1e12 / per_dev / 3600) <= 1e-8 * r["device_hours_per_1e12_tokens"]
    assert abs(r["mfu"] - r["model_tflops_per_device"] / 0.5) <= 1e-8 * r["mfu"], "mfu"
    assert "mfu_fp8" not in r, "mfu_fp8 without the fp8 recipe"
assert all("mfu" not in r for r in b), "mfu without a hardware peak"
for r in a:  # run.count_flops: the GEMM FLOPs the ops executed
    step_tokens = r["global_batch"] * S
    model = r["gemm_flops_executed"] - r["gemm_flops_recompute"]
    assert model == step_tokens * gemm_want, f"step {r['step']}: GEMM FLOPs {model} != {step_tokens * gemm_want}"
    recompute = step_tokens * 2 * D * V * (1 + mtp)  # each head's logits again in its backward
    assert r["gemm_flops_recompute"] == recompute, f"recompute {r['gemm_flops_recompute']} != {recompute}"
    rate = r["gemm_flops_executed"] / r["step_seconds"] / 1e12
    assert abs(r["gemm_tflops_executed_per_device"] - rate) <= 1e-6 * rate, "gemm_tflops_executed_per_device"
assert all("gemm_flops_executed" not in r for r in b), "GEMM FLOPs without run.count_flops"
print(f"flops/token {want:.4e}; last step {a[-1]['model_tflops_per_device']:.4f} TFLOP/s per device, "
      f"{a[-1]['device_hours_per_1e12_tokens']:.3g} device-hours per 1e12 tokens; executed GEMMs "
      f"{a[-1]['gemm_flops_executed']} FLOPs per step ({a[-1]['gemm_flops_recompute']} recomputed), "
      f"{a[-1]['gemm_tflops_executed_per_device']:.4f} TFLOP/s per device")
print("e2e_train_tiny: 1 passed, 0 failed")
PY
