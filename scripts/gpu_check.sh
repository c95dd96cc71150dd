#!/usr/bin/env bash
# The GPU check of the CUDA backend, meant for one H200/H100 in well under 10 minutes:
#   1. configure and build for sm_90a (build-gpu/), unless --prebuilt DIR names a bundle built
#      elsewhere by scripts/gpu_bundle.sh (the binaries and every library they need that the GPU
#      machine lacks, Open MPI's plugins included: the lent machines have no MPI, HDF5 or
#      yaml-cpp, so moetron itself runs only from such a bundle there);
#   2. every GPU test: each CUDA op against its CPU twin, and the whole model on the GPU against
#      the CPU (loss, gradients and three SGD steps per recipe; its loss table is printed);
#   3. the BF16 and FP32 GEMMs on DeepSeek-V3's shapes (TFLOP/s against the 989 TFLOP/s dense
#      BF16 peak), and causal attention at V3's head dims, the fp32 kernels beside the bf16
#      tensor-core ones, and the host <-> GPU copies (the pinned staging ring and pinned
#      snapshots against the plain pageable copies);
#   4. `moetron train` on the GPU (run.device cuda): tiny.yaml 20 steps in fp32 on the GPU twice
#      and on the CPU, the losses side by side (the GPU within 1e-4 relative of the CPU, and bit
#      for bit the same in both GPU runs), a checkpoint of each device resumed on the other, and
#      the mid-size config's MFU on this one GPU (needs data/cache/sotu: scripts/prepare_data.sh);
#   and prints a summary. Exit status: non-zero when a test or a check failed.
# Usage: scripts/gpu_check.sh [--prebuilt DIR] [--quick]
set -uo pipefail
cd "$(dirname "$0")/.."
prebuilt="" quick=""
while (($#)); do
  case $1 in
    --prebuilt) prebuilt=$2; shift 2 ;;
    --quick) quick=--quick; shift ;;
    *) echo "gpu_check: unknown argument $1 (expected --prebuilt DIR, --quick)" >&2; exit 2 ;;
  esac
done

nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader ||
  echo "gpu_check: nvidia-smi failed"
# the hardware profile of the mid-size run (its memory check and MFU): the GPU's own when known
hw=configs/hardware/h200.yaml
case "$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)" in
  *H100*) hw=configs/hardware/h100.yaml ;;
  *H800*) hw=configs/hardware/h800.yaml ;;
esac

if [[ -n $prebuilt ]]; then
  [[ -f $prebuilt/env.sh ]] || { echo "gpu_check: $prebuilt/env.sh: not a gpu_bundle.sh bundle"; exit 1; }
  # shellcheck source=/dev/null
  source "$prebuilt/env.sh"  # unpacks into /tmp/moetron_gpu; MOETRON_BIN, LD_LIBRARY_PATH, MPI
  bin=$MOETRON_BIN
  # cuBLASLt and NCCL from the machine's CUDA (the toolkit or the Python wheels); cuBLASLt is
  # opened on first use (kernels/cuda/cublaslt_api.h), so ldd below does not see it
  for lib in 'libcublasLt.so.13*' 'libnccl.so.2*'; do
    at=$(find /usr/local/cuda*/ /usr/lib /usr/local/lib /opt -name "$lib" 2>/dev/null | head -1)
    [[ -n $at ]] && export LD_LIBRARY_PATH=$(dirname "$at"):$LD_LIBRARY_PATH
    [[ -n $at ]] || echo "gpu_check: no $lib on this machine"
  done
  if ldd "$bin/cuda_tests" "$bin/moetron" | grep "not found"; then
    echo "gpu_check: missing libraries: the GPU tests and runs below cannot start"
  fi
else
  t0=$SECONDS
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOETRON_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90a >/dev/null || exit 1
  cmake --build build-gpu -j"$(nproc)" --target cuda_tests bench_cuda_gemm bench_cuda_attention bench_cuda_copy moetron || exit 1
  echo "gpu_check: build took $((SECONDS - t0)) s"
  bin=build-gpu/tests
  cp build-gpu/bench_cuda_gemm build-gpu/bench_cuda_attention build-gpu/bench_cuda_copy build-gpu/moetron build-gpu/tests/ 2>/dev/null
