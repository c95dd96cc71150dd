"""DeepSeek-V3 model (MLA + DeepSeekMoE + MTP) in plain PyTorch: moetron's independent reference.

Written from /work/shared/SPEC-deepseek-v3.md sections 1.2-1.5 and the task brief, NOT from the C++
code, so that it can serve (1) as the parity reference for the C++ model (tests/torch_ref/parity.py
compares losses and gradients) and (2) as the PyTorch baseline of the training-throughput benchmark
(bench/torch_train.py). Parameter names are the Hugging Face DeepSeek-V3 checkpoint names; the MTP
modules are model.layers.{L .. L+Dm-1}.

What forward(tokens) computes (tokens [B, S+1]; inputs tokens[:, :S], targets tokens[:, 1:]):
  loss = lm_loss + mtp_weight * mtp_loss + balance_loss
  - lm_loss: mean next-token cross-entropy over all B*S positions.
  - mtp_loss: (1/Dm) sum_k L^k, L^k = mean CE of MTP module k over its valid positions.
  - balance_loss: sum over every MoE layer (main and MTP) of the sequence-wise balance loss,
    averaged over the B sequences. MTP module k runs over all S positions (the last k are padded
    with token 0 and have no target) but its balance loss and expert loads count only the S - k
    positions with a target (SPEC §1.5).
Routing (group-limited top-K on sigmoid scores + e_score_correction_bias, ties -> lower index) is
not differentiated; the gating weights are (through the unbiased sigmoid scores).
No YaRN: plain interleaved RoPE with softmax scale (qk_nope + qk_rope)^-0.5.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Dict, List, Mapping, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F


@dataclasses.dataclass
class ModelConfig:
    """Hyper-parameters by their HF DeepSeek-V3 names; defaults as in moetron model/config.h."""

    vocab_size: int = 264
    hidden_size: int = 256
    intermediate_size: int = 512
    moe_intermediate_size: int = 128
    num_hidden_layers: int = 4
    first_k_dense_replace: int = 1
    num_attention_heads: int = 4
    n_routed_experts: int = 16
    n_shared_experts: int = 1
    num_experts_per_tok: int = 4
    n_group: int = 4
    topk_group: int = 2
    routed_scaling_factor: float = 2.5
    q_lora_rank: int = 96
    kv_lora_rank: int = 64
    qk_nope_head_dim: int = 32
    qk_rope_head_dim: int = 16
    v_head_dim: int = 32
    rope_theta: float = 10000.0
    rms_norm_eps: float = 1e-6
    num_nextn_predict_layers: int = 1
    yarn_factor: float = 1.0
    yarn_original_max_position_embeddings: int = 4096
    yarn_beta_fast: float = 32.0
    yarn_beta_slow: float = 1.0
    yarn_mscale: float = 1.0
    max_seq_len: int = 4096
    init_std: float = 0.006
    seq_aux_alpha: float = 1e-4
    lm_head_chunk: int = 4096  # C++ implementation detail; unused here
    mtp_weight: float = 0.3  # lambda (a schedule in the trainer; one value here)

    @classmethod
    def from_mapping(cls, d: Mapping[str, Any], strict: bool = False) -> "ModelConfig":
        """Builds a config from a dict (YAML `model:` section or HDF5 attributes).

        Unknown keys raise if strict, else are returned in cfg.ignored_keys for the caller to report.
        """
        fields = {f.name: f for f in dataclasses.fields(cls)}
        kwargs, ignored = {}, []
        for key, value in d.items():
            if key not in fields:
                if strict:
                    raise KeyError(f"unknown model hyper-parameter {key!r}")
                ignored.append(key)
                continue
            typ = fields[key].type
            if hasattr(value, "item"):  # numpy scalar
                value = value.item()
            if typ in ("int", int):
                if float(value) != int(value):
                    raise ValueError(f"{key}: expected an integer, got {value!r}")
                value = int(value)
            elif typ in ("float", float):
                value = float(value)
            kwargs[key] = value
        cfg = cls(**kwargs)
        cfg.ignored_keys = ignored
        cfg.validate()
        return cfg

    def validate(self) -> None:
        E, G, K = self.n_routed_experts, self.n_group, self.num_experts_per_tok
        checks = [
            (self.hidden_size > 0 and self.vocab_size > 0, "sizes must be positive"),
            (G >= 1 and E % G == 0, f"n_group ({G}) must divide n_routed_experts ({E})"),
            (1 <= self.topk_group <= G, f"topk_group must be in [1, n_group={G}]"),
            (1 <= K <= E, f"num_experts_per_tok must be in [1, {E}]"),
            (K % self.topk_group == 0,
             f"num_experts_per_tok ({K}) must be a multiple of topk_group ({self.topk_group})"),
            (K // self.topk_group <= E // G, "K/topk_group must not exceed the group size"),
            (K <= self.topk_group * (E // G), "topk_group groups must hold at least K experts"),
            (self.qk_rope_head_dim % 2 == 0, "qk_rope_head_dim must be even"),
            (0 <= self.first_k_dense_replace, "first_k_dense_replace must be >= 0"),
            (self.num_nextn_predict_layers >= 0, "num_nextn_predict_layers must be >= 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"invalid model config: {msg}")
        if self.yarn_factor > 1.0 and self.max_seq_len > self.yarn_original_max_position_embeddings:
            raise NotImplementedError("YaRN is not implemented in the torch reference")

    def to_attrs(self) -> Dict[str, Any]:
        """Every field, by name, as plain python int/float (for HDF5 root attributes)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim


