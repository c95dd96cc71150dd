#!/usr/bin/env bash
# Checkpoints end to end: N+N steps with a resume equal 2N straight steps bit for bit (one rank,
# PP2xEP2xDP2 on 8 ranks, DualPipe, and DualPipe under fp8 with the fp32 masters sharded, resumed
# sharded and whole); resuming on another layout (DP2->DP1, EP2->EP1, PP2->PP1,
# PP1->PP2, DualPipe->1F1B, DualPipeV->ZB1P on PP2 alone, ZB1P->DualPipeV) continues like that
# layout's own run within the equivalence tolerance; SIGTERM saves and exits
# 0; a corrupt newest checkpoint is skipped with a warning; bad checkpoints (also a missing or
# overlapping piece) give clear errors and delete nothing; each element is written once (a DP4
# checkpoint is about as big as a one-rank one); format v1 checkpoints (whole tensors) still
# load; export streams and writes the same bytes as before.  Args: MOETRON_BIN BUILD_DIR
set -uo pipefail
BIN=$1; OUT=$2/e2e_checkpoint
rm -rf "$OUT"; mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
source tests/small_model.sh
SMALL=("${SMALL_MODEL[@]}" --set data.micro_batch_size=2 --set data.global_batch_size=16
       --set run.save_interval=3)
TOOL=(/usr/bin/python3 tests/checkpoint_tool.py)
pass=0; fail=0
ok() { echo "ok   $1"; pass=$((pass+1)); }
bad() { echo "FAIL $1"; fail=$((fail+1)); }
train() {  # dir np pp dp ep steps [extra...]
  local dir=$1 np=$2 pp=$3 dp=$4 ep=$5 steps=$6; shift 6
  mpirun --oversubscribe --mca btl self,vader --bind-to none -np "$np" "$BIN" train \
    configs/tiny.yaml "${SMALL[@]}" --set parallel.pp=$pp --set parallel.dp=$dp \
    --set parallel.ep=$ep --set run.steps=$steps --set run.dir="$dir" "$@" > "$dir.log" 2>&1
}
losses() { /usr/bin/python3 -c "import json,sys; print(' '.join(repr(json.loads(l)['loss']) for l in open(sys.argv[1])))" "$1/metrics.jsonl"; }
close() {  # name a b tol: losses of steps 4..6 of b vs a
  /usr/bin/python3 - "$@" <<'PY'
import sys
name, a, b, tol = sys.argv[1], sys.argv[2].split(), sys.argv[3].split(), float(sys.argv[4])
a, b = [float(x) for x in a[-3:]], [float(x) for x in b[-3:]]
err = max(abs(x - y) / abs(y) for x, y in zip(a, b))
print(f"     {name}: steps 4-6 rel err {err:.2e}")
sys.exit(0 if err <= tol else 1)
PY
}

# 1. bit-exact resume, one rank and eight
for l in "1 1 1 1" "8 2 4 2"; do
  set -- $l
  tag=np$1
  train "$OUT/straight_$tag" $1 $2 $3 $4 6
  train "$OUT/resumed_$tag" $1 $2 $3 $4 3
  train "$OUT/resumed_$tag" $1 $2 $3 $4 6 --resume auto
  if [ "$(losses "$OUT/straight_$tag")" == "$(losses "$OUT/resumed_$tag")" ]; then
    ok "resume is bit-exact on $1 rank(s) (pp $2 dp $3 ep $4)"
  else bad "resume on $1 ranks: $(losses "$OUT/straight_$tag") vs $(losses "$OUT/resumed_$tag")"; fi
done

# 1a. DualPipe (every stage on two ranks, two chunks per rank) resumes bit for bit
train "$OUT/straight_dualpipe" 4 2 2 2 6 --set parallel.schedule=dualpipe
train "$OUT/resumed_dualpipe" 4 2 2 2 3 --set parallel.schedule=dualpipe
train "$OUT/resumed_dualpipe" 4 2 2 2 6 --set parallel.schedule=dualpipe --resume auto
if [ "$(losses "$OUT/straight_dualpipe")" == "$(losses "$OUT/resumed_dualpipe")" ]; then
  ok "resume is bit-exact under DualPipe (pp 2 dp 2 ep 2)"
