#!/usr/bin/env bash
# Cross-implementation parity: the same weights and batch give the same loss and gradients in
# moetron (C++, fp32) and in an independent PyTorch model (tests/torch_ref).  Args: BIN BUILD_DIR
set -euo pipefail
BIN=$1; OUT=$2/e2e_parity
rm -rf "$OUT"; mkdir -p "$OUT"
# a small config with odd sizes; a vocabulary chunk that does not divide the vocabulary
"$BIN" dump-grads configs/tiny.yaml --out "$OUT/dump.h5" \
  --set model.hidden_size=48 --set model.intermediate_size=72 --set model.moe_intermediate_size=20 \
  --set model.num_hidden_layers=3 --set model.num_attention_heads=3 --set model.q_lora_rank=24 \
  --set model.kv_lora_rank=20 --set model.qk_nope_head_dim=10 --set model.qk_rope_head_dim=6 \
  --set model.v_head_dim=9 --set model.lm_head_chunk=100 --set model.seq_aux_alpha=0.01 \
  --set model.init_std=0.05 --set data.seq_len=33 --set data.micro_batch_size=3 \
  --set data.global_batch_size=3
/usr/bin/python3 tests/torch_ref/parity.py "$OUT/dump.h5"
