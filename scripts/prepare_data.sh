#!/usr/bin/env bash
# Prepares the demo corpus for training: fetches the State of the Union addresses (fetch_sotu.sh),
# trains a byte-level BPE tokenizer on the training addresses and encodes both splits into
# HDF5 token shards:
#   data/cache/sotu/tokenizer.json   8192 tokens (BOS/EOS/pad, 256 bytes, 7933 merges), HF format
#   data/cache/sotu/train/           all addresses but the last 8 (by file name, i.e. by year)
#   data/cache/sotu/valid/           the last 8 addresses
# (each a tokens_NNNNN.h5 set + tokens.index.json) with `moetron tokenize train|encode`. Holding
# out the most recent addresses keeps validation text out of training and out of the tokenizer.
# Idempotent: does nothing when every output exists and is newer than every input; moetron
# writes each output atomically (an index only once its shards are complete), so an interrupted
# run never leaves an output that looks finished. VOCAB=N overrides the vocabulary size.
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
tokenizer="$out_dir/tokenizer.json"
train_idx="$out_dir/train/tokens.index.json"
valid_idx="$out_dir/valid/tokens.index.json"
vocab="${VOCAB:-8192}"

"$repo/scripts/fetch_sotu.sh" "$raw"

mapfile -t files < <(find "$raw" -maxdepth 1 -type f -name '*.txt' | LC_ALL=C sort)
n=${#files[@]}
((n > N_VALID)) || die "need more than $N_VALID documents in $raw, found $n"
train=("${files[@]:0:n-N_VALID}")
valid=("${files[@]:n-N_VALID}")

up_to_date() {
  local out
  for out in "$tokenizer" "$train_idx" "$valid_idx"; do
    [[ -f "$out" ]] || return 1
    [[ -z "$(find "$raw" -maxdepth 1 -type f -name '*.txt' -newer "$out" -print -quit)" ]] ||
      return 1
    [[ ! "$tokenizer" -nt "$out" ]] || return 1
  done
}

if up_to_date; then
  echo "prepare_data: up to date: $tokenizer, $out_dir/train, $out_dir/valid"
  exit 0
fi

echo "prepare_data: tokenizer: BPE with $vocab tokens from ${#train[@]} documents -> $tokenizer"
"$moetron" tokenize train --vocab-size "$vocab" --out "$tokenizer" "${train[@]}" ||
  die "moetron tokenize train failed for $tokenizer"
echo "prepare_data: train: ${#train[@]} documents -> $out_dir/train"
mkdir -p "$out_dir/train" "$out_dir/valid"
"$moetron" tokenize encode --tokenizer "$tokenizer" --out "$out_dir/train" "${train[@]}" ||
  die "moetron tokenize encode failed for $out_dir/train"
echo "prepare_data: valid: ${#valid[@]} documents ($(basename "${valid[0]}") .. $(basename "${valid[-1]}")) -> $out_dir/valid"
"$moetron" tokenize encode --tokenizer "$tokenizer" --out "$out_dir/valid" "${valid[@]}" ||
  die "moetron tokenize encode failed for $out_dir/valid"
echo "prepare_data: done: $(du -sh "$out_dir/train" | cut -f1) $out_dir/train, $(du -sh "$out_dir/valid" | cut -f1) $out_dir/valid"