else bad "DualPipe resume: $(losses "$OUT/straight_dualpipe") vs $(losses "$OUT/resumed_dualpipe")"; fi

# 1a'. fp32 master weights sharded with the optimizer state (fp8 DualPipe PP2 x DP2 x EP2: the
# FP8 Linears' and the head's masters live only in the ZeRO-1 shards): the checkpoint is written
# from the owners' masters and loaded into the shards; resumed sharded, or with the masters whole
# (optimizer.shard_master_weights off), the run continues bit for bit
F8=(--set parallel.schedule=dualpipe --set precision.recipe=fp8)
train "$OUT/straight_fp8" 4 2 2 2 6 "${F8[@]}"
train "$OUT/resumed_fp8" 4 2 2 2 3 "${F8[@]}"
cp -r "$OUT/resumed_fp8" "$OUT/whole_fp8"
train "$OUT/resumed_fp8" 4 2 2 2 6 "${F8[@]}" --resume auto
train "$OUT/whole_fp8" 4 2 2 2 6 "${F8[@]}" --set optimizer.shard_master_weights=off --resume auto
if grep -q "master weights sharded" "$OUT/resumed_fp8.log" &&
   ! grep -q "master weights sharded" "$OUT/whole_fp8.log" &&
   [ "$(losses "$OUT/straight_fp8")" == "$(losses "$OUT/resumed_fp8")" ] &&
   [ "$(losses "$OUT/straight_fp8")" == "$(losses "$OUT/whole_fp8")" ]; then
  ok "sharded fp32 masters resume bit-exactly, sharded and whole (fp8, dualpipe pp 2 dp 2 ep 2)"
else bad "sharded masters resume: $(losses "$OUT/straight_fp8") vs $(losses "$OUT/resumed_fp8") / $(losses "$OUT/whole_fp8")"; fi

# 1b. each element once: the shards of a DP4 checkpoint hold about what one rank's shard holds
# (parameters + Adam moments), not 4x the parameters (format v1: 34.8 MB vs 17.4 MB)
train "$OUT/dp4" 4 1 4 1 3
one=$("${TOOL[@]}" bytes "$OUT/straight_np1/checkpoints/step_6")
four=$("${TOOL[@]}" bytes "$OUT/dp4/checkpoints/step_3")
eight=$("${TOOL[@]}" bytes "$OUT/straight_np8/checkpoints/step_6")
ratio=$(/usr/bin/python3 -c "print(f'{$four / $one:.4f}')")
if /usr/bin/python3 -c "import sys; sys.exit(0 if $four / $one < 1.15 else 1)"; then
  ok "checkpoint bytes: 1 rank $one, DP4 $four (ratio $ratio), PP2xEP2xDP4 $eight"
else bad "checkpoint bytes: 1 rank $one, DP4 $four (ratio $ratio >= 1.15)"; fi

# 1c. a format v1 checkpoint (every rank wrote whole tensors) resumes bit for bit
"${TOOL[@]}" to-v1 "$OUT/straight_np1/checkpoints/step_3" "$OUT/v1_step_3"
train "$OUT/v1_resumed" 1 1 1 1 6 --resume "$OUT/v1_step_3"
if [ "$(losses "$OUT/straight_np1" | cut -d' ' -f4-)" == "$(losses "$OUT/v1_resumed")" ]; then
  ok "a format v1 checkpoint resumes bit-exactly"
else bad "v1 resume: $(losses "$OUT/straight_np1") vs $(losses "$OUT/v1_resumed")"; fi

