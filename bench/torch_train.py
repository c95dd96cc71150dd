"""PyTorch baseline for moetron's training-throughput benchmark.

Trains the torch reference model (tests/torch_ref/deepseek_v3.py: MLA + DeepSeekMoE + MTP head +
sequence-wise balance loss, the same model the parity test checks against the C++ side) with
torch.optim.AdamW on CPU, and reports tokens per second, so moetron's C++ trainer has a fair,
idiomatic PyTorch number to be compared with.

  torch_train.py --config configs/tiny.yaml [--steps N] [--micro-batch B] [--seq S] [--threads T]
                 [--grad-accum N] [--data TOKENS.h5] [--seed N] [--lr X] [--set model.key=value ...]

Model hyper-parameters come from the YAML `model:` section (keys of model/config.h); lambda from
`schedule.mtp_weight` and the bias-update speed from `schedule.bias_update_speed` (first value of
the schedule); AdamW betas/eps/weight decay/clip from `optimizer:` (defaults 0.9/0.95, 1e-8, 0.1 on
2-D weights only, global-norm clip 1.0); peak LR and warm-up from `schedule.lr`. Defaults for B and
S from `data:`. Tokens are uniform random unless --data names an HDF5 token file (1-D `tokens`
dataset; each sequence is a random window of S+1 tokens). After every step the aux-loss-free
e_score_correction_bias update b += gamma * sign(mean load - load) runs, as in the trainer.
One line per step (losses, grad norm, time); the first 2 steps are excluded from the timing; the
last line is `torch tokens/s: X` (N*B*S tokens per step / mean step time incl. data, fwd, bwd,
opt). --grad-accum N (default 1) accumulates N micro-batches per optimizer step; the per-step
losses printed are those of the step's last micro-batch.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(REPO, "tests", "torch_ref"))
# torch (and deepseek_v3, which imports it) is imported in main(), after the thread environment
# is set: OpenMP and the BLAS read it once, when they are loaded.

WARMUP_STEPS_UNTIMED = 2


def schedule_first(value, default: float) -> float:
    """First value of a piecewise-constant schedule written as a number, a list or {values: [...]}."""
    if value is None:
        return default
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, list) and value:
        return schedule_first(value[0], default)
    if isinstance(value, dict):
        for key in ("values", "value"):
            if key in value:
                return schedule_first(value[key], default)
    raise SystemExit(f"cannot read a schedule value from {value!r}")


def set_thread_env(threads: int) -> None:
    """Make --threads govern every compute pool (unless the caller's environment already says).

    Debian's torch runs GEMMs in OpenBLAS's own pthread pool (sized to all cores, whatever
    torch.set_num_threads says) and element-wise ops in libgomp's pool, whose idle threads spin by
    default; the two pools then fight for the cores (measured 3x slower on a 2-core VM). Passive
    waiting and an equal OpenBLAS pool fix that.
    """
    for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(key, str(threads))
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def load_config(path: str, sets: list):
    from deepseek_v3 import ModelConfig

    with open(path) as f:
        doc = yaml.safe_load(f) or {}
    for item in sets:  # --set a.b=value, value parsed as YAML
        key, _, raw = item.partition("=")
        node = doc
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
        node[parts[-1]] = yaml.safe_load(raw)
    model = dict(doc.get("model") or {})
    if model.pop("rope_scaling", None):
        raise SystemExit("model.rope_scaling (YaRN) is not implemented in the torch reference")
    sched = doc.get("schedule") or {}
    model["mtp_weight"] = schedule_first(sched.get("mtp_weight"), 0.3)
    cfg = ModelConfig.from_mapping(model)
    if cfg.ignored_keys:
        print(f"note: ignoring model keys {cfg.ignored_keys}")
    return cfg, doc


class TokenSource:
    """Batches [B, S+1] of random tokens, or random windows of an HDF5 token file."""

    def __init__(self, vocab: int, batch: int, seq: int, seed: int, path: str = ""):
        import torch
        self.vocab, self.batch, self.seq = vocab, batch, seq
        self.gen = torch.Generator().manual_seed(seed)
        self.ds = None
        if path:
            import h5py
            self.file = h5py.File(path, "r")
            self.ds = self.file["tokens"]
            if self.ds.ndim != 1 or self.ds.shape[0] < seq + 1:
                raise SystemExit(f"{path}: `tokens` must be 1-D with at least {seq + 1} entries")

    def next(self) -> "torch.Tensor":
        import torch
        B, S = self.batch, self.seq
        if self.ds is None:
            return torch.randint(0, self.vocab, (B, S + 1), generator=self.gen)
        starts = torch.randint(0, self.ds.shape[0] - S, (B,), generator=self.gen).tolist()
        rows = [torch.from_numpy(self.ds[s:s + S + 1].astype("int64")) for s in starts]
        out = torch.stack(rows)
        if int(out.max()) >= self.vocab:
            raise SystemExit(f"token id {int(out.max())} >= vocab_size {self.vocab}")
        return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True, help="YAML run config (model: section used)")
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--micro-batch", type=int, default=None)
    ap.add_argument("--seq", type=int, default=None)
    ap.add_argument("--grad-accum", type=int, default=1, help="micro-batches per optimizer step")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--data", default="", help="HDF5 token file (dataset `tokens`)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--lr", type=float, default=None, help="peak LR (default schedule.lr.peak)")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a YAML key")
    args = ap.parse_args()
    if args.steps <= WARMUP_STEPS_UNTIMED:
        ap.error(f"--steps must exceed the {WARMUP_STEPS_UNTIMED} untimed warm-up steps")

    with open(args.config) as f:  # only run.threads is needed before torch is loaded
        run0 = (yaml.safe_load(f) or {}).get("run") or {}
    threads = args.threads or int(run0.get("threads", 0)) or os.cpu_count()
    set_thread_env(threads)
    import torch
    from deepseek_v3 import DeepseekV3ForCausalLM, init_weights

    cfg, doc = load_config(args.config, args.set)
    data, opt_cfg, run = doc.get("data") or {}, doc.get("optimizer") or {}, doc.get("run") or {}
    sched = doc.get("schedule") or {}
    lr_cfg = sched.get("lr") or {}
    B = args.micro_batch or int(data.get("micro_batch_size", 4))
    S = args.seq or int(data.get("seq_len", 128))
    seed = args.seed if args.seed is not None else int(run.get("seed", 1234))
    peak_lr = args.lr if args.lr is not None else float(lr_cfg.get("peak", 3e-3))
    warmup = int(lr_cfg.get("warmup_steps", 20))
    betas = (float(opt_cfg.get("beta1", 0.9)), float(opt_cfg.get("beta2", 0.95)))
    eps, wd = float(opt_cfg.get("eps", 1e-8)), float(opt_cfg.get("weight_decay", 0.1))
    clip = float(opt_cfg.get("grad_clip", 1.0))
    gamma = schedule_first(sched.get("bias_update_speed"), 1e-3)

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    model = DeepseekV3ForCausalLM(cfg)
    init_weights(model, cfg.init_std, generator=torch.Generator().manual_seed(seed))
    model.train()
    moes = model.moe_layers()
    for m in moes:
        m.track_load = True
    params = list(model.parameters())
    decay = [p for p in params if p.dim() == 2]
    no_decay = [p for p in params if p.dim() != 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=peak_lr, betas=betas, eps=eps)
    source = TokenSource(cfg.vocab_size, B, S, seed + 1, args.data)

    n_params = sum(p.numel() for p in params)
    print(f"torch {torch.__version__}, {threads} threads (OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}, "
          f"OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']}); model {n_params / 1e6:.2f}M params, L={cfg.num_hidden_layers} "
          f"D={cfg.hidden_size} E={cfg.n_routed_experts} K={cfg.num_experts_per_tok} MTP={cfg.num_nextn_predict_layers}; "
          f"B={B} S={S} x{args.grad_accum} micro-batches/step; AdamW lr={peak_lr:g} (warm-up {warmup}) betas={betas} eps={eps:g} wd={wd:g} clip={clip:g}; "
          f"lambda={cfg.mtp_weight:g} alpha={cfg.seq_aux_alpha:g} gamma={gamma:g}; data={args.data or 'random'}")

    timed_s, timed_tokens, step_times = 0.0, 0, []
    for step in range(args.steps):
        t0 = time.perf_counter()
        lr = peak_lr * min(1.0, (step + 1) / warmup) if warmup > 0 else peak_lr
        for g in opt.param_groups:
            g["lr"] = lr
        for _ in range(args.grad_accum):
            out = model(source.next())
            (out["loss"] / args.grad_accum).backward()
        gnorm = torch.nn.utils.clip_grad_norm_(params, clip) if clip > 0 else torch.tensor(0.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        with torch.no_grad():  # aux-loss-free bias update from this step's expert loads
            for m in moes:
                load = m.load_E.to(m.gate.e_score_correction_bias.dtype)
                m.gate.e_score_correction_bias += gamma * torch.sign(load.mean() - load)
                m.load_E = None
        dt = time.perf_counter() - t0
        if step >= WARMUP_STEPS_UNTIMED:
            timed_s += dt
            timed_tokens += args.grad_accum * B * S
            step_times.append(dt)
        print(f"step {step:4d} loss {out['loss'].item():.5f} lm {out['lm_loss'].item():.5f} "
              f"mtp {out['mtp_loss'].item():.5f} bal {out['balance_loss'].item():.6f} gnorm {float(gnorm):.4f} "
              f"lr {lr:.3g} {dt * 1e3:8.1f} ms{'' if step >= WARMUP_STEPS_UNTIMED else ' (untimed)'}", flush=True)
    med = sorted(step_times)[len(step_times) // 2]
    print(f"timed steps: {len(step_times)}, mean {timed_s / len(step_times) * 1e3:.1f} ms, median {med * 1e3:.1f} ms "
          f"({args.grad_accum * B * S / med:.1f} tokens/s at the median)")
    print(f"torch tokens/s: {timed_tokens / timed_s:.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
