#!/usr/bin/env bash
# `moetron generate` and the training run's samples end to end, on tiny.yaml's model trained a
# few steps with a context of 32 tokens (so 64 generated tokens cross it twice), and a narrowed one:
#   - the latent cache and the uncached path (--no-cache: the training forward over the whole
#     context at every step) give the same 64 greedy tokens, and the same 64 sampled ones
#     (temperature 1, no top-k, one seed);
#   - the sample a run prints at step N (run.sample_interval) is the greedy text `generate` makes
#     from that step's checkpoint, on one rank and on PP2 x DP2 x EP2 (so the sample gathers
#     the model from every layout, and generate loads a checkpoint of any layout on one process);
#   - samples leave training's numbers alone (losses bit for bit equal with and without);
#   - a byte-level run (prepare-text, no tokenizer.json) generates;
#   - bad input, one clear message and a non-zero exit each: a missing checkpoint, a directory
#     that is neither a checkpoint nor a run, a foreign manifest, a prompt longer than the context,
#     a tokenizer.json that is not the checkpoint's (BPE and byte-level runs), bad options.
# Args: MOETRON_BIN BUILD_DIR
set -uo pipefail
BIN=$1; OUT=$2/e2e_generate
rm -rf "$OUT"; mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source tests/small_model.sh
SMALL=("${SMALL_MODEL[@]}" --set data.micro_batch_size=2 --set data.global_batch_size=16
       --set run.eval_interval=0)
PROMPT="The people of the United States"
pass=0; fail=0
ok() { echo "ok   $1"; pass=$((pass+1)); }
bad() { echo "FAIL $1"; fail=$((fail+1)); }
gen() {  # dir, extra args...: the generated ids (the last line of --print-ids)
  local dir=$1; shift
  "$BIN" generate "$dir" --prompt "$PROMPT" --max-tokens 64 --threads 1 --print-ids "$@" \
    2>>"$OUT/gen.log" | tail -1
}

# 1. configs/tiny.yaml's model on one rank (context 32): samples at steps 3 and 6, checkpoints at
# the same steps
"$BIN" train configs/tiny.yaml --set data.seq_len=32 --set run.threads=2 --set run.eval_interval=0 \
  --set run.log_interval=100 --set run.steps=6 --set run.dir="$OUT/np1" \
  --set run.save_interval=3 --set run.sample_interval=3 --set "run.sample_prompt=$PROMPT" \
  > "$OUT/np1.log" 2>&1 || bad "training np1: $(tail -3 "$OUT/np1.log")"
if [ "$(grep -c '^== step [36] ' "$OUT/np1/samples.txt" 2>/dev/null)" == 2 ] &&
   grep -q "moetron: sample at step 6" "$OUT/np1.log"; then
  ok "run.sample_interval: samples at steps 3 and 6 in the log and samples.txt"
else bad "samples: $(cat "$OUT/np1/samples.txt" 2>&1)"; fi

a=$(gen "$OUT/np1" --temperature 0); b=$(gen "$OUT/np1" --temperature 0 --no-cache)
n=$(wc -w <<<"$a")
u=$(tr ' ' '\n' <<<"$a" | sort -u | wc -l)
if [ -n "$a" ] && [ "$a" == "$b" ] && [ "$n" -ge 1 ]; then
  ok "greedy: cached and uncached give the same $n tokens ($u distinct)"
else bad "greedy cached vs uncached: '$a' vs '$b'"; fi
a=$(gen "$OUT/np1" --temperature 1 --top-k 0 --seed 7)
b=$(gen "$OUT/np1" --temperature 1 --top-k 0 --seed 7 --no-cache)
n=$(wc -w <<<"$a")
u=$(tr ' ' '\n' <<<"$a" | sort -u | wc -l)
if [ "$n" -eq 64 ] && [ "$a" == "$b" ]; then
  ok "sampled ($u distinct) (temperature 1, seed 7): cached and uncached give the same 64 tokens"
else bad "sampled cached vs uncached ($n tokens): '$a' vs '$b'"; fi
c=$(gen "$OUT/np1" --temperature 1 --top-k 0 --seed 8)
if [ "$a" != "$c" ]; then ok "another seed, other tokens"; else bad "seeds 7 and 8 agree"; fi

# the step-N sample is generate's greedy text from step N's checkpoint
same_as_sample() {  # name run_dir step
  local want got
  want=$(awk -v s="== step $3 " 'index($0, s) == 1 {on = 1; next} on && /^$/ {exit} on' \
         "$2/samples.txt")
  got=$("$BIN" generate "$2/checkpoints/step_$3" --prompt "$PROMPT" --max-tokens 64 \
        --temperature 0 --threads 1 2>>"$OUT/gen.log")
  if [ -n "$want" ] && [ "$want" == "$got" ]; then ok "$1: the step-$3 sample equals generate's"
  else bad "$1: sample '$want' vs generate '$got'"; fi
}
same_as_sample "one rank" "$OUT/np1" 3
same_as_sample "one rank" "$OUT/np1" 6

