#!/usr/bin/env bash
# Node-limited routing: EP4 over two "nodes" of 2 ranks (parallel.ranks_per_node=2) with expert
# groups mapped to nodes. With max_nodes_per_token=1 and topk_group=1 no token's experts span two
# nodes (the dispatcher measures it every step); without the limit, tokens do span both (so the
# measurement can fail); an inconsistent limit is refused.  Args: MOETRON_BIN BUILD_DIR
set -uo pipefail
BIN=$1; OUT=$2/e2e_node_limited
rm -rf "$OUT"; mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
SMALL=(--set model.hidden_size=64 --set model.intermediate_size=128 --set model.moe_intermediate_size=32
       --set model.n_routed_experts=8 --set model.n_group=2 --set model.num_experts_per_tok=2
       --set data.seq_len=32 --set data.micro_batch_size=2 --set data.global_batch_size=16
       --set run.threads=1 --set run.steps=3 --set parallel.dp=4 --set parallel.ep=4
       --set parallel.ranks_per_node=2)
run() { mpirun --oversubscribe --mca btl self,vader -np 4 "$BIN" train configs/tiny.yaml "${SMALL[@]}" "$@"; }
nodes() { /usr/bin/python3 -c "import json,sys; print(max(json.loads(l)['max_nodes_per_token'] for l in open(sys.argv[1])))" "$1/metrics.jsonl"; }
pass=0; fail=0
run --set model.topk_group=1 --set parallel.max_nodes_per_token=1 --set run.dir="$OUT/limited" > "$OUT/limited.log" 2>&1
n=$(nodes "$OUT/limited")
if [ "$n" = 1 ]; then echo "ok   limit 1: every token's experts on 1 node"; pass=$((pass+1)); else echo "FAIL limit 1: $n nodes"; fail=$((fail+1)); fi
run --set model.topk_group=2 --set run.dir="$OUT/free" > "$OUT/free.log" 2>&1
n=$(nodes "$OUT/free")
if [ "$n" = 2 ]; then echo "ok   no limit: tokens reach 2 nodes"; pass=$((pass+1)); else echo "FAIL no limit: $n nodes"; fail=$((fail+1)); fi
msg=$(run --set model.topk_group=2 --set parallel.max_nodes_per_token=1 --set run.dir="$OUT/bad" 2>&1 >/dev/null)
if [[ "$msg" == *"max_nodes_per_token (1): model.topk_group (2) must be <= the node limit"* ]] && [ ! -e "$OUT/bad" ]; then
  echo "ok   inconsistent limit refused"; pass=$((pass+1)); else echo "FAIL refuse: $msg"; fail=$((fail+1)); fi
echo "e2e_node_limited: $pass passed, $fail failed"
[ $fail -eq 0 ]
