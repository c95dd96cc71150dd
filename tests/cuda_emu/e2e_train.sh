#!/usr/bin/env bash
# `moetron train` with run.device: cuda on the CUDA emulator (tests/cuda_emu/device.h), against
# the CPU: the trainer's device path end to end — the model, its parameters and AdamW state on the
# device, the device data through parallel.device_comm: mpi (no NCCL here), checkpoints written
# from the device — and checkpoints crossing devices both ways. Run by the sanitizer build's ctest
# (MOETRON_CUDA=EMU) on configs/tiny.yaml narrowed (tests/small_model.sh, 2 layers, 64 tokens a
# step). Checked: the device's losses and gradient norms match the CPU's to 1e-5 relative over
# three steps (fp32); a step-2 checkpoint of either device resumed on the other gives that
# device's own step 3 to the same tolerance; on two emulated GPUs, PP 2 gives one CPU rank's
# numbers and DP 2 x EP 2 the CPU's DP 2 x EP 2 ones, to the same tolerance; and the one-device run
# with the emulated GPU's blocks, threads and streams in a shuffled order (CUDA_EMU_SCHEDULE,
# tests/cuda_emu/streams.cpp) gives the same bits (no result depends on the order of threads); and
# PP 2 x DP 2 x EP 2 with DualPipe on four emulated GPUs over the emulator's NCCL
# (parallel.device_comm: nccl, tests/cuda_emu/nccl.cpp: the communication stream, its event waits
# and the overlapped pairs' exchanges on it) gives the CPU's numbers for that layout.
# usage: e2e_train.sh MOETRON OUT_DIR
set -uo pipefail
# OpenMPI's own allocations of MPI_Init (its plugins') are still held at exit: LeakSanitizer would
# report them as moetron's. Address and UB checks stay on.
export ASAN_OPTIONS="${ASAN_OPTIONS:+$ASAN_OPTIONS:}detect_leaks=0"
BIN=$1; OUT=$2/e2e_emulated_train
rm -rf "$OUT"; mkdir -p "$OUT"
source tests/small_model.sh
SMALL=("${SMALL_MODEL[@]}" --set model.num_hidden_layers=2 --set data.micro_batch_size=2
       --set data.global_batch_size=2 --set run.eval_interval=0 --set run.sample_interval=0
       --set run.save_interval=2)
GPU=(--set run.device=cuda --set parallel.device_comm=mpi)
pass=0; fail=0
ok() { echo "ok   $1"; pass=$((pass+1)); }
bad() { echo "FAIL $1"; fail=$((fail+1)); }
train() {  # dir steps [extra...]
  local dir=$1 steps=$2; shift 2
  $BIN train configs/tiny.yaml "${SMALL[@]}" --set run.steps="$steps" --set run.dir="$dir" "$@" \
    >> "$dir.log" 2>&1 || { echo "FAIL train $dir:"; tail -20 "$dir.log"; exit 1; }
}
# every step's numbers of two runs within 1e-5 relative (compare_metrics.py; RTOL=0: the same)
same() {  # what a/metrics.jsonl b/metrics.jsonl
  local what=$1 a=$2 b=$3
  if python3 tests/compare_metrics.py "$a" "$b" --rtol "${RTOL:-1e-5}" > "$OUT/cmp.txt" 2>&1; then
    ok "$what: $(head -c 300 "$OUT/cmp.txt" | tr '\n' ' ')"
  else
    bad "$what: $(head -c 600 "$OUT/cmp.txt" | tr '\n' ' ')"
  fi
}
losses() { python3 -c "import json,sys; print(' '.join('%.9g' % json.loads(l)['loss'] for l in open(sys.argv[1]) if '\"step\"' in l))" "$1"; }

train "$OUT/cpu" 3
train "$OUT/gpu" 3 "${GPU[@]}"
echo "     cpu losses $(losses "$OUT/cpu/metrics.jsonl")"
echo "     gpu losses $(losses "$OUT/gpu/metrics.jsonl")"
same "three steps, the emulated GPU against the CPU" "$OUT/gpu/metrics.jsonl" "$OUT/cpu/metrics.jsonl"
CUDA_EMU_SCHEDULE=shuffle:7 train "$OUT/gpu_shuffled" 3 "${GPU[@]}"
RTOL=0 same "the emulated GPU, blocks, threads and streams shuffled: the same bits" \
  "$OUT/gpu_shuffled/metrics.jsonl" "$OUT/gpu/metrics.jsonl"

# a step-2 checkpoint from each device, resumed on the other for step 3
train "$OUT/g2c" 2 "${GPU[@]}"
train "$OUT/g2c" 3 --resume auto
same "the GPU's checkpoint resumed on the CPU" "$OUT/g2c/metrics.jsonl" "$OUT/cpu/metrics.jsonl"
train "$OUT/c2g" 2
train "$OUT/c2g" 3 "${GPU[@]}" --resume auto
same "the CPU's checkpoint resumed on the GPU" "$OUT/c2g/metrics.jsonl" "$OUT/cpu/metrics.jsonl"

# several emulated GPUs through mpirun (each rank its own device, the device data over MPI):
# two micro-batches a step
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN=(mpirun --oversubscribe --mca btl self,vader -np 2)
TWO=(--set data.global_batch_size=4)
train "$OUT/cpu4" 3 "${TWO[@]}"
ONE_BIN=$BIN
BIN="${MPIRUN[*]} $BIN"  # (train splits it into words)
# (against the CPU's own DP 2 x EP 2: ep_imbalance and ep_rows_peak are the layout's;
# tests/e2e_parallel_equivalence.sh holds that layout to one rank's losses)
train "$OUT/dp2ep2_cpu" 3 "${TWO[@]}" --set parallel.dp=2 --set parallel.ep=2
train "$OUT/dp2ep2" 3 "${TWO[@]}" "${GPU[@]}" --set parallel.dp=2 --set parallel.ep=2
same "DP 2 x EP 2 on two emulated GPUs against the CPU's" "$OUT/dp2ep2/metrics.jsonl" \
  "$OUT/dp2ep2_cpu/metrics.jsonl"
train "$OUT/pp2" 3 "${TWO[@]}" "${GPU[@]}" --set parallel.pp=2
same "PP 2 on two emulated GPUs against one CPU rank" "$OUT/pp2/metrics.jsonl" "$OUT/cpu4/metrics.jsonl"

# four ranks, NCCL: two micro-batches of one sequence per pipeline
BIN="mpirun --oversubscribe --mca btl self,vader -np 4 $ONE_BIN"
FOUR=(--set data.micro_batch_size=1 --set data.global_batch_size=4 --set parallel.pp=2
      --set parallel.dp=2 --set parallel.ep=2 --set parallel.schedule=dualpipe)
train "$OUT/dualpipe_cpu" 3 "${FOUR[@]}"
train "$OUT/dualpipe" 3 "${FOUR[@]}" --set run.device=cuda
same "PP 2 x DP 2 x EP 2 DualPipe on four emulated GPUs over NCCL against the CPU's" \
  "$OUT/dualpipe/metrics.jsonl" "$OUT/dualpipe_cpu/metrics.jsonl"

echo "e2e_emulated_train: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