# 2. reshard: save on layout A at step 3, continue on layout B; compare with B's own run
reshard() {  # name  A(np pp dp ep [schedule])  B(np pp dp ep [schedule])
  local name=$1; local a=($2) b=($3)
  train "$OUT/rs_$name" ${a[0]} ${a[1]} ${a[2]} ${a[3]} 3 --set parallel.schedule=${a[4]:-1f1b}
  train "$OUT/rs_$name" ${b[0]} ${b[1]} ${b[2]} ${b[3]} 6 --set parallel.schedule=${b[4]:-1f1b} \
    --resume auto
  train "$OUT/rsref_$name" ${b[0]} ${b[1]} ${b[2]} ${b[3]} 6 --set parallel.schedule=${b[4]:-1f1b}
  if close "$name" "$(losses "$OUT/rs_$name")" "$(losses "$OUT/rsref_$name")" 2e-5; then
    ok "reshard $name"; else bad "reshard $name"; fi
}
reshard dp2_to_dp1 "2 1 2 1" "1 1 1 1"
reshard ep2_to_ep1 "2 1 2 2" "2 1 2 1"
reshard pp2_to_pp1 "2 2 1 1" "1 1 1 1"
reshard pp1_to_pp2ep2 "1 1 1 1" "4 2 2 2"
reshard dualpipe_to_1f1b "4 2 2 2 dualpipe" "4 2 2 2 1f1b"
reshard dualpipev_to_zb1p "4 2 2 2 dualpipev" "2 2 1 1 zb1p"
reshard zb1p_to_dualpipev "2 2 1 1 zb1p" "4 2 2 2 dualpipev"

# 3. SIGTERM: finish the step, save, exit 0; the resumed run matches the straight one
D="$OUT/sigterm"
"$BIN" train configs/tiny.yaml "${SMALL[@]}" \
  --set run.steps=1000 --set run.save_interval=1000 --set run.dir="$D" > "$D.log" 2>&1 &
pid=$!
for i in $(seq 200); do [ -s "$D/metrics.jsonl" ] && [ "$(wc -l < "$D/metrics.jsonl")" -ge 2 ] && break; sleep 0.1; done
kill -TERM $pid; wait $pid; rc=$?
n=$(wc -l < "$D/metrics.jsonl")
if [ $rc -eq 0 ] && [ -f "$D/checkpoints/step_$n/manifest.yaml" ]; then ok "SIGTERM saved step $n and exited 0"
else bad "SIGTERM: rc $rc, $(ls "$D/checkpoints" 2>&1)"; fi

# 3b. SIGKILL of one rank mid-run: the job ends (no hang) with a message naming the lost rank;
# relaunching with --resume auto continues from the last complete checkpoint and reproduces the
# uninterrupted run bit for bit
D="$OUT/crash"
timeout 120 mpirun --oversubscribe --mca btl self,vader --bind-to none -np 4 "$BIN" train \
  configs/tiny.yaml "${SMALL[@]}" --set parallel.pp=2 --set parallel.dp=2 --set run.steps=40 \
  --set run.save_interval=2 --set run.dir="$D" > "$D.log" 2>&1 &
job=$!
for i in $(seq 600); do [ -s "$D/metrics.jsonl" ] && [ "$(wc -l < "$D/metrics.jsonl")" -ge 5 ] && break; sleep 0.1; done
victim=$(pgrep -f "run.dir=$D" | sort -n | tail -1)
kill -KILL "$victim"
wait $job; rc=$?
last=$(ls "$D/checkpoints" | grep -v '\.' | sed 's/step_//' | sort -n | tail -1)
if [ $rc -ne 0 ] && [ $rc -ne 124 ] && grep -q "exited on signal 9" "$D.log"; then
  ok "SIGKILL of a rank ends the job: $(grep -o 'process rank [0-9]* with PID [0-9]* on node [^ ]* exited on signal 9' "$D.log" | head -1)"
else bad "SIGKILL: rc $rc: $(tail -5 "$D.log")"; fi
train "$D" 4 2 2 1 $((last + 3)) --resume auto
train "$OUT/crash_ref" 4 2 2 1 $((last + 3))
if [ "$(losses "$OUT/crash_ref" | cut -d' ' -f$((last + 1))-)" == "$(tail -3 "$D/metrics.jsonl" | python3 -c "import json,sys; print(' '.join(repr(json.loads(l)['loss']) for l in sys.stdin))")" ]; then
  ok "after the crash, resume from step $last reproduces the uninterrupted run"
else bad "crash resume: $(losses "$OUT/crash_ref") vs $(tail -3 "$D/metrics.jsonl")"; fi

# 4. a corrupt newest checkpoint is skipped with a warning naming it; nothing is deleted
train "$OUT/corrupt" 1 1 1 1 6
python3 - "$OUT/corrupt/checkpoints/step_6/rank_0.h5" <<'PY'
import sys
with open(sys.argv[1], "r+b") as f:
    f.seek(4000); b = f.read(1); f.seek(4000); f.write(bytes([b[0] ^ 1]))
