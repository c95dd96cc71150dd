# Sourced by bench/fp8_accuracy.sh and bench/fp8_grad_error.sh: the training settings of the FP8
# experiments (docs/fp8.md) and the precision variants they compare.
#   fp8_common STEPS THREADS  sets the array `common`: sequences of 64 tokens, 8 per step (512
#     tokens/step); LR: 50 warm-up steps, peak until half-way, cosine to min_lr at STEPS; no
#     validation, no checkpoints, a log line every 50 steps.
#   variant[V]  the --set arguments of variant V; label[V] its name in tables and plots.
fp8_common() {
  common=(--set "run.steps=$1" --set data.seq_len=64 --set data.micro_batch_size=8
          --set data.global_batch_size=8 --set schedule.lr.warmup_steps=50
          --set "schedule.lr.constant_until=$(($1 / 2))" --set "schedule.lr.decay_until=$1"
          --set run.eval_interval=0 --set run.save_interval=0
          --set run.log_interval=50 --set "run.threads=$2")
}
# shellcheck disable=SC2034
declare -A variant=(
  [fp32]="--set precision.recipe=fp32"
  [bf16]="--set precision.recipe=bf16"
  [fp8]="--set precision.recipe=fp8"
  [fp8_dgrad128]="--set precision.recipe=fp8 --set precision.fp8_dgrad_tile=128x128"
  [bf16_eps]="--set precision.recipe=bf16 --set optimizer.eps=1.0001e-8"
)
# shellcheck disable=SC2034
declare -A label=(
  [fp32]="fp32" [bf16]="bf16" [fp8]="fp8" [fp8_dgrad128]="fp8 dgrad 128x128"
  [bf16_eps]="bf16, eps x1.0001 (noise floor)"
)
