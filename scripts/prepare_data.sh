#!/usr/bin/env bash
# Prepares the demo corpus for training: fetches the State of the Union addresses (fetch_sotu.sh)
# and converts them with the byte tokenizer into two token files,
#   data/cache/sotu/train.h5  all addresses but the last 8 (by file name, i.e. by year)
#   data/cache/sotu/valid.h5  the last 8 addresses
# using `moetron prepare-text --out FILE.h5 INPUT...`. Holding out the most recent addresses
# keeps validation text out of training. Idempotent: does nothing when both outputs exist and
# are newer than every input; outputs are written atomically by moetron, so an interrupted run
# never leaves a file that looks finished.
#
# Usage: scripts/prepare_data.sh MOETRON_BINARY [OUT_DIR]   (default OUT_DIR: data/cache/sotu)
set -euo pipefail

N_VALID=8

die() {
  echo "prepare_data: error: $*" >&2
  exit 1
}

[[ $# -ge 1 && $# -le 2 ]] || die "usage: $0 MOETRON_BINARY [OUT_DIR]"
moetron="$1"
[[ -f "$moetron" && -x "$moetron" ]] || die "moetron binary '$moetron' not found or not executable"

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
out_dir="${2:-$repo/data/cache/sotu}"
raw="$out_dir/raw"
train_h5="$out_dir/train.h5"
valid_h5="$out_dir/valid.h5"

"$repo/scripts/fetch_sotu.sh" "$raw"

mapfile -t files < <(find "$raw" -maxdepth 1 -type f -name '*.txt' | LC_ALL=C sort)
n=${#files[@]}
((n > N_VALID)) || die "need more than $N_VALID documents in $raw, found $n"
train=("${files[@]:0:n-N_VALID}")
valid=("${files[@]:n-N_VALID}")

up_to_date() {
  local out
  for out in "$train_h5" "$valid_h5"; do
    [[ -f "$out" ]] || return 1
    [[ -z "$(find "$raw" -maxdepth 1 -type f -name '*.txt' -newer "$out" -print -quit)" ]] ||
      return 1
  done
}

if up_to_date; then
  echo "prepare_data: up to date: $train_h5, $valid_h5"
  exit 0
fi

echo "prepare_data: train: ${#train[@]} documents -> $train_h5"
"$moetron" prepare-text --out "$train_h5" "${train[@]}" ||
  die "moetron prepare-text failed for $train_h5"
echo "prepare_data: valid: ${#valid[@]} documents ($(basename "${valid[0]}") .. $(basename "${valid[-1]}")) -> $valid_h5"
"$moetron" prepare-text --out "$valid_h5" "${valid[@]}" ||
  die "moetron prepare-text failed for $valid_h5"
echo "prepare_data: done: $(du -h "$train_h5" | cut -f1) $train_h5, $(du -h "$valid_h5" | cut -f1) $valid_h5"