fi

status=0
echo "== GPU tests (cuda_tests)"
t0=$SECONDS
# every stage has a time limit, so that a hang (a stream wait that never ends) costs minutes, not
# the machine's whole lease; timeout exits 124
timeout 240 "$bin/cuda_tests" --gtest_color=no 2>&1 | tee /tmp/cuda_tests.log | grep -E "^\[  (FAILED|SKIPPED|PASSED) |^\[==|Failure|Expected|Which is|actual|off;|differ|CudaModel table|^  step" 
[[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
echo "gpu_check: tests took $((SECONDS - t0)) s"

echo "== GEMM throughput (bench_cuda_gemm $quick)"
timeout 120 "$bin/bench_cuda_gemm" $quick || status=1

echo "== attention throughput (bench_cuda_attention $quick)"
timeout 120 "$bin/bench_cuda_attention" $quick || status=1

echo "== host <-> GPU copies (bench_cuda_copy $quick)"
timeout 60 "$bin/bench_cuda_copy" $quick || status=1

echo "== moetron train on the GPU"
if [[ -x $bin/moetron && -d data/cache/sotu/train ]]; then
  t0=$SECONDS
  run=/tmp/gpu_check_train && rm -rf $run && mkdir -p $run
  tiny() {  # name, device, steps, more --set ...
    local name=$1 device=$2 steps=$3; shift 3
    timeout 300 "$bin/moetron" train configs/tiny.yaml --set run.device="$device" \
      --set run.steps="$steps" --set run.eval_interval=0 --set run.sample_interval=0 \
      --set run.dir=$run/"$name" "$@" > $run/"$name".log 2>&1 ||
      { echo "gpu_check: train $name failed:"; tail -5 $run/"$name".log; status=1; }
  }
  tiny gpu cuda 20 --set run.save_interval=10
  tiny gpu2 cuda 20
  tiny cpu cpu 20 --set run.save_interval=10
  tiny cpu_to_gpu cuda 20 --resume $run/cpu/checkpoints/step_10
  tiny gpu_to_cpu cpu 20 --resume $run/gpu/checkpoints/step_10
  # several ranks on this one GPU (NCCL refuses two ranks on one GPU: the device data goes over
  # MPI through host copies, parallel.device_comm mpi): PP2 1F1B, and PP2 x DP2 x EP2 DualPipe
  mpi=$bin/mpirun && [[ -x $mpi ]] || mpi=$(command -v mpirun || true)
  ranks() {  # name, device, ranks, more --set ...
    local name=$1 device=$2 np=$3; shift 3
    [[ -n $mpi ]] || { echo "gpu_check: no mpirun: $name skipped"; status=1; return; }
    timeout 300 "$mpi" --oversubscribe --bind-to none -np "$np" "$bin/moetron" train \
      configs/tiny.yaml --set run.device="$device" --set run.steps=10 --set run.eval_interval=0 \
      --set run.sample_interval=0 --set run.save_interval=0 --set parallel.device_comm=mpi \
      --set run.dir=$run/"$name" "$@" > $run/"$name".log 2>&1 ||
      { echo "gpu_check: train $name failed:"; tail -5 $run/"$name".log; status=1; }
  }
  layout4=(--set parallel.pp=2 --set parallel.dp=2 --set parallel.ep=2
           --set parallel.schedule=dualpipe --set data.micro_batch_size=2)
  ranks gpu_pp2 cuda 2 --set parallel.pp=2
  ranks cpu_pp2 cpu 2 --set parallel.pp=2
  ranks gpu_4 cuda 4 "${layout4[@]}"
  ranks cpu_4 cpu 4 "${layout4[@]}"
  # the mid-size config on this one GPU: DP1 x EP1, 16 sequences of 4096 a step, the SOTU corpus;
  # micro-batches of 2 sequences where the GPU has the memory (`moetron plan`: 84 GiB, against
  # 67 GiB for 1): each expert's GEMMs get twice the rows for the same launches
  mid_mb=1
  mem_mib=$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits 2>/dev/null | head -1)
  [[ ${mem_mib:-0} -ge 120000 ]] && mid_mb=2
  echo "gpu_check: mid-size run with micro-batches of $mid_mb sequences"
  mid=(configs/deepseek-v3-mid.yaml --set run.device=cuda
    --set parallel.dp=1 --set parallel.ep=1 --set parallel.ranks_per_node=0
    --set data.global_batch_size=16 --set data.micro_batch_size=$mid_mb
    --set data.batch_ramp_start=0 --set data.batch_ramp_tokens=0
    --set data.train_path=data/cache/sotu/train --set data.tokenizer=data/cache/sotu/tokenizer.json
    --set hardware.profile=$hw --set run.steps=6 --set run.log_interval=1
    --set run.eval_interval=0 --set run.sample_interval=0 --set run.save_interval=0
    --set run.profile_steps=[5,6])
  timeout 300 "$bin/moetron" train "${mid[@]}" --set run.dir=$run/mid > $run/mid.log 2>&1 ||
    { echo "gpu_check: mid-size run failed:"; tail -5 $run/mid.log; }
  # what `moetron plan` says the run holds, against what the GPU's allocator held (metrics)
  "$bin/moetron" plan "${mid[@]}" --world 1 --json > $run/mid.plan.json 2> /dev/null || true
  # where the mid-size steps' GPU time goes, op by op (CUDA events: kernels/op_profile.h)
  grep -A17 "op profile of" $run/mid.log || echo "gpu_check: no op profile in the mid-size log"
  # whether its FP8 GEMMs (the routed experts' padded to 16 rows) reached cuBLASLt
  grep "FP8 GEMMs of rank 0" $run/mid.log || echo "gpu_check: no FP8 GEMM count in the mid-size log"
  # and how many kernels the host launched for its 6 steps (each microseconds of host time)
  grep "kernels launched by rank 0" $run/mid.log || echo "gpu_check: no launch count in the mid-size log"
  grep "launches by kernel" $run/mid.log | cut -c1-400 || true  # the most launched first
  python3 - $run <<'PY' || status=1
import json, os, sys
run = sys.argv[1]
def losses(name):
    p = f"{run}/{name}/metrics.jsonl"
    if not os.path.exists(p): return {}
    rows = {r["step"]: r for r in map(json.loads, open(p)) if "loss" in r}
    for r in rows.values():  # a NaN loss is written as null
        r["loss"] = float("nan") if r["loss"] is None else r["loss"]
    return rows
cpu, gpu, gpu2 = losses("cpu"), losses("gpu"), losses("gpu2")
c2g, g2c = losses("cpu_to_gpu"), losses("gpu_to_cpu")
print("| step | cpu loss | gpu loss | rel. diff | gpu again | cpu ckpt on gpu | gpu ckpt on cpu |")
print("|---:|---:|---:|---:|---:|---:|---:|")
worst, same, ok = 0.0, True, bool(cpu) and len(gpu) == len(cpu)
for s in sorted(cpu):
    c, g = cpu[s]["loss"], gpu.get(s, {}).get("loss", float("nan"))
    d = abs(g - c) / abs(c)
    worst = max(worst, d) if d == d else float("inf")
    same &= gpu2.get(s, {}).get("loss") == g
    print(f"| {s} | {c:.7f} | {g:.7f} | {d:.1e} | {gpu2.get(s, {}).get('loss', float('nan')):.7f} "
          f"| {c2g.get(s, {}).get('loss', float('nan')):.7f} | {g2c.get(s, {}).get('loss', float('nan')):.7f} |")
for name, res in (("cpu ckpt on gpu", c2g), ("gpu ckpt on cpu", g2c)):
    for s, r in res.items():
        d = abs(r["loss"] - cpu[s]["loss"]) / abs(cpu[s]["loss"])
        if not d <= 1e-4: print(f"gpu_check: {name} step {s}: {d:.1e} from the cpu"); ok = False
    ok &= len(res) == 10
for name, ranks in (("pp2", 2), ("4", 4)):  # several ranks on the one GPU vs the CPU
    c, g = losses(f"cpu_{name}"), losses(f"gpu_{name}")
    d = max((abs(g[s]["loss"] - c[s]["loss"]) / abs(c[s]["loss"]) for s in c if s in g),
            default=float("inf"))
    d = d if d == d else float("inf")
    print(f"{ranks} ranks on the GPU ({name}, device data over MPI): {len(g)} steps, worst "
          f"relative loss difference from the CPU {d:.1e}")
    ok &= len(g) == len(c) == 10 and d <= 1e-4
mid = losses("mid")
if mid:
    last = mid[max(mid)]
    print(f"mid-size config on one GPU: step {max(mid)}: {last.get('tokens_per_s_per_device', last.get('tokens_per_s', 0)):.0f} "
          f"tokens/s, MFU {100 * last.get('mfu', 0):.1f}%, {last.get('host_waits', '?')} host waits a step")
    try:
        plan = json.load(open(f"{run}/mid.plan.json"))["ranks"][0]["bytes"]["total"] / 2**30
    except (OSError, ValueError, KeyError):
        plan = float("nan")
    held = max(max(r.get("mem_peak_gib", [0])) for r in mid.values())
    kept = max(max(r.get("mem_reserved_gib", [0])) for r in mid.values())
    print(f"mid-size memory: the allocator held at most {held:.2f} GiB (the pool reserved "
          f"{kept:.2f}); `moetron plan` counts {plan:.2f}")
if gpu:
    print(f"tiny.yaml on the GPU: {gpu[max(gpu)].get('host_waits', '?')} host waits a step "
          "(stream drains: kernels/host_waits.h)")
print(f"gpu vs cpu: worst relative loss difference {worst:.1e} (<= 1e-4: {worst <= 1e-4}); "
      f"two gpu runs bit for bit: {same}")
sys.exit(0 if ok and worst <= 1e-4 and same else 1)
PY
  echo "gpu_check: training took $((SECONDS - t0)) s"
else
  echo "gpu_check: no moetron binary in $bin or no data/cache/sotu: training skipped (a failure)"
  status=1
fi
# the logs, for a caller that keeps $OUT (the device tool brings it back)
if [[ -n ${OUT:-} ]]; then
  mkdir -p "$OUT/gpu_check" && cp /tmp/cuda_tests.log "$OUT/gpu_check/" 2>/dev/null
  for d in /tmp/gpu_check_train/*/; do
    [[ -f $d/metrics.jsonl ]] && cp "$d/metrics.jsonl" "$OUT/gpu_check/$(basename "$d").jsonl"
    [[ -f $d/op_profile/rank_0.tsv ]] && cp "$d/op_profile/rank_0.tsv" "$OUT/gpu_check/$(basename "$d")_op_profile.tsv"
  done
  cp /tmp/gpu_check_train/*.log "$OUT/gpu_check/" 2>/dev/null
fi

echo "== summary"
passed=$(grep -c "^\[       OK \]" /tmp/cuda_tests.log)
failed=$(grep -c "^\[  FAILED  \].*(" /tmp/cuda_tests.log)
skipped=$(grep -c "^\[  SKIPPED \].*(" /tmp/cuda_tests.log)
printf "| GPU tests passed | %s |\n| failed | %s |\n| skipped | %s |\n" "$passed" "$failed" "$skipped"
# every GPU test skips only for want of a usable device: here, with one, a skip is a failure
if ((skipped > 0)); then
  echo "gpu_check: $skipped GPU tests skipped: $(grep -m1 -o "no usable CUDA device.*" /tmp/cuda_tests.log)"
  status=1
fi
grep "^\[  FAILED  \].*(" /tmp/cuda_tests.log
exit $status
