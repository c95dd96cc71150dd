#!/usr/bin/env bash
# Cross-implementation parity: the same weights and batch give the same loss and gradients in
# moetron (C++, fp32) and in an independent PyTorch model (tests/torch_ref), for seeded random
# weights and for the trained weights of a checkpoint (`dump-grads --from`, whose bad inputs
# are checked too).  Args: BIN BUILD_DIR
set -euo pipefail
BIN=$1; OUT=$2/e2e_parity
rm -rf "$OUT"; mkdir -p "$OUT"
# a small config with odd sizes; a vocabulary chunk that does not divide the vocabulary
small=(--set model.hidden_size=48 --set model.intermediate_size=72
  --set model.moe_intermediate_size=20 --set model.num_hidden_layers=3
  --set model.num_attention_heads=3 --set model.q_lora_rank=24 --set model.kv_lora_rank=20
  --set model.qk_nope_head_dim=10 --set model.qk_rope_head_dim=6 --set model.v_head_dim=9
  --set model.lm_head_chunk=100 --set model.seq_aux_alpha=0.01 --set model.init_std=0.05
  --set data.seq_len=33 --set data.micro_batch_size=3 --set data.global_batch_size=3)
"$BIN" dump-grads configs/tiny.yaml --out "$OUT/dump.h5" "${small[@]}"
/usr/bin/python3 tests/torch_ref/parity.py "$OUT/dump.h5"

# trained weights: 4 steps (norms moved, expert biases non-zero), then the checkpoint's gradients
"$BIN" train configs/tiny.yaml "${small[@]}" --set run.steps=4 --set run.save_interval=4 \
  --set run.eval_interval=0 --set run.dir="$OUT/run" > "$OUT/train.log"
ck=$OUT/run/checkpoints/step_4
"$BIN" dump-grads configs/tiny.yaml --from "$ck" --out "$OUT/trained.h5" "${small[@]}"
/usr/bin/python3 tests/torch_ref/parity.py "$OUT/trained.h5"
/usr/bin/python3 - "$OUT/trained.h5" "$ck" <<'PY'
import sys, h5py, numpy as np
sys.path.insert(0, "tests")
from checkpoint_tool import read_params
c = read_params(sys.argv[2])
with h5py.File(sys.argv[1]) as d:
    names = list(c)
    assert names and all(np.array_equal(d["params"][n][...], c[n]) for n in names)
    print(f"dump-grads --from: {len(names)} parameters equal to the checkpoint's")
PY

fails() {  # expected substring, args...: non-zero exit, the message, no dump written
  local want=$1; shift
  local msg; rm -f "$OUT/bad.h5"
  if msg=$("$BIN" dump-grads configs/tiny.yaml --out "$OUT/bad.h5" "$@" 2>&1); then
    echo "FAIL: exit 0 for $*"; exit 1; fi
  [[ "$msg" == *"$want"* ]] || { echo "FAIL: '$msg' lacks '$want'"; exit 1; }
  [ ! -e "$OUT/bad.h5" ] || { echo "FAIL: wrote a dump for $*"; exit 1; }
  echo "ok: $msg"
}
fails "$OUT/nope" --from "$OUT/nope" "${small[@]}"
fails "has another shape" --from "$ck" "${small[@]}" --set model.hidden_size=54
