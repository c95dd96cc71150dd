"""Checkpoint helpers for the end-to-end tests, written against the on-disk format only
(trainer/checkpoint.h), independently of the C++ reader.

  checkpoint_tool.py bytes DIR              total bytes of DIR's rank_*.h5 shards
  checkpoint_tool.py safetensors DIR OUT DT what `moetron export DIR` wrote before it streamed
                                            (one file: header, then every tensor in name order),
                                            as an independent reference; DT is fp32 or bf16
  checkpoint_tool.py to-v1 DIR OUT          DIR (one rank) rewritten in format v1 (whole tensors)
  checkpoint_tool.py drop-piece DIR NAME    remove one piece of NAME from its shard (checksums
                                            redone, so only the piece check can catch it)
  checkpoint_tool.py dup-piece DIR NAME     copy a piece of NAME into another shard (an overlap)

read_params(DIR) reassembles every tensor from its (name, offset) pieces, asserting that the
pieces cover each tensor exactly once; v1 checkpoints (whole tensors) are read as they are.
"""
import glob
import json
import os
import struct
import sys
import zlib

import h5py
import numpy as np
import yaml


def _version(d):
    return 1 if yaml.safe_load(open(f"{d}/manifest.yaml"))["format"].endswith("-v1") else 2


def read_params(d):
    out, cover = {}, {}
    for f in sorted(glob.glob(f"{d}/rank_*.h5")):
        with h5py.File(f) as h:
            for link, ds in h["params"].items():
                if _version(d) == 1:
                    out[link] = ds[()]
                    continue
                name, off = link.rsplit("#", 1)
                off, shape = int(off), tuple(int(x) for x in ds.attrs["shape"])
                if name not in out:
                    out[name] = np.zeros(shape, np.float32)
                    cover[name] = np.zeros(int(np.prod(shape)), np.int32)
                out[name].reshape(-1)[off:off + ds.shape[0]] = ds[()]
                cover[name][off:off + ds.shape[0]] += 1
    for name, c in cover.items():
        assert (c == 1).all(), f"{d}: {name} elements covered {c.min()}..{c.max()} times"
    return out


def _bf16(a):
    u = a.astype(np.float32).view(np.uint32).astype(np.uint64)
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return r


def safetensors(d, out, dt):
    params = read_params(d)
    head, blobs, off = ['{"__metadata__":{"format":"pt"}'], [], 0
    for name in sorted(params):
        a = params[name]
        f32 = dt == "fp32" or "e_score_correction_bias" in name
        b = a.astype(np.float32).tobytes() if f32 else _bf16(a.reshape(-1)).tobytes()
        shape = ",".join(str(x) for x in a.shape)
        head.append(f',{json.dumps(name)}:{{"dtype":"{"F32" if f32 else "BF16"}",'
                    f'"shape":[{shape}],"data_offsets":[{off},{off + len(b)}]}}')
        blobs.append(b)
        off += len(b)
    h = ("".join(head) + "}").encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(out, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def _reseal(d):  # recompute the manifest's shard sizes and checksums
    text = open(f"{d}/manifest.yaml").read()
    m = yaml.safe_load(text)
    for s in m["shards"]:
        b = open(f"{d}/{s['file']}", "rb").read()
        old = f"{{file: {s['file']}, bytes: {s['bytes']}, crc32: {s['crc32']}}}"
        assert old in text, old
        text = text.replace(old, f"{{file: {s['file']}, bytes: {len(b)}, crc32: {zlib.crc32(b)}}}")
    open(f"{d}/manifest.yaml", "w").write(text)


def to_v1(d, out):
    os.makedirs(out)
    params = read_params(d)
    with h5py.File(f"{d}/rank_0.h5") as src, h5py.File(f"{out}/rank_0.h5", "w") as dst:
        dst.attrs["step"] = src.attrs["step"]
        g = dst.create_group("params")
        for name in sorted(params):
            g[name] = params[name]
        src.copy("moments", dst)
    text = open(f"{d}/manifest.yaml").read().replace("moetron-checkpoint-v2", "moetron-checkpoint-v1")
    open(f"{out}/manifest.yaml", "w").write(text)
    _reseal(out)


def _pieces(d, name):
    return [(f, link) for f in sorted(glob.glob(f"{d}/rank_*.h5"))
            for link in h5py.File(f)["params"] if link.rsplit("#", 1)[0] == name]


def drop_piece(d, name):
    f, link = _pieces(d, name)[-1]
    with h5py.File(f, "r+") as h:
        del h["params"][link]
    _reseal(d)


def dup_piece(d, name):
    f, link = _pieces(d, name)[0]
    other = next(g for g in sorted(glob.glob(f"{d}/rank_*.h5")) if g != f)
    with h5py.File(f) as src, h5py.File(other, "r+") as dst:
        src["params"].copy(link, dst["params"])
    _reseal(d)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "bytes":
        print(sum(os.path.getsize(f) for f in glob.glob(f"{args[0]}/rank_*.h5")))
    elif cmd == "safetensors":
        safetensors(*args)
    elif cmd == "to-v1":
        to_v1(*args)
    elif cmd == "drop-piece":
        drop_piece(*args)
    elif cmd == "dup-piece":
        dup_piece(*args)
    else:
        sys.exit(f"unknown command {cmd}")
