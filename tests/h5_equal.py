#!/usr/bin/env python3
"""Bitwise comparison of HDF5 files, for the reliability tests (issue #15): the parameters and
Adam moments of two checkpoints, or the run.save_params files of two runs, must be the same bits.

  h5_equal.py ckpt DIR_A DIR_B      every rank_*.h5 of two checkpoint directories: the same
                                    shards, and in each the same /params and /moments datasets
                                    with the same bytes (attributes such as the step are ignored)
  h5_equal.py params PREFIX_A PREFIX_B
                                    every PREFIX_A.rank<R>.h5 against PREFIX_B.rank<R>.h5: the
                                    same datasets with the same bytes

Prints the first difference and exits 1, or prints what was compared and exits 0.
"""
import glob
import os
import sys

import h5py
import numpy as np


def datasets(path, groups):
    out = {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset) and (not groups or name.split("/")[0] in groups):
                out[name] = np.asarray(obj[()])
        f.visititems(visit)
    return out


def compare(a_path, b_path, groups):
    a, b = datasets(a_path, groups), datasets(b_path, groups)
    if set(a) != set(b):
        return f"{a_path} vs {b_path}: datasets differ: {sorted(set(a) ^ set(b))[:5]}", 0
    for k in sorted(a):
        if a[k].dtype != b[k].dtype or a[k].shape != b[k].shape or a[k].tobytes() != b[k].tobytes():
            return f"{a_path} vs {b_path}: {k} differs", 0
    return None, len(a)


def main():
    mode, a, b = sys.argv[1:4]
    if mode == "ckpt":
        files = sorted(os.path.basename(p) for p in glob.glob(f"{a}/rank_*.h5"))
        if not files or files != sorted(os.path.basename(p) for p in glob.glob(f"{b}/rank_*.h5")):
            sys.exit(f"{a} vs {b}: shard files differ")
        pairs, groups = [(f"{a}/{f}", f"{b}/{f}") for f in files], ("params", "moments")
    elif mode == "params":
        files = sorted(glob.glob(f"{a}.rank*.h5"))
        if not files:
            sys.exit(f"no {a}.rank*.h5")
        pairs, groups = [(f, b + f[len(a):]) for f in files], ()
    else:
        sys.exit(__doc__)
    n = 0
    for pa, pb in pairs:
        err, k = compare(pa, pb, groups)
        if err:
            print(err)
            sys.exit(1)
        n += k
    print(f"{len(pairs)} file(s), {n} datasets bitwise equal")


if __name__ == "__main__":
    main()
