"""Writes a gradient dump in the layout of `moetron dump-grads`, computed by the torch reference.

Exists so that parity.py can be exercised (and shown to fail on a wrong gradient) before, and
independently of, the C++ side. Usage:

  make_dump.py --out x.h5 [--config key=value ...] [--batch B] [--seq S] [--seed N]
               [--init-std X] [--norm-jitter X] [--bias-std X] [--dtype float32|float64]

--config takes model hyper-parameters by their HF names (plus mtp_weight, seq_aux_alpha); the
defaults are moetron's model/config.h defaults. Weights: N(0, init-std) matrices, RMSNorm weights
1 + N(0, norm-jitter), e_score_correction_bias N(0, bias-std) (the jitters default to non-zero so
that norm weights and the routing bias are really exercised). Weights are rounded to float32 first,
then forward+backward run in --dtype (float32 by default, like the C++ side).

Layout: root attributes = every hyper-parameter (int64/float64), mtp_weight, seq_aux_alpha and the
losses loss/lm_loss/mtp_loss/balance_loss (float64); /tokens int32 [B, S+1]; /params/<HF name>
float32 (every parameter and e_score_correction_bias); /grads/<HF name> float32 (trainable only).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Dict, List, Optional

import h5py
import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from deepseek_v3 import DeepseekV3ForCausalLM, ModelConfig, init_weights  # noqa: E402

LOSS_KEYS = ("loss", "lm_loss", "mtp_loss", "balance_loss")


def parse_overrides(items: List[str]) -> Dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"--config expects key=value, got {item!r}")
        key, value = item.split("=", 1)
        out[key.strip()] = value.strip()
    return out


def make_dump(out: str, overrides: Optional[Dict[str, object]] = None, batch: int = 2, seq: int = 16,
              seed: int = 0, init_std: float = 0.02, norm_jitter: float = 0.1, bias_std: float = 0.02,
              dtype: torch.dtype = torch.float32) -> Dict[str, float]:
    """Writes the dump to `out`; returns the losses."""
    cfg = ModelConfig.from_mapping(overrides or {}, strict=True)
    gen = torch.Generator().manual_seed(seed)
    model = DeepseekV3ForCausalLM(cfg)
    init_weights(model, init_std, norm_jitter, bias_std, gen)
    # the dump holds float32 weights: round first so that the stored values are the ones used
    model = model.float().to(dtype)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq + 1), generator=gen, dtype=torch.int64)

    losses = model(tokens)
    losses["loss"].backward()

    with h5py.File(out, "w") as f:
        for key, value in cfg.to_attrs().items():
            f.attrs[key] = np.int64(value) if isinstance(value, int) else np.float64(value)
        for key in LOSS_KEYS:
            f.attrs[key] = np.float64(losses[key].item())
        f.attrs["producer"] = "tests/torch_ref/make_dump.py"
        f.create_dataset("tokens", data=tokens.numpy().astype(np.int32))
        gp, gg = f.create_group("params"), f.create_group("grads")
        for name, t in model.state_dict().items():
            gp.create_dataset(name, data=t.detach().float().numpy())
        for name, p in model.named_parameters():
            g = p.grad if p.grad is not None else torch.zeros_like(p)
            gg.create_dataset(name, data=g.float().numpy())
    return {k: v.item() for k, v in losses.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", required=True)
    ap.add_argument("--config", nargs="+", action="extend", default=[], metavar="KEY=VALUE")
    ap.add_argument("--batch", type=int, default=2)
    ap.add_argument("--seq", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--init-std", type=float, default=0.02)
    ap.add_argument("--norm-jitter", type=float, default=0.1)
    ap.add_argument("--bias-std", type=float, default=0.02)
    ap.add_argument("--dtype", choices=["float32", "float64"], default="float32")
    args = ap.parse_args()
    losses = make_dump(args.out, parse_overrides(args.config), args.batch, args.seq, args.seed,
                       args.init_std, args.norm_jitter, args.bias_std, getattr(torch, args.dtype))
    print(f"wrote {args.out}: " + " ".join(f"{k}={v:.8g}" for k, v in losses.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
