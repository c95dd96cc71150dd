#!/usr/bin/python3
"""Gradient error of precision recipes against an fp32 reference (docs/fp8.md).

usage: bench/fp8_grad_error.py [TITLE LABEL=dump.h5 LABEL=dump.h5 ...] ...

Each group starts with a TITLE (an argument without "=") and lists `moetron dump-grads` files of
one model, parameters and batch; the group's first file is the reference (fp32). For every other
file, per part of the model and for all gradients together:
  calc_diff = 1 - 2 sum(x y) / sum(x^2 + y^2)   (DeepGEMM's criterion; 0 = identical)
  rel       = ||g - g_ref|| / ||g_ref||
and the relative difference of the loss. Exits 2 if a file lacks a gradient the reference has.
"""
import sys

import h5py
import numpy as np

PARTS = ("attention", "dense mlp", "routed experts", "shared expert", "embed/head/gate/norm")


def classify(name):
    """The part of the model a parameter (HF name) belongs to; norms go with the last part."""
    if name.endswith("norm.weight") or ".mlp.gate." in name:
        return PARTS[4]
    if ".mlp.experts." in name:
        return PARTS[2]
    if ".mlp.shared_experts." in name:
        return PARTS[3]
    if ".self_attn." in name:
        return PARTS[0]
    if ".mlp." in name:
        return PARTS[1]
    return PARTS[4]


def load(path):
    with h5py.File(path, "r") as f:
        grads = {k: np.asarray(v[...], dtype=np.float64).ravel() for k, v in f["grads"].items()}
        return grads, float(f.attrs["loss"])


def stats(xs, ys):
    x = np.concatenate(xs) if xs else np.zeros(1)
    y = np.concatenate(ys) if ys else np.zeros(1)
    den = float((x * x + y * y).sum())
    cd = 1.0 - 2.0 * float((x * y).sum()) / den if den > 0 else 0.0
    rel = float(np.linalg.norm(x - y) / max(np.linalg.norm(y), 1e-30))
    return cd, rel


def main():
    groups, cur = [], None
    for a in sys.argv[1:]:
        if "=" not in a:
            cur = (a, [])
            groups.append(cur)
        elif cur is None:
            sys.exit(__doc__)
        else:
            cur[1].append(a.split("=", 1))
    if not groups or any(len(g[1]) < 2 for g in groups):
        sys.exit(__doc__)
    names = list(PARTS) + ["all"]
    print(f"{'':<28} {'loss':>9} " + " ".join(f"{n:>22}" for n in names))
    print(f"{'':<28} {'rel diff':>9} " + " ".join(f"{'calc_diff   rel':>22}" for _ in names))
    for title, files in groups:
        print(title)
        ref_grads, ref_loss = load(files[0][1])
        for label, path in files[1:]:
            grads, loss = load(path)
            missing = sorted(set(ref_grads) - set(grads))
            if missing:
                print(f"{path}: no gradient {missing[0]} (the reference has it)", file=sys.stderr)
                sys.exit(2)
            cols = []
            for part in names:
                keys = [k for k in sorted(ref_grads) if part == "all" or classify(k) == part]
                cd, rel = stats([grads[k] for k in keys], [ref_grads[k] for k in keys])
                cols.append(f"{cd:>11.2e} {rel:>10.2e}")
            print(f"  {label:<26} {abs(loss - ref_loss) / ref_loss:>9.2e} " + " ".join(cols))


if __name__ == "__main__":
    main()