# ----------------------------------------------------------------------------------------------
# Building blocks


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * self.weight


def linear(d_in: int, d_out: int) -> nn.Linear:
    return nn.Linear(d_in, d_out, bias=False)


class MLP(nn.Module):
    """SwiGLU: down_proj(silu(gate_proj(x)) * up_proj(x))."""

    def __init__(self, dim: int, inter: int):
        super().__init__()
        self.gate_proj = linear(dim, inter)
        self.up_proj = linear(dim, inter)
        self.down_proj = linear(inter, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


def rope_tables(seq: int, rope_dim: int, theta: float, dtype: torch.dtype, device=None):
    """cos, sin [S, rope_dim/2] for angle pos * theta^(-2i/rope_dim), pos = 0..S-1 (computed in fp64)."""
    inv_freq = theta ** (-torch.arange(0, rope_dim, 2, dtype=torch.float64) / rope_dim)
    ang_SR = torch.arange(seq, dtype=torch.float64)[:, None] * inv_freq[None, :]
    return ang_SR.cos().to(dtype=dtype, device=device), ang_SR.sin().to(dtype=dtype, device=device)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Interleaved pairs (2i, 2i+1): (x0, x1) -> (x0 cos - x1 sin, x0 sin + x1 cos).

    x [B, S, H, R]; cos/sin [S, R/2] (broadcast over B and H).
    """
    x0, x1 = x.unflatten(-1, (-1, 2)).unbind(-1)  # each [B, S, H, R/2]
    c, s = cos[:, None, :], sin[:, None, :]
    return torch.stack((x0 * c - x1 * s, x0 * s + x1 * c), dim=-1).flatten(-2)


class MLA(nn.Module):
    """Multi-head latent attention, explicit (non-absorbed) training form (SPEC 1.3)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        D, H = cfg.hidden_size, cfg.num_attention_heads
        self.cfg = cfg
        if cfg.q_lora_rank > 0:
            self.q_a_proj = linear(D, cfg.q_lora_rank)
            self.q_a_layernorm = RMSNorm(cfg.q_lora_rank, cfg.rms_norm_eps)
            self.q_b_proj = linear(cfg.q_lora_rank, H * cfg.qk_head_dim)
        else:
            self.q_proj = linear(D, H * cfg.qk_head_dim)
        self.kv_a_proj_with_mqa = linear(D, cfg.kv_lora_rank + cfg.qk_rope_head_dim)
        self.kv_a_layernorm = RMSNorm(cfg.kv_lora_rank, cfg.rms_norm_eps)
        self.kv_b_proj = linear(cfg.kv_lora_rank, H * (cfg.qk_nope_head_dim + cfg.v_head_dim))
        self.o_proj = linear(H * cfg.v_head_dim, D)
        self.scale = cfg.qk_head_dim ** -0.5

    def forward(self, x_BSD, cos, sin, mask_SS):
        cfg = self.cfg
        B, S, _ = x_BSD.shape
        H, dn, dr, dv = cfg.num_attention_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim
        if cfg.q_lora_rank > 0:
            q = self.q_b_proj(self.q_a_layernorm(self.q_a_proj(x_BSD)))
        else:
            q = self.q_proj(x_BSD)
        q_nope_BSHn, q_pe_BSHr = q.view(B, S, H, dn + dr).split([dn, dr], dim=-1)
        c_kv_BSC, k_pe_BSr = self.kv_a_proj_with_mqa(x_BSD).split([cfg.kv_lora_rank, dr], dim=-1)
        kv = self.kv_b_proj(self.kv_a_layernorm(c_kv_BSC))
        k_nope_BSHn, v_BSHv = kv.view(B, S, H, dn + dv).split([dn, dv], dim=-1)

        q_pe_BSHr = apply_rope(q_pe_BSHr, cos, sin)
        k_pe_BS1r = apply_rope(k_pe_BSr.unsqueeze(2), cos, sin)  # one key shared by all heads

        q_BHSQ = torch.cat([q_nope_BSHn, q_pe_BSHr], dim=-1).transpose(1, 2)
        k_BHSQ = torch.cat([k_nope_BSHn, k_pe_BS1r.expand(B, S, H, dr)], dim=-1).transpose(1, 2)
        v_BHSV = v_BSHv.transpose(1, 2)

        scores_BHSS = torch.matmul(q_BHSQ, k_BHSQ.transpose(-1, -2)) * self.scale + mask_SS
        probs_BHSS = torch.softmax(scores_BHSS, dim=-1)
        o_BSHV = torch.matmul(probs_BHSS, v_BHSV).transpose(1, 2).reshape(B, S, H * dv)
        return self.o_proj(o_BSHV)


def topk_indices(x: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k largest entries along the last dim, largest first; ties -> lower index.

    (torch.topk does not specify tie order; a stable descending sort does.)
    """
    return torch.sort(x, dim=-1, descending=True, stable=True).indices[..., :k]


class Gate(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(cfg.n_routed_experts, cfg.hidden_size))
        # Selection bias (aux-loss-free balancing): a buffer, so it has no gradient; kept in the
        # state_dict under the HF name mlp.gate.e_score_correction_bias.
        self.register_buffer("e_score_correction_bias", torch.zeros(cfg.n_routed_experts))


class MoE(nn.Module):
    """DeepSeekMoE: sigmoid gate, group-limited top-K routing, routed + shared SwiGLU experts."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.gate = Gate(cfg)
        self.experts = nn.ModuleList(
            [MLP(cfg.hidden_size, cfg.moe_intermediate_size) for _ in range(cfg.n_routed_experts)])
        self.shared_experts = MLP(cfg.hidden_size, cfg.n_shared_experts * cfg.moe_intermediate_size)
        self.record = False      # keep the last scores/selection (parity diagnostics, self-test)
        self.last: Dict[str, torch.Tensor] = {}
        self.track_load = False  # accumulate per-expert assignment counts (bias update in training)
        self.load_E: Optional[torch.Tensor] = None
        self.tail = 0  # positions at each sequence's end without a target (MTP depth k: k)

    @torch.no_grad()
    def route(self, s_NE: torch.Tensor) -> torch.Tensor:
        """Group-limited top-K selection on s + bias. Returns idx [N, K] (no gradient)."""
        cfg = self.cfg
        N, E = s_NE.shape
        G, K, TG = cfg.n_group, cfg.num_experts_per_tok, cfg.topk_group
        sb_NE = s_NE + self.gate.e_score_correction_bias.to(s_NE.dtype)
        if TG < G:
            # group score = sum of the top K/topk_group biased scores inside each group
            top_NGk = torch.sort(sb_NE.view(N, G, E // G), dim=-1, descending=True).values[..., : K // TG]
            gscore_NG = top_NGk.sum(-1)
            keep_NG = torch.zeros(N, G, dtype=torch.bool, device=s_NE.device)
            keep_NG.scatter_(1, topk_indices(gscore_NG, TG), True)
            sb_NE = sb_NE.masked_fill(~keep_NG.repeat_interleave(E // G, dim=1), float("-inf"))
        idx_NK = topk_indices(sb_NE, K)
        if self.record:
            self.last = {"s": s_NE.detach().clone(), "sb_masked": sb_NE.clone(), "idx": idx_NK.clone()}
        return idx_NK

    def dispatch(self, u_ND: torch.Tensor, idx_NK: torch.Tensor, w_NK: torch.Tensor) -> torch.Tensor:
        """sum_k w_k * Expert_{idx_k}(u): assignments sorted by expert, one batched call per expert.

        The gating weight scales the SwiGLU activation before down_proj (w * W2(a) = W2(w * a)),
        and each expert's output is index_add-ed straight into the result.
        """
        N, K = idx_NK.shape
        flat_e = idx_NK.reshape(-1)
        order = torch.sort(flat_e, stable=True).indices   # assignment ids grouped by expert
        tok_A = torch.div(order, K, rounding_mode="floor")  # token of each assignment
        counts = torch.bincount(flat_e, minlength=len(self.experts)).tolist()
        x_AD = u_ND.index_select(0, tok_A)
        w_A1 = w_NK.reshape(-1).index_select(0, order).unsqueeze(1)
        out_ND = torch.zeros_like(u_ND)
        start = 0
        for e, n in enumerate(counts):
            if n == 0:
                continue
            ex, rows = self.experts[e], slice(start, start + n)
            x = x_AD[rows]
            a_nF = F.silu(ex.gate_proj(x)) * ex.up_proj(x) * w_A1[rows]
            out_ND.index_add_(0, tok_A[rows], ex.down_proj(a_nF))
            start += n
        return out_ND

    def balance_loss(self, s_BSE: torch.Tensor) -> torch.Tensor:
        """Sequence-wise balance loss alpha * sum_i f_i P_i, averaged over the B sequences."""
        cfg = self.cfg
        B, S, E = s_BSE.shape
        K = cfg.num_experts_per_tok
        with torch.no_grad():
            idx_BSK = topk_indices(s_BSE, K)  # plain top-K of the unbiased scores, no groups
            cnt_BE = torch.zeros(B, E, dtype=s_BSE.dtype, device=s_BSE.device)
            cnt_BE.scatter_add_(1, idx_BSK.reshape(B, S * K), torch.ones(B, S * K, dtype=s_BSE.dtype))
            f_BE = cnt_BE * (E / (K * S))
        P_BE = (s_BSE / s_BSE.sum(-1, keepdim=True)).mean(dim=1)
        return cfg.seq_aux_alpha * (f_BE * P_BE).sum(-1).mean()

    def forward(self, u_BSD: torch.Tensor):
        cfg = self.cfg
        B, S, D = u_BSD.shape
        u_ND = u_BSD.reshape(B * S, D)
        s_NE = torch.sigmoid(F.linear(u_ND, self.gate.weight))
        idx_NK = self.route(s_NE.detach())
        w_NK = s_NE.gather(1, idx_NK)
        w_NK = w_NK / w_NK.sum(-1, keepdim=True) * cfg.routed_scaling_factor
        out_ND = self.shared_experts(u_ND) + self.dispatch(u_ND, idx_NK, w_NK)
        V = max(S - self.tail, 0)  # the positions with a target count in the loads and the loss
        if self.track_load and self.training:
            load = torch.bincount(idx_NK.view(B, S, -1)[:, :V].reshape(-1), minlength=len(self.experts)).double()
            self.load_E = load if self.load_E is None else self.load_E + load
        if V == 0:
            return out_ND.view(B, S, D), torch.zeros((), dtype=s_NE.dtype, device=s_NE.device)
        return out_ND.view(B, S, D), self.balance_loss(s_NE.view(B, S, -1)[:, :V])


class DecoderLayer(nn.Module):
    """Pre-norm block: h += MLA(input_layernorm(h)); h += FFN(post_attention_layernorm(h))."""

    def __init__(self, cfg: ModelConfig, moe: bool):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.self_attn = MLA(cfg)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.mlp = MoE(cfg) if moe else MLP(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, h_BSD, cos, sin, mask_SS):
        """Returns (h, balance loss of this layer or None)."""
        h_BSD = h_BSD + self.self_attn(self.input_layernorm(h_BSD), cos, sin, mask_SS)
        u_BSD = self.post_attention_layernorm(h_BSD)
        if isinstance(self.mlp, MoE):
            ffn_BSD, bal = self.mlp(u_BSD)
            return h_BSD + ffn_BSD, bal
        return h_BSD + self.mlp(u_BSD), None


class SharedHead(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class MTPLayer(DecoderLayer):
    """MTP module k: enorm/hnorm/eh_proj in front of an MoE block, shared_head.norm after it."""

    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, moe=True)
        D = cfg.hidden_size
        self.enorm = RMSNorm(D, cfg.rms_norm_eps)
        self.hnorm = RMSNorm(D, cfg.rms_norm_eps)
        self.eh_proj = linear(2 * D, D)  # input = [enorm(embedding) | hnorm(hidden)]
        self.shared_head = SharedHead(cfg)


class DeepseekV3Model(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        layers: List[nn.Module] = [DecoderLayer(cfg, moe=l >= cfg.first_k_dense_replace)
                                   for l in range(cfg.num_hidden_layers)]
        layers += [MTPLayer(cfg) for _ in range(cfg.num_nextn_predict_layers)]
        for k in range(1, cfg.num_nextn_predict_layers + 1):
            layers[cfg.num_hidden_layers + k - 1].mlp.tail = k  # depth k: S - k positions count
        self.layers = nn.ModuleList(layers)
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class DeepseekV3ForCausalLM(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.model = DeepseekV3Model(cfg)
        self.lm_head = linear(cfg.hidden_size, cfg.vocab_size)

    def moe_layers(self) -> List[MoE]:
        return [m for m in self.modules() if isinstance(m, MoE)]

    def forward(self, tokens_BS1: torch.Tensor) -> Dict[str, torch.Tensor]:
        cfg = self.cfg
        tokens_BS1 = tokens_BS1.long()
        B, S1 = tokens_BS1.shape
        S, L, Dm = S1 - 1, cfg.num_hidden_layers, cfg.num_nextn_predict_layers
        if S <= Dm:
            raise ValueError(f"seq len {S} leaves no MTP target for depth {Dm}")
        dtype, dev = self.lm_head.weight.dtype, tokens_BS1.device
        V = cfg.vocab_size
        emb = self.model.embed_tokens
        cos, sin = rope_tables(S, cfg.qk_rope_head_dim, cfg.rope_theta, dtype, dev)
        mask_SS = torch.full((S, S), float("-inf"), dtype=dtype, device=dev).triu(1)

        balance = torch.zeros((), dtype=dtype, device=dev)
        h_BSD = emb(tokens_BS1[:, :S])
        for layer in self.model.layers[:L]:
            h_BSD, bal = layer(h_BSD, cos, sin, mask_SS)
            if bal is not None:
                balance = balance + bal
        logits_BSV = self.lm_head(self.model.norm(h_BSD))
        lm_loss = F.cross_entropy(logits_BSV.reshape(-1, V), tokens_BS1[:, 1:].reshape(-1))

        mtp_terms = []
        h_prev_BSD = h_BSD  # main model's last hidden state, before the final norm
        for k in range(1, Dm + 1):
            layer = self.model.layers[L + k - 1]
            # position i sees token i+k; i+k > S is out of range -> id 0 (masked from the loss)
            ids_BS = torch.zeros(B, S, dtype=torch.long, device=dev)
            ids_BS[:, : S + 1 - k] = tokens_BS1[:, k:]
            # target of position i is token i+k+1 (valid for i+k+1 <= S), else ignored
            tgt_BS = torch.full((B, S), -100, dtype=torch.long, device=dev)
            tgt_BS[:, : S - k] = tokens_BS1[:, k + 1:]
            x_BSD = layer.eh_proj(torch.cat([layer.enorm(emb(ids_BS)), layer.hnorm(h_prev_BSD)], dim=-1))
            h_prev_BSD, bal = layer(x_BSD, cos, sin, mask_SS)
            balance = balance + bal
            logits_BSV = self.lm_head(layer.shared_head.norm(h_prev_BSD))
            mtp_terms.append(F.cross_entropy(logits_BSV.reshape(-1, V), tgt_BS.reshape(-1), ignore_index=-100))
        mtp_loss = torch.stack(mtp_terms).mean() if mtp_terms else torch.zeros((), dtype=dtype, device=dev)

        loss = lm_loss + cfg.mtp_weight * mtp_loss + balance
        return {"loss": loss, "lm_loss": lm_loss, "mtp_loss": mtp_loss, "balance_loss": balance}


# ----------------------------------------------------------------------------------------------
# Initialisation and helpers shared by parity.py, make_dump.py and bench/torch_train.py


def init_weights(model: DeepseekV3ForCausalLM, std: float, norm_jitter: float = 0.0,
                 bias_std: float = 0.0, generator: Optional[torch.Generator] = None) -> None:
    """N(0, std) for every matrix (SPEC 2); RMSNorm weights 1 (+ N(0, norm_jitter) for tests);
    e_score_correction_bias 0 (+ N(0, bias_std) for tests)."""
    with torch.no_grad():
        for name, t in model.state_dict(keep_vars=True).items():
            if name.endswith("e_score_correction_bias"):
                t.copy_(torch.randn(t.shape, generator=generator, dtype=torch.float64) * bias_std)
            elif t.dim() == 1:  # RMSNorm weight
                t.copy_(1.0 + torch.randn(t.shape, generator=generator, dtype=torch.float64) * norm_jitter)
            else:
                t.copy_(torch.randn(t.shape, generator=generator, dtype=torch.float64) * std)


def trainable_names(model: nn.Module) -> List[str]:
    return [n for n, _ in model.named_parameters()]