PY
train "$OUT/corrupt" 1 1 1 1 7 --resume auto --set run.save_interval=100
if grep -q "skipping checkpoint .*step_6.*checksum" "$OUT/corrupt.log" && grep -q "resumed from .*step_3" "$OUT/corrupt.log" \
   && [ -d "$OUT/corrupt/checkpoints/step_6" ]; then ok "corrupt newest checkpoint skipped"; else bad "corrupt: $(cat "$OUT/corrupt.log")"; fi

# 5. clear errors: explicit corrupt checkpoint, another model shape
expect_err() {  # name want args...
  local name=$1 want=$2; shift 2
  local msg; msg=$("$BIN" train configs/tiny.yaml "${SMALL[@]}" --set run.steps=9 "$@" 2>&1 >/dev/null); local rc=$?
  if [ $rc -ne 0 ] && [[ "$msg" == *"$want"* ]]; then ok "$name: $msg"; else bad "$name: rc $rc: $msg"; fi
}
expect_err explicit_corrupt "checksum mismatch" --set run.dir="$OUT/x1" --resume "$OUT/corrupt/checkpoints/step_6"
cp -r "$OUT/corrupt/checkpoints/step_3" "$OUT/truncated"
truncate -s 100000 "$OUT/truncated/rank_0.h5"
expect_err truncated "bytes, the manifest says" --set run.dir="$OUT/x5" --resume "$OUT/truncated"
expect_err other_shape "model.hidden_size" --set run.dir="$OUT/x2" --set model.hidden_size=96 --resume "$OUT/corrupt/checkpoints/step_3"
cp data/cache/sotu/train/tokens_00000.h5 "$OUT/other_tok.h5"
/usr/bin/python3 -c "import h5py,sys; f=h5py.File(sys.argv[1],'r+'); f.attrs['tokenizer']='other-bpe-v1'; f.close()" "$OUT/other_tok.h5"
expect_err other_tokenizer "checkpoint was trained on tokenizer 'bpe-" --set run.dir="$OUT/x4" --set data.train_path="$OUT/other_tok.h5" --set data.tokenizer= --set run.sample_interval=0 --resume "$OUT/corrupt/checkpoints/step_3"
expect_err missing_dir "manifest.yaml: missing" --set run.dir="$OUT/x3" --resume "$OUT/nowhere"
x_made=""; for x in x1 x2 x3 x4 x5; do [ -e "$OUT/$x" ] && x_made+=" $x"; done
if [ -z "$x_made" ]; then ok "a refused resume writes no run directory"; else bad "refused resumes wrote:$x_made"; fi
# a missing or an overlapping piece (checksums redone, so only the piece check sees it): resume
# and export fail naming the checkpoint file and tensor; export writes nothing
cp -r "$OUT/straight_np8/checkpoints/step_6" "$OUT/drop-piece"
"${TOOL[@]}" drop-piece "$OUT/drop-piece" model.embed_tokens.weight  # 1 of its 4 DP pieces
cp -r "$OUT/straight_np8/checkpoints/step_6" "$OUT/dup-piece"
"${TOOL[@]}" dup-piece "$OUT/dup-piece" model.layers.1.mlp.experts.3.up_proj.weight
expect_err missing_piece "of model.embed_tokens.weight (a missing piece)" \
  --set run.dir="$OUT/x6" --resume "$OUT/drop-piece"
expect_err overlapping_piece "model.layers.1.mlp.experts.3.up_proj.weight [0, " \
  --set run.dir="$OUT/x7" --resume "$OUT/dup-piece"
msg=$("$BIN" export "$OUT/dup-piece" "$OUT/x8" 2>&1 >/dev/null); rc=$?
if [ $rc -ne 0 ] && [[ "$msg" == *"/dup-piece/rank_"*".h5 ("*"overlaps"* ]] && [ ! -e "$OUT/x8" ]; then
  ok "export of an overlapping piece: $msg"; else bad "export overlap: rc $rc: $msg"; fi
