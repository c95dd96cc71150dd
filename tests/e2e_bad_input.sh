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
expect_fail layout "parallel.pp x parallel.dp" train configs/tiny.yaml --set parallel.dp=2
expect_fail device_word "run.device" train configs/tiny.yaml --set run.device=tpu
expect_fail wait_word "parallel.wait" train configs/tiny.yaml --set parallel.wait=spin
expect_fail ep_imbalance "--ep-imbalance" estimate configs/tiny.yaml --hardware configs/hardware/h100.yaml --ep-imbalance 0.5
expect_fail plan_ep_imbalance "--ep-imbalance needs the busiest EP rank's rows over the mean, >= 1, got 'many'" plan configs/tiny.yaml --ep-imbalance many
# run.device cuda where no GPU can run it (this machine, CI): the build's or the driver's reason
if ! nvidia-smi -L > /dev/null 2>&1; then
  expect_fail cuda_without_gpu "configs/tiny.yaml: run.device: cuda: " train configs/tiny.yaml \
    --set run.device=cuda
fi
# data sources, the batch ramp and validation
D=data/cache/sotu
expect_fail blend_weight "the weight of $D/valid must be a positive number, got '0'" train \
  configs/tiny.yaml --set "data.train_path=1 $D/train/tokens_00000.h5 0 $D/valid"
expect_fail blend_words "expected one path or pairs" train configs/tiny.yaml \
  --set "data.train_path=1 $D/train/tokens_00000.h5 $D/valid"
mkdir -p "$OUT/empty_dir"
expect_fail empty_dir "empty_dir: directory holds no token shards" train configs/tiny.yaml \
  --set data.train_path="$OUT/empty_dir"
head -c 100000 $D/train/tokens_00000.h5 > "$OUT/truncated.h5"
expect_fail truncated_shard "truncated.h5" train configs/tiny.yaml --set data.train_path="$OUT/truncated.h5"
expect_fail vocab_too_small "model.vocab_size is 100 but data.tokenizer" train configs/tiny.yaml \
  --set model.vocab_size=100
"$BIN" prepare-text --out "$OUT/bytes.h5" $D/raw/1790_george_washington_n.txt > /dev/null
expect_fail other_tokenizer "bytes.h5" train configs/tiny.yaml --set data.train_path="$OUT/bytes.h5"
expect_fail missing_tokenizer "nope.json" train configs/tiny.yaml --set data.tokenizer="$OUT/nope.json"
expect_fail eval_without_valid "run.eval_interval: must be 0 unless data.valid_path" train \
  configs/tiny.yaml --set run.eval_interval=5 --set data.valid_path=
expect_fail ramp_start "data.batch_ramp_start: must be <= data.global_batch_size" train \
  configs/tiny.yaml --set data.batch_ramp_start=32 --set data.batch_ramp_tokens=1000
expect_fail ramp_tokens "data.batch_ramp_tokens: must be > 0" train configs/tiny.yaml \
  --set data.batch_ramp_start=8
expect_fail valid_too_short "fewer than one global batch" train configs/tiny.yaml \
  --set run.eval_interval=5 --set data.seq_len=4096 --set data.global_batch_size=128 \
  --set model.max_seq_len=4096
# text samples (run.sample_interval): a prompt longer than the context, BPE shards without their
# tokenizer.json to turn tokens into text
expect_fail sample_prompt_too_long "run.sample_prompt: 37 tokens, longer than the model's context" \
  train configs/tiny.yaml --set data.seq_len=32 \
  --set "run.sample_prompt=$(printf 'the Union %.0s' $(seq 1 18))"
expect_fail sample_without_tokenizer "run.sample_interval: data.train_path data/cache/sotu/train uses tokenizer" \
  train configs/tiny.yaml --set data.tokenizer=
# multi-rank layouts: every rank reports, the job exits non-zero, and nothing hangs
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
expect_fail_np() {  # name, np, expected substring, args...
  local name=$1 np=$2 want=$3; shift 3
  local rundir="$OUT/run_$name" msg rc
  msg=$(timeout 60 mpirun --oversubscribe --mca btl self,vader -np "$np" "$BIN" train \
        configs/tiny.yaml "$@" --set run.dir="$rundir" 2>&1 >/dev/null); rc=$?
  local n; n=$(grep -c "moetron: error: rank .*$want" <<<"$msg")
  if [ $rc -eq 0 ] || [ $rc -eq 124 ]; then echo "FAIL $name: exit $rc"; fail=$((fail+1));
  elif [ "$n" -ne "$np" ]; then echo "FAIL $name: $n of $np ranks said '$want': $msg"; fail=$((fail+1));
  elif [ -e "$rundir" ]; then echo "FAIL $name: wrote $rundir"; fail=$((fail+1));
  else echo "ok   $name: $(grep -m1 "moetron: error" <<<"$msg")"; pass=$((pass+1)); fi
}
expect_fail_np world_size 3 "parallel.pp x parallel.dp" --set parallel.dp=2
expect_fail_np ep_divides_dp 3 "parallel.ep: must divide parallel.dp (3)" --set parallel.dp=3 \
  --set parallel.ep=2 --set data.global_batch_size=24
expect_fail_np layers_cut 2 "parallel.pp: must be <= model.num_hidden_layers (4)" --set parallel.pp=8
expect_fail_np ranks_per_node 2 "ranks_per_node" --set parallel.dp=2 --set parallel.ranks_per_node=3
expect_fail_np too_few_microbatches 2 "too few" --set parallel.pp=2 --set data.global_batch_size=8
expect_fail bad_set "--set" train configs/tiny.yaml --set model.hidden_size
echo "e2e_bad_input: $pass passed, $fail failed"
[ $fail -eq 0 ]
