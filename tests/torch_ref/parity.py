"""Parity test of moetron's C++ model against the torch reference (tests/torch_ref/deepseek_v3.py).

  parity.py DUMP.h5     Loads a dump written by `moetron dump-grads` (or make_dump.py): the
                        hyper-parameters, tokens, float32 weights, losses and float32 gradients.
                        Rebuilds the model with those weights, runs forward+backward in float64
                        (the reference) and float32 (to show how much fp32 noise to expect), and
                        compares: each loss component rel err < 1e-5; each gradient
                        ||g_dump - g_ref|| / (||g_ref|| + 1e-12) < 1e-4. Prints a table, worst
                        first, and exits 1 on any mismatch, missing/extra tensor, or all-zero grads.
  parity.py --self-test Verifies the reference itself: naive loop-based re-implementations of the
                        forward pieces (RoPE, MLA, routing with ties, MoE, balance loss, MTP
                        wiring), float64 finite differences of every loss component for entries
                        of every parameter tensor, and a make_dump round trip that must pass and
                        must fail once a gradient entry, a loss or all gradients are corrupted.

Exit status: 0 pass, 1 mismatch / self-test failure, 2 unreadable or inconsistent dump.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from typing import Dict, List, Optional, Tuple

import h5py
import numpy as np
import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from deepseek_v3 import (MLA, DeepseekV3ForCausalLM, ModelConfig, MoE, apply_rope,  # noqa: E402
                         init_weights, rope_tables)

LOSS_KEYS = ("loss", "lm_loss", "mtp_loss", "balance_loss")
LOSS_RTOL = 1e-5
GRAD_RTOL = 1e-4
# Hyper-parameters a dump must carry (root attributes, HF names).
REQUIRED_ATTRS = (
    "vocab_size", "hidden_size", "intermediate_size", "moe_intermediate_size", "num_hidden_layers",
    "first_k_dense_replace", "num_attention_heads", "n_routed_experts", "n_shared_experts",
    "num_experts_per_tok", "n_group", "topk_group", "routed_scaling_factor", "q_lora_rank",
    "kv_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim", "rope_theta",
    "rms_norm_eps", "num_nextn_predict_layers", "seq_aux_alpha", "mtp_weight") + LOSS_KEYS


class DumpError(Exception):
    pass


# ----------------------------------------------------------------------------------------------
# Dump comparison


def scalar(v):
    a = np.asarray(v)
    if a.size != 1:
        raise DumpError(f"attribute is not a scalar: {v!r}")
    return a.reshape(-1)[0].item()


def read_dump(path: str) -> dict:
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise DumpError(f"{path}: cannot open as HDF5 ({e})")
    with f:
        attrs = {k: f.attrs[k] for k in f.attrs.keys()}
        missing = [k for k in REQUIRED_ATTRS if k not in attrs]
        if missing:
            raise DumpError(f"{path}: missing root attributes {missing}")
        hp = {k: scalar(v) for k, v in attrs.items() if k not in LOSS_KEYS and not isinstance(v, (str, bytes))}
        try:
            cfg = ModelConfig.from_mapping(hp)
        except (ValueError, NotImplementedError) as e:
            raise DumpError(f"{path}: {e}")
        for key in ("tokens", "params", "grads"):
            if key not in f:
                raise DumpError(f"{path}: missing /{key}")
        tokens = np.asarray(f["tokens"][()])
        params = {k: (np.asarray(d[()]), d.dtype) for k, d in f["params"].items()}
        grads = {k: (np.asarray(d[()]), d.dtype) for k, d in f["grads"].items()}
        losses = {k: float(scalar(attrs[k])) for k in LOSS_KEYS}
    return {"cfg": cfg, "tokens": tokens, "params": params, "grads": grads, "losses": losses}


def check_layout(cfg: ModelConfig, dump: dict) -> List[str]:
    """Names, shapes, dtypes and token range. Returns a list of problems (empty = fine)."""
    problems = []
    model = DeepseekV3ForCausalLM(cfg)
    want_params = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    want_grads = {n: tuple(p.shape) for n, p in model.named_parameters()}
    for what, want, got in (("params", want_params, dump["params"]), ("grads", want_grads, dump["grads"])):
        missing = sorted(set(want) - set(got))
        extra = sorted(set(got) - set(want))
        if missing:
            problems.append(f"/{what}: {len(missing)} missing, e.g. {missing[:5]}")
        if extra:
            problems.append(f"/{what}: {len(extra)} unexpected, e.g. {extra[:5]}")
        for n in sorted(set(want) & set(got)):
            arr, dt = got[n]
            if tuple(arr.shape) != want[n]:
                problems.append(f"/{what}/{n}: shape {tuple(arr.shape)}, expected {want[n]}")
            if dt != np.float32:
                problems.append(f"/{what}/{n}: dtype {dt}, expected float32")
            elif not np.all(np.isfinite(arr)):
                problems.append(f"/{what}/{n}: contains non-finite values")
    tok = dump["tokens"]
    if tok.ndim != 2 or tok.shape[1] < 2:
        problems.append(f"/tokens: shape {tok.shape}, expected [B, S+1]")
    elif tok.min() < 0 or tok.max() >= cfg.vocab_size:
        problems.append(f"/tokens: ids outside [0, {cfg.vocab_size})")
    elif tok.shape[1] - 1 <= cfg.num_nextn_predict_layers:
        problems.append(f"/tokens: S = {tok.shape[1] - 1} too short for MTP depth {cfg.num_nextn_predict_layers}")
    return problems


def run_reference(cfg: ModelConfig, tokens: np.ndarray, params: Dict[str, np.ndarray], dtype: torch.dtype):
    """Forward+backward of `loss` in `dtype`. Returns (losses, grads as float64 numpy, routing records)."""
    model = DeepseekV3ForCausalLM(cfg)
    model.load_state_dict({n: torch.from_numpy(np.array(a, dtype=np.float32)) for n, a in params.items()})
    model = model.to(dtype)
    for m in model.moe_layers():
        m.record = True
    out = model(torch.from_numpy(np.asarray(tokens, dtype=np.int64)))
    out["loss"].backward()
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).double().numpy()
             for n, p in model.named_parameters()}
    moe_names = [n for n, m in model.named_modules() if isinstance(m, MoE)]
    routing = {n: m.last for n, m in zip(moe_names, model.moe_layers())}
    return {k: v.item() for k, v in out.items()}, grads, routing


def routing_report(cfg: ModelConfig, r64: dict, r32: dict) -> Tuple[List[str], List[str]]:
    """Compares expert selections of the fp64 and fp32 runs; finds near-ties (fp32 could flip them)."""
    info, warn = [], []
    K, E = cfg.num_experts_per_tok, cfg.n_routed_experts
    for name in r64:
        a, b = r64[name], r32[name]
        sel64 = a["idx"].sort(-1).values
        sel32 = b["idx"].sort(-1).values
        flips = int((sel64 != sel32).any(-1).sum())
        v = a["sb_masked"].sort(-1, descending=True).values
        gap_route = float((v[:, K - 1] - v[:, K]).min()) if K < E else math.inf
        s = a["s"].sort(-1, descending=True).values
        gap_bal = float((s[:, K - 1] - s[:, K]).min()) if K < E else math.inf
        info.append(f"  {name}: tokens routed differently fp64 vs fp32: {flips}; "
                    f"min top-K margin {gap_route:.2e} (selection), {gap_bal:.2e} (balance top-K)")
        if flips or min(gap_route, gap_bal) < 1e-6:
            warn.append(f"{name}: near-tie routing (margin < 1e-6 or fp32 flips); a C++ fp32 run may "
                        f"legitimately select different experts — use another seed if it fails here")
    return info, warn


def compare(path: str, quiet: bool = False) -> int:
    """Full parity check of one dump. Returns the exit status."""
    out = (lambda *a: None) if quiet else print
    try:
        dump = read_dump(path)
        cfg = dump["cfg"]
        problems = check_layout(cfg, dump)
    except DumpError as e:
        out(f"FAIL: {e}")
        return 2
    if problems:
        out(f"FAIL: {path}: the dump does not match the model layout:")
        for p in problems[:40]:
            out("  " + p)
        return 2
    if getattr(cfg, "ignored_keys", None):
        out(f"note: ignored root attributes {cfg.ignored_keys}")
    tokens = dump["tokens"]
    params = {n: a for n, (a, _) in dump["params"].items()}
    B, S = tokens.shape[0], tokens.shape[1] - 1
    out(f"dump {path}: B={B} S={S} L={cfg.num_hidden_layers} D={cfg.hidden_size} E={cfg.n_routed_experts} "
        f"K={cfg.num_experts_per_tok} MTP={cfg.num_nextn_predict_layers} mtp_weight={cfg.mtp_weight} "
        f"alpha={cfg.seq_aux_alpha}")

    loss64, g64, r64 = run_reference(cfg, tokens, params, torch.float64)
    loss32, g32, r32 = run_reference(cfg, tokens, params, torch.float32)
    failed = False

    out("\nlosses                 dump (C++)          torch fp64          rel err    torch fp32 rel  status")
    for k in LOSS_KEYS:
        d, r = dump["losses"][k], loss64[k]
        rel = abs(d - r) / (abs(r) + 1e-12)
        rel32 = abs(loss32[k] - r) / (abs(r) + 1e-12)
        ok = rel < LOSS_RTOL
        failed |= not ok
        out(f"  {k:<20} {d:>18.10g}  {r:>18.10g}  {rel:9.2e}  {rel32:9.2e}      {'ok' if ok else 'FAIL'}")

    rows = []
    for n in g64:
        g_ref, g_dump = g64[n], dump["grads"][n][0].astype(np.float64)
        diff = g_dump - g_ref
        nref = float(np.linalg.norm(g_ref))
        rel = float(np.linalg.norm(diff)) / (nref + 1e-12)
        rel32 = float(np.linalg.norm(g32[n] - g_ref)) / (nref + 1e-12)
        rows.append((rel, n, g_ref.shape, float(np.abs(diff).max()), nref, rel32))
    rows.sort(key=lambda r: (-r[0], r[1]))
    bad = [r for r in rows if not r[0] < GRAD_RTOL]
    failed |= bool(bad)
    out(f"\ngradients ({len(rows)} tensors, tolerance {GRAD_RTOL:g}; worst first)")
    out(f"  {'tensor':<58} {'shape':<14} {'max|diff|':>10} {'||g_ref||':>10} {'rel err':>9} {'fp32 rel':>9}  status")
    shown = rows[:max(25, len(bad) + 5)] if len(rows) > 40 else rows
    for rel, n, shape, mad, nref, rel32 in shown:
        shape_s = "x".join(map(str, shape))
        out(f"  {n:<58} {shape_s:<14} {mad:10.3e} {nref:10.3e} {rel:9.2e} {rel32:9.2e}  "
            f"{'ok' if rel < GRAD_RTOL else 'FAIL'}{'  (ref grad is zero)' if nref == 0 else ''}")
    if len(shown) < len(rows):
        out(f"  ... {len(rows) - len(shown)} more tensors, all with rel err <= {rows[len(shown) - 1][0]:.2e}")

    # a test that cannot fail is worthless: all-zero gradients are a failure
    zero_ref = [r[1] for r in rows if r[4] == 0.0]
    dump_norm = math.sqrt(sum(float(np.linalg.norm(a.astype(np.float64))) ** 2 for a, _ in dump["grads"].values()))
    ref_norm = math.sqrt(sum(r[4] ** 2 for r in rows))
    if dump_norm == 0.0:
        out("FAIL: every gradient in the dump is zero")
        failed = True
    if ref_norm == 0.0:
        out("FAIL: every reference gradient is zero: this dump cannot detect anything")
        failed = True
    elif zero_ref:
        out(f"note: {len(zero_ref)} tensors have an exactly zero reference gradient (e.g. experts no token "
            f"selected): {zero_ref[:4]}{' ...' if len(zero_ref) > 4 else ''}")
    if cfg.seq_aux_alpha > 0 and loss64["balance_loss"] < 1e-3 * loss64["loss"]:
        out(f"note: balance_loss is {loss64['balance_loss']:.2e} of loss {loss64['loss']:.3g}; its gradient is "
            f"a small part of gate.weight's — a larger seq_aux_alpha (e.g. 0.1) tests it harder")

    info, warn = routing_report(cfg, r64, r32)
    out("\nrouting (torch fp64 vs fp32)")
    for line in info:
        out(line)
    for line in warn:
        out("WARNING: " + line)
    worst32 = max(r[5] for r in rows)
    if worst32 >= GRAD_RTOL / 10:
        out(f"WARNING: torch fp32 vs fp64 already differs by {worst32:.2e} on some gradient: "
            f"the tolerance is tight for this config/seed")

    out(f"\n{'FAIL' if failed else 'PASS'}: {len(bad)} of {len(rows)} gradients over tolerance; "
        f"loss rel err {abs(dump['losses']['loss'] - loss64['loss']) / (abs(loss64['loss']) + 1e-12):.2e}")
    return 1 if failed else 0


# ----------------------------------------------------------------------------------------------
# Self-test: naive re-implementations straight from the spec (loops, python sorting, complex RoPE)


def naive_rms(x, w, eps):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def naive_rope(x_SR, theta):
    """Rotate pairs (2i, 2i+1) as complex numbers by pos * theta^(-2i/R)."""
    S, R = x_SR.shape
    z = torch.complex(x_SR[:, 0::2], x_SR[:, 1::2])
    ang = torch.tensor([[p * theta ** (-2.0 * i / R) for i in range(R // 2)] for p in range(S)], dtype=torch.float64)
    z = z * torch.polar(torch.ones_like(ang), ang)
    out = torch.empty_like(x_SR)
    out[:, 0::2], out[:, 1::2] = z.real, z.imag
    return out


def naive_swiglu(x, p, pre):
    return (F.silu(x @ p[pre + "gate_proj.weight"].T) * (x @ p[pre + "up_proj.weight"].T)) @ p[pre + "down_proj.weight"].T


def naive_mla(x_SD, p, pre, cfg):
    S = x_SD.shape[0]
    H, dn, dr, dv, C = (cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim,
                        cfg.v_head_dim, cfg.kv_lora_rank)
    eps = cfg.rms_norm_eps
    if cfg.q_lora_rank > 0:
        q = naive_rms(x_SD @ p[pre + "q_a_proj.weight"].T, p[pre + "q_a_layernorm.weight"], eps) @ p[pre + "q_b_proj.weight"].T
    else:
        q = x_SD @ p[pre + "q_proj.weight"].T
    kva = x_SD @ p[pre + "kv_a_proj_with_mqa.weight"].T
    kv = naive_rms(kva[:, :C], p[pre + "kv_a_layernorm.weight"], eps) @ p[pre + "kv_b_proj.weight"].T
    k_pe = naive_rope(kva[:, C:C + dr], cfg.rope_theta)
    scale = 1.0 / math.sqrt(dn + dr)
    o = torch.zeros(S, H * dv, dtype=x_SD.dtype)
    for h in range(H):
        qh = q[:, h * (dn + dr):(h + 1) * (dn + dr)]
        q_nope, q_pe = qh[:, :dn], naive_rope(qh[:, dn:], cfg.rope_theta)
        kvh = kv[:, h * (dn + dv):(h + 1) * (dn + dv)]
        k_nope, v = kvh[:, :dn], kvh[:, dn:]
        for i in range(S):
            sc = torch.stack([(q_nope[i] @ k_nope[j] + q_pe[i] @ k_pe[j]) * scale for j in range(i + 1)])
            pr = torch.softmax(sc, 0)
            o[i, h * dv:(h + 1) * dv] = sum(pr[j] * v[j] for j in range(i + 1))
    return o @ p[pre + "o_proj.weight"].T


def naive_select(s: List[float], bias: List[float], cfg) -> List[int]:
    """Group-limited top-K with python sorting; ties -> lower index."""
    E, G, K, TG = cfg.n_routed_experts, cfg.n_group, cfg.num_experts_per_tok, cfg.topk_group
    gs = E // G
    sb = [s[e] + bias[e] for e in range(E)]
    gscore = [sum(sorted(sb[g * gs:(g + 1) * gs], reverse=True)[:K // TG]) for g in range(G)]
    groups = sorted(range(G), key=lambda g: (-gscore[g], g))[:TG]
    cand = [e for e in range(E) if e // gs in groups]
    return sorted(cand, key=lambda e: (-sb[e], e))[:K]


def naive_moe(u_SD, p, pre, cfg, V=None):
    """Returns (out [S, D], this sequence's balance loss L_b over its first V positions)."""
    S = u_SD.shape[0]
    V = S if V is None else V
    E, K = cfg.n_routed_experts, cfg.num_experts_per_tok
    s_SE = torch.sigmoid(u_SD @ p[pre + "gate.weight"].T)
    bias = p[pre + "gate.e_score_correction_bias"].tolist()
    out = naive_swiglu(u_SD, p, pre + "shared_experts.")
    rows = []
    f = [0.0] * E
    for t in range(S):
        st = s_SE[t].tolist()
        idx = naive_select(st, bias, cfg)
        w = s_SE[t, idx] / s_SE[t, idx].sum() * cfg.routed_scaling_factor
        rows.append(sum(w[k] * naive_swiglu(u_SD[t:t + 1], p, f"{pre}experts.{e}.")[0] for k, e in enumerate(idx)))
        if t < V:
            for e in sorted(range(E), key=lambda e: (-st[e], e))[:K]:
                f[e] += E / (K * V)
    out = out + torch.stack(rows)
    if V == 0:
        return out, 0.0
    P = [sum(s_SE[t, i] / s_SE[t].sum() for t in range(V)) / V for i in range(E)]
    return out, cfg.seq_aux_alpha * sum(f[i] * P[i] for i in range(E))


def naive_forward(model: DeepseekV3ForCausalLM, tokens: torch.Tensor) -> Dict[str, float]:
    cfg = model.cfg
    p = {n: t.detach() for n, t in model.state_dict().items()}
    B, S = tokens.shape[0], tokens.shape[1] - 1
    L, Dm, V, eps = cfg.num_hidden_layers, cfg.num_nextn_predict_layers, cfg.vocab_size, cfg.rms_norm_eps
    emb, head = p["model.embed_tokens.weight"], p["lm_head.weight"]

    def block(h, n, V=None):
        pre = f"model.layers.{n}."
        h = h + naive_mla(naive_rms(h, p[pre + "input_layernorm.weight"], eps), p, pre + "self_attn.", cfg)
        u = naive_rms(h, p[pre + "post_attention_layernorm.weight"], eps)
        if n >= cfg.first_k_dense_replace:
            out, bal = naive_moe(u, p, pre + "mlp.", cfg, V)
            return h + out, bal
        return h + naive_swiglu(u, p, pre + "mlp."), 0.0

    def nll(logits_V, target):
        return torch.logsumexp(logits_V, 0) - logits_V[target]

    lm_sum, bal_sum = 0.0, 0.0
    mtp_sum, mtp_cnt = [0.0] * Dm, [0] * Dm
    for b in range(B):
        tok = tokens[b].tolist()
        h = emb[tok[:S]]
        for n in range(L):
            h, bal = block(h, n)
            bal_sum += float(bal) / B
        logits = naive_rms(h, p["model.norm.weight"], eps) @ head.T
        lm_sum += sum(float(nll(logits[i], tok[i + 1])) for i in range(S))
        for k in range(1, Dm + 1):
            n = L + k - 1
            pre = f"model.layers.{n}."
            e = emb[[tok[i + k] if i + k <= S else 0 for i in range(S)]]
            x = torch.cat([naive_rms(e, p[pre + "enorm.weight"], eps), naive_rms(h, p[pre + "hnorm.weight"], eps)], -1)
            h, bal = block(x @ p[pre + "eh_proj.weight"].T, n, V=S - k)  # S - k positions have a target
            bal_sum += float(bal) / B
            logits = naive_rms(h, p[pre + "shared_head.norm.weight"], eps) @ head.T
            for i in range(S):
                if i + k + 1 <= S:
                    mtp_sum[k - 1] += float(nll(logits[i], tok[i + k + 1]))
                    mtp_cnt[k - 1] += 1
    lm = lm_sum / (B * S)
    mtp = sum(s / c for s, c in zip(mtp_sum, mtp_cnt)) / Dm if Dm else 0.0
    return {"loss": lm + cfg.mtp_weight * mtp + bal_sum, "lm_loss": lm, "mtp_loss": mtp, "balance_loss": bal_sum}


SELF_TEST_CONFIGS = {
    # q compression, 2 MTP modules, group-limited routing, strong balance loss, 2 shared experts
    "A": dict(vocab_size=37, hidden_size=16, intermediate_size=24, moe_intermediate_size=8, num_hidden_layers=2,
              first_k_dense_replace=1, num_attention_heads=2, n_routed_experts=8, n_shared_experts=2,
              num_experts_per_tok=4, n_group=4, topk_group=2, routed_scaling_factor=2.5, q_lora_rank=12,
              kv_lora_rank=8, qk_nope_head_dim=4, qk_rope_head_dim=4, v_head_dim=6, rope_theta=10000.0,
              rms_norm_eps=1e-6, num_nextn_predict_layers=2, seq_aux_alpha=0.1, mtp_weight=0.3),
    # no q compression (single q_proj), no groups, every main layer MoE, 1 MTP module
    "B": dict(vocab_size=29, hidden_size=12, intermediate_size=16, moe_intermediate_size=6, num_hidden_layers=2,
              first_k_dense_replace=0, num_attention_heads=3, n_routed_experts=6, n_shared_experts=1,
              num_experts_per_tok=2, n_group=1, topk_group=1, routed_scaling_factor=1.5, q_lora_rank=0,
              kv_lora_rank=6, qk_nope_head_dim=2, qk_rope_head_dim=6, v_head_dim=4, rope_theta=500.0,
              rms_norm_eps=1e-5, num_nextn_predict_layers=1, seq_aux_alpha=0.05, mtp_weight=0.2),
    # all dense, no MTP: balance and mtp losses are exactly zero
    "C": dict(vocab_size=23, hidden_size=8, intermediate_size=12, num_hidden_layers=2, first_k_dense_replace=2,
              num_attention_heads=2, n_routed_experts=4, num_experts_per_tok=2, n_group=2, topk_group=1,
              q_lora_rank=6, kv_lora_rank=4, qk_nope_head_dim=2, qk_rope_head_dim=2, v_head_dim=2,
              num_nextn_predict_layers=0),
}


class Checker:
    def __init__(self):
        self.failures: List[str] = []

    def check(self, ok: bool, what: str) -> None:
        print(f"  [{'ok' if ok else 'FAIL'}] {what}")
        if not ok:
            self.failures.append(what)


def tiny_model(key: str, seed: int) -> DeepseekV3ForCausalLM:
    cfg = ModelConfig.from_mapping(SELF_TEST_CONFIGS[key], strict=True)
    model = DeepseekV3ForCausalLM(cfg)
    init_weights(model, 0.3, norm_jitter=0.2, bias_std=0.1, generator=torch.Generator().manual_seed(seed))
    return model.double()


def selections(model) -> List[torch.Tensor]:
    return [m.last["idx"].sort(-1).values.clone() for m in model.moe_layers()]


def fd_check(c: Checker, key: str, seed: int = 1, B: int = 2, S: int = 7, h: float = 1e-5) -> None:
    """Analytic gradients of every loss component vs central differences, float64."""
    model = tiny_model(key, seed)
    for m in model.moe_layers():
        m.record = True
    gen = torch.Generator().manual_seed(seed + 100)
    tokens = torch.randint(0, model.cfg.vocab_size, (B, S + 1), generator=gen)
    named = dict(model.named_parameters())
    out = model(tokens)
    base_sel = selections(model)
    analytic = {}
    for comp in LOSS_KEYS:
        if out[comp].requires_grad:
            gs = torch.autograd.grad(out[comp], list(named.values()), retain_graph=True, allow_unused=True)
        else:
            gs = [None] * len(named)
        analytic[comp] = {n: (g if g is not None else torch.zeros_like(p)) for (n, p), g in zip(named.items(), gs)}

    worst, checked, skipped, bad = 0.0, 0, 0, []
    for n, p in named.items():
        flat_g = analytic["loss"][n].reshape(-1)
        entries = {int(flat_g.abs().argmax()), int(torch.randint(0, p.numel(), (1,), generator=gen))}
        for j in sorted(entries):
            vals = []
            sel_same = True
            for sign in (+1, -1):
                with torch.no_grad():
                    p.view(-1)[j] += sign * h
                o = model(tokens)
                sel_same &= all(torch.equal(a, b) for a, b in zip(base_sel, selections(model)))
                vals.append({k: v.item() for k, v in o.items()})
                with torch.no_grad():
                    p.view(-1)[j] -= sign * h
            if not sel_same:
                skipped += 1
                continue
            checked += 1
            for comp in LOSS_KEYS:
                fd = (vals[0][comp] - vals[1][comp]) / (2 * h)
                an = analytic[comp][n].reshape(-1)[j].item()
                scale = max(abs(fd), abs(an))
                if scale > 1e-4:
                    worst = max(worst, abs(fd - an) / scale)
                if abs(fd - an) > 1e-9 + 1e-5 * scale:  # 1e-9: FD round-off, ~eps * loss / h
                    bad.append(f"{n}[{j}] d{comp}: analytic {an:.10g} fd {fd:.10g}")
    nonzero = {comp: sum(float(g.norm()) for g in analytic[comp].values()) for comp in LOSS_KEYS}
    c.check(not bad and checked > 0 and skipped <= checked // 10,
            f"config {key}: finite differences, {checked} entries x {len(LOSS_KEYS)} loss components "
            f"({skipped} skipped for a routing flip), |fd - g| <= 1e-9 + 1e-5 |g|, worst rel err {worst:.1e} "
            f"(|g| > 1e-4)" + (f"; {bad[:3]}" if bad else ""))
    cfg = model.cfg
    expect_zero = {"mtp_loss": cfg.num_nextn_predict_layers == 0, "balance_loss": not model.moe_layers()}
    for comp in ("lm_loss", "mtp_loss", "balance_loss"):
        if expect_zero.get(comp):
            c.check(nonzero[comp] == 0 and out[comp].item() == 0, f"config {key}: {comp} and its gradient are zero")
        else:
            c.check(nonzero[comp] > 0, f"config {key}: {comp} has a non-zero gradient ({nonzero[comp]:.3g})")


def forward_checks(c: Checker, key: str, seed: int = 2) -> None:
    model = tiny_model(key, seed)
    cfg = model.cfg
    B, S = 2, 6
    tokens = torch.randint(0, cfg.vocab_size, (B, S + 1), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        got = {k: v.item() for k, v in model(tokens).items()}
        want = naive_forward(model, tokens)
    err = max(abs(got[k] - want[k]) / (abs(want[k]) + 1e-12) for k in LOSS_KEYS)
    c.check(err < 1e-12, f"config {key}: loss components equal a naive per-token loop implementation "
            f"(max rel err {err:.1e}; {', '.join(f'{k}={want[k]:.6g}' for k in LOSS_KEYS)})")

    # MLA alone: naive loops, and causality (changing position j leaves positions < j unchanged)
    layer = model.model.layers[0]
    p = {n: t.detach() for n, t in model.state_dict().items()}
    x = torch.randn(1, S, cfg.hidden_size, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    cos, sin = rope_tables(S, cfg.qk_rope_head_dim, cfg.rope_theta, torch.float64)
    mask = torch.full((S, S), float("-inf"), dtype=torch.float64).triu(1)
    with torch.no_grad():
        y = layer.self_attn(x, cos, sin, mask)[0]
        y_naive = naive_mla(x[0], p, "model.layers.0.self_attn.", cfg)
        x2 = x.clone()
        x2[0, 3] += 1.0
        y2 = layer.self_attn(x2, cos, sin, mask)[0]
    c.check(torch.allclose(y, y_naive, rtol=1e-12, atol=1e-12), f"config {key}: MLA equals the naive per-head loop")
    c.check(torch.equal(y[:3], y2[:3]) and not torch.equal(y[3:], y2[3:]), f"config {key}: MLA is causal")


def unit_checks(c: Checker) -> None:
    # RoPE: interleaved implementation vs complex multiplication
    g = torch.Generator().manual_seed(5)
    x = torch.randn(9, 8, dtype=torch.float64, generator=g)
    cos, sin = rope_tables(9, 8, 10000.0, torch.float64)
    c.check(torch.allclose(apply_rope(x[None, :, None, :], cos, sin)[0, :, 0],
                           naive_rope(x, 10000.0), rtol=0, atol=1e-14), "RoPE = complex rotation of pairs (2i, 2i+1)")

    # routing with many exact ties (scores on a coarse grid) vs python sorting
    for key in ("A", "B"):
        cfg = ModelConfig.from_mapping(SELF_TEST_CONFIGS[key], strict=True)
        moe = MoE(cfg).double()
        E, N = cfg.n_routed_experts, 400
        s = torch.randint(0, 4, (N, E), generator=g).double() / 4
        moe.gate.e_score_correction_bias.copy_(torch.randint(0, 3, (E,), generator=g).double() / 4)
        got = moe.route(s).tolist()
        bias = moe.gate.e_score_correction_bias.tolist()
        want = [naive_select(s[t].tolist(), bias, cfg) for t in range(N)]
        c.check(got == want, f"config {key}: group-limited routing with exact ties matches python sorting (lower index wins)")


def dump_round_trip(c: Checker) -> None:
    from make_dump import make_dump
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "dump.h5")
        overrides = dict(SELF_TEST_CONFIGS["A"])
        make_dump(path, overrides, batch=2, seq=9, seed=3, init_std=0.1)
        c.check(compare(path, quiet=True) == 0, "make_dump -> parity passes")

        def corrupt(fn, what):
            bad = os.path.join(d, "bad.h5")
            with open(path, "rb") as src, open(bad, "wb") as dst:
                dst.write(src.read())
            with h5py.File(bad, "r+") as f:
                fn(f)
            c.check(compare(bad, quiet=True) == 1, f"parity fails when {what}")

        def bump_entry(f, name):
            a = f["grads"][name][()]
            j = np.unravel_index(np.abs(a).argmax(), a.shape)
            a[j] += 1e-3 * np.linalg.norm(a)
            f["grads"][name][...] = a

        corrupt(lambda f: bump_entry(f, "model.layers.1.mlp.gate.weight"),
                "one gate.weight grad entry is off by 1e-3 * ||grad||")
        corrupt(lambda f: bump_entry(f, "model.layers.3.self_attn.kv_a_layernorm.weight"),
                "one MTP-module norm grad entry is off by 1e-3 * ||grad||")
        corrupt(lambda f: f.attrs.__setitem__("balance_loss", f.attrs["balance_loss"] * (1 + 1e-4)),
                "balance_loss is off by 1e-4 relative")

        def zero_all(f):
            for ds in f["grads"].values():
                ds[...] = 0

        corrupt(zero_all, "all gradients are zero")

        def scale_all(f):  # a sign/scale bug (e.g. a missing 1/Dm) everywhere
            for ds in f["grads"].values():
                ds[...] = ds[()] * 1.001

        corrupt(scale_all, "every gradient is scaled by 1.001")


def self_test() -> int:
    torch.manual_seed(0)
    c = Checker()
    print("unit checks")
    unit_checks(c)
    print("forward vs naive implementation")
    for key in SELF_TEST_CONFIGS:
        forward_checks(c, key)
    print("gradients vs finite differences (float64)")
    for key in SELF_TEST_CONFIGS:
        fd_check(c, key)
    print("dump round trip")
    dump_round_trip(c)
    print(f"\nself-test {'FAILED: ' + str(len(c.failures)) + ' checks' if c.failures else 'PASSED'}")
    return 1 if c.failures else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("dump", nargs="?", help="HDF5 dump (moetron dump-grads / make_dump.py)")
    ap.add_argument("--self-test", action="store_true", help="verify the torch reference itself")
    args = ap.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.self_test:
        return self_test()
    if not args.dump:
        ap.error("give a dump file or --self-test")
    return compare(args.dump)


if __name__ == "__main__":
    sys.exit(main())