# 5b. an unwritable run directory, and a disk that fills up during the second save: a clear
# error, a non-zero exit, and the first (complete) checkpoint is left intact and loadable
touch "$OUT/a_file"
expect_err unwritable_dir "cannot create run directory" --set run.dir="$OUT/a_file/run"
FS="$OUT/smallfs"; mkdir -p "$FS"
if mount -t tmpfs -o size=24m tmpfs "$FS" 2>/dev/null; then
  msg=$("$BIN" train configs/tiny.yaml "${SMALL[@]}" --set run.steps=6 --set run.dir="$FS/run" 2>&1 >/dev/null); rc=$?
  if [ $rc -ne 0 ] && [[ "$msg" == *"checkpoint of step 6 failed"* ]] && [ ! -e "$FS/run/checkpoints/step_6.tmp" ] \
     && "$BIN" train configs/tiny.yaml "${SMALL[@]}" --set run.steps=4 --set run.save_interval=0 \
          --set run.dir="$FS/run" --resume "$FS/run/checkpoints/step_3" > /dev/null 2>&1; then
    ok "disk full during a save: $msg; step_3 intact and loadable"
  else bad "disk full: rc $rc: $msg $(ls -R "$FS/run/checkpoints")"; fi
  umount "$FS"
else
  echo "skip disk-full case: cannot mount a tmpfs here (needs root)"
fi

# 6. export: safetensors (fp32 exact, bf16 within its rounding), index and config.json, read back
# with a plain reader of the format and compared with the checkpoint's shards; the file is byte
# for byte what export wrote before it streamed (tests/checkpoint_tool.py safetensors, checked
# equal to that export's output on v1 and v2 checkpoints of 1 and 8 ranks), also from format v1
for dt in fp32 bf16; do
  "$BIN" export "$OUT/straight_np8/checkpoints/step_6" "$OUT/export_$dt" --dtype $dt > /dev/null
  "${TOOL[@]}" safetensors "$OUT/straight_np8/checkpoints/step_6" "$OUT/export_ref_$dt" $dt
  if cmp "$OUT/export_ref_$dt" "$OUT/export_$dt/model-00001-of-00001.safetensors"; then
    ok "export $dt: byte-identical to the whole-model export ($(sha256sum < "$OUT/export_ref_$dt" | cut -c1-16)...)"
  else bad "export $dt differs from the whole-model export"; fi
  if /usr/bin/python3 - "$OUT/export_$dt" "$OUT/straight_np8/checkpoints/step_6" $dt <<'PY'
import json, struct, sys
import numpy as np
sys.path.insert(0, "tests")
from checkpoint_tool import read_params
d, ck, dt = sys.argv[1:4]
idx = json.load(open(f"{d}/model.safetensors.index.json"))
cfg = json.load(open(f"{d}/config.json"))
assert cfg["hidden_size"] == 64 and cfg["model_type"] == "deepseek_v3", cfg
t = {}
for f in sorted(set(idx["weight_map"].values())):
    b = open(f"{d}/{f}", "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    for k, v in json.loads(b[8:8 + n]).items():
        if k == "__metadata__":
            continue
        s, e = v["data_offsets"]
        a = np.frombuffer(b[8 + n + s:8 + n + e], np.float32 if v["dtype"] == "F32" else np.uint16)
        if v["dtype"] == "BF16":
            a = (a.astype(np.uint32) << 16).view(np.float32)
        t[k] = a.reshape(v["shape"])
ref = read_params(ck)
assert set(t) == set(ref) == set(idx["weight_map"]), "names differ"
err = max(float(np.max(np.abs(t[k] - ref[k]) / (np.abs(ref[k]) + 1e-30))) for k in t)
assert err <= (0 if dt == "fp32" else 2 ** -8), err
print(f"     export {dt}: {len(t)} tensors, max rel err {err:.2e}")
PY
  then ok "export $dt"; else bad "export $dt"; fi
done
"$BIN" export "$OUT/v1_step_3" "$OUT/export_v1" --dtype bf16 > /dev/null
"${TOOL[@]}" safetensors "$OUT/straight_np1/checkpoints/step_3" "$OUT/export_ref_v1" bf16
if cmp "$OUT/export_ref_v1" "$OUT/export_v1/model-00001-of-00001.safetensors"; then
  ok "export of a format v1 checkpoint"; else bad "export of a format v1 checkpoint differs"; fi

echo "e2e_checkpoint: $pass passed, $fail failed"
[ $fail -eq 0 ]