# 2. PP2 x DP2 x EP2 (8 ranks): the sample gathers the model; generate loads it on one process
mpirun --oversubscribe --mca btl self,vader --bind-to none -np 8 "$BIN" train configs/tiny.yaml \
  "${SMALL[@]}" --set parallel.pp=2 --set parallel.dp=4 --set parallel.ep=2 --set run.steps=3 \
  --set run.dir="$OUT/np8" --set run.save_interval=3 --set run.sample_interval=3 \
  --set "run.sample_prompt=$PROMPT" > "$OUT/np8.log" 2>&1 || bad "training np8: $(tail -3 "$OUT/np8.log")"
same_as_sample "PP2 x DP4 x EP2" "$OUT/np8" 3

# samples do not change training: the losses of a run sampling every 2 steps equal bit for bit
# those of a run that never samples (two threads: the samples run on one and restore two)
losses() { /usr/bin/python3 -c "import json,sys; print(' '.join(repr(json.loads(l)['loss']) for l in open(sys.argv[1])))" "$1/metrics.jsonl"; }
for i in 0 2; do
  "$BIN" train configs/tiny.yaml "${SMALL[@]}" --set run.threads=2 --set run.steps=6 \
    --set run.dir="$OUT/interval$i" --set run.sample_interval=$i > "$OUT/interval$i.log" 2>&1
done
if [ -n "$(losses "$OUT/interval0")" ] && [ "$(losses "$OUT/interval0")" == "$(losses "$OUT/interval2")" ] &&
   [ "$(grep -c "^== step" "$OUT/interval2/samples.txt")" == 3 ] && [ ! -e "$OUT/interval0/samples.txt" ]; then
  ok "sampling every 2 steps leaves the losses bit for bit unchanged"
else bad "losses with samples $(losses "$OUT/interval2") vs without $(losses "$OUT/interval0")"; fi

# 3. a byte-level run: tokens are bytes
D=data/cache/sotu/raw
"$BIN" prepare-text --out "$OUT/bytes.h5" $D/1790_george_washington_n.txt \
  $D/1791_george_washington_n.txt > /dev/null
"$BIN" train configs/tiny.yaml "${SMALL[@]}" --set run.steps=2 --set run.dir="$OUT/bytes" \
  --set run.save_interval=2 --set data.train_path="$OUT/bytes.h5" --set data.valid_path= \
  --set data.tokenizer= --set model.vocab_size=264 --set run.sample_interval=2 \
  > "$OUT/bytes.log" 2>&1 || bad "byte-level training: $(tail -3 "$OUT/bytes.log")"
txt=$("$BIN" generate "$OUT/bytes" --prompt "Fellow" --max-tokens 20 --threads 1 2>"$OUT/bytes_gen.log")
if [ $? -eq 0 ] && [[ "$txt" == Fellow* ]] && grep -q "tokenizer bytes-v1" "$OUT/bytes_gen.log" &&
   [ -s "$OUT/bytes/samples.txt" ]; then
  ok "byte-level run: generates ('$(head -c 40 <<<"$txt" | tr -cd '[:print:]')...') and samples"
else bad "byte-level generate: '$txt' $(cat "$OUT/bytes_gen.log")"; fi

# 4. bad input (the message is the first line; usage errors print the usage after it)
expect_err() {  # name, expected substring, generate args...
  local name=$1 want=$2 msg rc; shift 2
  msg=$("$BIN" generate "$@" 2>&1 >/dev/null); rc=$?
  if [ $rc -ne 0 ] && [[ "$(head -1 <<<"$msg")" == *"$want"* ]]; then
    ok "$name (exit $rc): $(head -1 <<<"$msg")"
  else bad "$name: rc $rc: $msg"; fi
}
expect_err missing_checkpoint "nowhere: no such checkpoint or run directory" "$OUT/nowhere" --prompt x
mkdir -p "$OUT/empty"
expect_err not_a_run "neither a checkpoint" "$OUT/empty" --prompt x
mkdir -p "$OUT/foreign"; echo "hello: world" > "$OUT/foreign/manifest.yaml"
expect_err foreign_manifest "not a moetron checkpoint manifest" "$OUT/foreign" --prompt x
mkdir -p "$OUT/no_ckpt/checkpoints"
expect_err no_complete_checkpoint "no complete checkpoint" "$OUT/no_ckpt" --prompt x
long=$(printf 'liberty and union %.0s' $(seq 1 40))
expect_err prompt_too_long "longer than the model's context of 32 tokens" "$OUT/np1" --prompt "$long"
printf 'a tiny corpus of words for another tokenizer, words words words\n' > "$OUT/corpus.txt"
"$BIN" tokenize train --vocab-size 270 --out "$OUT/other.json" "$OUT/corpus.txt" > /dev/null
expect_err foreign_tokenizer "other.json is 'bpe-" "$OUT/np1" --prompt x --tokenizer "$OUT/other.json"
expect_err tokenizer_for_bytes "uses 'bytes-v1'" "$OUT/bytes" --prompt x \
  --tokenizer data/cache/sotu/tokenizer.json
expect_err missing_tokenizer "nope.json" "$OUT/np1" --prompt x --tokenizer "$OUT/nope.json"
expect_err no_prompt "needs --prompt" "$OUT/np1"
expect_err bad_number "--max-tokens needs a number" "$OUT/np1" --prompt x --max-tokens many
expect_err unknown_option "unknown option --temp" "$OUT/np1" --prompt x --temp 1

echo "e2e_generate: $pass passed, $fail failed"
[ $fail -eq 0 ]
