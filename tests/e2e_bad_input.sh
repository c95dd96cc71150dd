#!/usr/bin/env bash
# Bad input through the real binary: each case exits non-zero with one message naming the file
# and key, and writes nothing (the run directory is never created).  Args: MOETRON_BIN BUILD_DIR
set -uo pipefail
BIN=$1; OUT=$2/e2e_bad_input
rm -rf "$OUT"; mkdir -p "$OUT"
pass=0; fail=0
expect_fail() {  # name, expected substring, args...
  local name=$1 want=$2; shift 2
  local rundir="$OUT/run_$name"
  local msg
  msg=$("$BIN" "$@" --set run.dir="$rundir" 2>&1 >/dev/null); local rc=$?
  if [ $rc -eq 0 ]; then echo "FAIL $name: exit 0"; fail=$((fail+1)); return; fi
  if [[ "$msg" != *"$want"* ]]; then echo "FAIL $name: message '$msg' lacks '$want'"; fail=$((fail+1)); return; fi
  if [ -e "$rundir" ]; then echo "FAIL $name: wrote $rundir"; fail=$((fail+1)); return; fi
  echo "ok   $name: $msg"; pass=$((pass+1))
}
printf 'model:\n  hiden_size: 8\n' > "$OUT/typo.yaml"
expect_fail missing_config "nope.yaml" train "$OUT/nope.yaml"
expect_fail unknown_key "hiden_size" train "$OUT/typo.yaml"
expect_fail wrong_type "model.hidden_size" train configs/tiny.yaml --set model.hidden_size=abc
expect_fail float_for_int "model.num_hidden_layers" train configs/tiny.yaml --set model.num_hidden_layers=2.5
expect_fail groups "model.n_group" train configs/tiny.yaml --set model.n_group=5
expect_fail topk_group "model.topk_group" train configs/tiny.yaml --set model.topk_group=9
expect_fail topk "model.num_experts_per_tok" train configs/tiny.yaml --set model.num_experts_per_tok=17
expect_fail missing_data "missing.h5" train configs/tiny.yaml --set data.train_path="$OUT/missing.h5"
echo "not hdf5" > "$OUT/text.h5"
expect_fail foreign_data "text.h5" train configs/tiny.yaml --set data.train_path="$OUT/text.h5"
expect_fail layout "parallel" train configs/tiny.yaml --set parallel.dp=2 --set data.global_batch_size=16
expect_fail bad_set "--set" train configs/tiny.yaml --set model.hidden_size
echo "e2e_bad_input: $pass passed, $fail failed"
[ $fail -eq 0 ]
