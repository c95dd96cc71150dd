#!/usr/bin/python3
"""How spread out a trained model's activation gradients are across tokens (docs/fp8.md).

usage: bench/fp8_grad_outliers.py DUMP.h5

DUMP.h5 is a `moetron dump-grads --from CHECKPOINT` file: trained weights and one micro-batch of
real tokens. The torch reference model (tests/torch_ref) runs it forward and backward, and a hook
on every Linear collects dY, the activation gradient its Dgrad GEMM quantises (rows = tokens in
the order the GEMM sees them, routed experts: the tokens sent to the expert). For E4M3 with
scale amax/448 per tile, a value v sits in the subnormals when |v| * 448 / amax < 2^-6 (its 3
mantissa bits lost progressively, zero below 2^-10). Printed per kind of Linear: the spread of
token magnitudes inside each 128x128 block (the block's amax over each row's amax in that block:
median, 99th percentile, max), the fraction of the elements that are subnormal, and each
token's relative error after E4M3 rounding (median, p90, p99), with 1x128 tiles and with
128x128 blocks (SPEC App. B.2's experiment).
"""
import os
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "torch_ref"))
from deepseek_v3 import DeepseekV3ForCausalLM  # noqa: E402
from parity import read_dump  # noqa: E402

MIN_NORMAL = 2.0 ** -6


def kind(name):
    if ".mlp.experts." in name:
        return "routed experts"
    if ".mlp.shared_experts." in name:
        return "shared expert"
    if ".self_attn." in name:
        return "attention proj"
    if ".mlp." in name:
        return "dense mlp"
    return None  # head, eh_proj: not FP8


def tiles(dy, rows, cols=128):
    """dY [T, N] as [nb, rows, nt, cols] blocks, zero-padded."""
    T, N = dy.shape
    pr, pc = (-T) % rows, (-N) % cols
    a = np.pad(dy, ((0, pr), (0, pc)))
    return a.reshape(-1, rows, a.shape[1] // cols, cols)  # [nb, rows, nt, 128]


def e4m3(q):
    """Round scaled values to E4M3 (round-to-nearest-even, saturating at 448)."""
    q = np.clip(q, -448.0, 448.0)
    e = np.floor(np.log2(np.maximum(np.abs(q), MIN_NORMAL)))
    step = 2.0 ** (e - 3)  # 3 mantissa bits; subnormals: 2^-9
    return np.round(q / step) * step


def stats(dy):
    x = tiles(dy, 128)  # [nb, 128, nt, 128]
    a = np.abs(x)
    row_amax = a.max(axis=3)  # [nb, 128, nt]: the 1x128 tile amax
    blk_amax = row_amax.max(axis=1, keepdims=True)  # [nb, 1, nt]: the 128x128 block amax
    real = row_amax > 0
    out = {"spread": np.broadcast_to(blk_amax, row_amax.shape)[real] / row_amax[real]}
    row_norm = np.sqrt((x * x).sum(axis=(2, 3)))  # [nb, 128]: each token's |dY|
    nz, has = a > 0, row_norm > 0
    for name, amax in (("1x128", row_amax[..., None]), ("128x128", blk_amax[..., None])):
        scale = np.where(amax > 0, amax / 448.0, 1.0)
        q = x / scale
        err = (e4m3(q) - q) * scale
        row_err = np.sqrt((err * err).sum(axis=(2, 3)))
        out[name] = ((np.abs(q) < MIN_NORMAL) & nz).sum() / nz.sum(), row_err[has] / row_norm[has]
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    d = read_dump(sys.argv[1])
    model = DeepseekV3ForCausalLM(d["cfg"])
    model.load_state_dict({n: torch.from_numpy(np.array(a, dtype=np.float32))
                           for n, (a, _) in d["params"].items()})
    grads = {}
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.Linear) and kind(name):
            def hook(_m, _gin, gout, name=name):
                g = gout[0].detach().reshape(-1, gout[0].shape[-1]).double().numpy()
                grads.setdefault(name, []).append(g)
            m.register_full_backward_hook(hook)
    out = model(torch.from_numpy(np.asarray(d["tokens"], dtype=np.int64)))
    out["loss"].backward()
    acc = {}
    for name, gs in grads.items():
        for g in gs:
            s = stats(g)
            k = acc.setdefault(kind(name), {"spread": [], "1x128": [], "128x128": []})
            k["spread"].append(s["spread"])
            for t in ("1x128", "128x128"):
                k[t].append((s[t][0] * g.size, s[t][1]))
    print(f"{sys.argv[1]}: {d['tokens'].shape[0]} x {d['tokens'].shape[1] - 1} tokens, loss "
          f"{out['loss'].item():.4f}")
    print(f"{'':<16} {'block amax / row amax':>25}   {'subnormal elements':>20}   "
          f"{'per-token relative error of the E4M3 dY, median / p90 / p99':>62}")
    print(f"{'Linear dY':<16} {'median':>7} {'p99':>8} {'max':>8}   {'1x128':>9} {'128x128':>10}   "
          f"{'1x128':>30} {'128x128':>31}")
    for k in ("attention proj", "dense mlp", "shared expert", "routed experts"):
        if k not in acc:
            continue
        sp = np.concatenate(acc[k]["spread"])
        n = sum(g.size for nm, gs in grads.items() if kind(nm) == k for g in gs)
        cols = []
        for t in ("1x128", "128x128"):
            sub = sum(c for c, _ in acc[k][t]) / n
            rel = np.concatenate([r for _, r in acc[k][t]])
            cols.append((sub, np.percentile(rel, [50, 90, 99])))
        print(f"{k:<16} {np.median(sp):>7.1f} {np.percentile(sp, 99):>8.3g} {sp.max():>8.2g}   "
              f"{100 * cols[0][0]:>8.3f}% {100 * cols[1][0]:>9.3f}%   "
              + "   ".join(" / ".join(f"{100 * v:>7.2f}%" for v in c[1]) for c in cols))


if __name__ == "__main__":
    main()
