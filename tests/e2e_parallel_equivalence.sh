#!/usr/bin/env bash
# The test that matters most for a distributed trainer: a small DeepSeek-V3-shaped model trained
# for 10 steps on one rank and on DP2, EP2 (in DP2), PP2, PP2xDP2 and PP2xEP2xDP2 (8 ranks), with
# 1f1b and zb1p where PP > 1 (the cost-balanced default cut, and one explicit
# parallel.stage_layers), and with DualPipe (PP2, PP4, and PP2 x DP4 with EP2 inside: 8
# ranks at one sequence per micro-batch, so the 16-sequence batch still makes 2P micro-batches)
# and DualPipeV (PP2: 4 stages in a V; PP2 x DP2 x EP2), gives the same per-step losses and
# gradient norms and the same final parameters (every tensor by its HF name, experts gathered
# from their EP shards). Under DualPipe every stage lives on two ranks (the twins): their copies
# must agree bit for bit, which the replicated-tensor check below sees. And the overlap itself
# changes no arithmetic: PP2xDP2xEP2 DualPipe with its forward+backward pairs run piece by piece
# (parallel.overlap=interleave) and with the DP reduce-scatter started during the backward
# (optimizer.overlap_grad_reduce, small buckets so most of them start early) writes bitwise the
# losses and parameters of pairs run forward-then-backward (none) and the reduction at the end.
# Tolerance: summation orders differ between layouts (DP/EDP reductions, EP combine and the order
# of received rows in expert GEMMs, per-shard norm), so equality is to fp32 round-off, which
# training then amplifies step by step (measured: ~1e-9 after step 1 growing ~x3 a step at peak LR
# 3e-3). At LR 1e-3 the worst cases over 10 steps are loss 2e-8, grad norm 3e-7, parameters 6e-6;
# the test allows 1e-6 / 1e-5 / 2e-5. A real error (a missing reduction, a wrong gradient) is
# orders of magnitude larger. How a rank waits (parallel.wait: sleeping or polling) changes no
# data either: PP2 x DP2 x EP2 DualPipe both ways, bit for bit. Nor does padding each routed
# expert's rows with zero rows to 16 (precision.expert_row_align, the GPU's FP8 default): EP2 in
# DP2 under the fp8 recipe, bit for bit with and without. Nor does deferring the FP8 weight
# gradients (zb1p against 1f1b at PP2), which then read the dY their micro-batch kept as FP8 tiles.
# Nor does keeping the fp32 master weights of the FP8 Linears only in the ZeRO-1 shards
# (optimizer.shard_master_weights): PP2 x DP2 x EP2 DualPipe under fp8, bit for bit on and off.
# Keeping the blocks' inputs in bf16 (activations.block_input: the stream through one fp32 buffer
# per model chunk, the backward widening the kept inputs there): PP2 x DP2 x EP2 DualPipe against
# one rank, both with bf16 storage and recompute — step 1 to the tolerance above, the later steps
# to 1e-4 only, because bf16 storage rounds the Linears' inputs and a layout's 1e-9 differences
# flip some of those roundings from step 2 on (bf16 storage alone does the same) — and its pairs
# interleaved against run forward-then-backward, bit for bit.
# The data are the corpus's bytes (vocab 264): with the 8K BPE vocabulary most embedding rows get
# tiny, sparse gradients that AdamW turns into full-size updates, which amplifies round-off until
# a near-tied top-k choice flips within 10 steps (seen as a different expert_imbalance) — a
# legitimate difference, but not the one this test is after. Args: MOETRON_BIN BUILD_DIR
set -euo pipefail
BIN=$1; OUT=$2/e2e_parallel_equivalence
rm -rf "$OUT"; mkdir -p "$OUT"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
MPIRUN=(mpirun --oversubscribe --mca btl self,vader --bind-to none)
"$BIN" prepare-text --out "$OUT/bytes.h5" data/cache/sotu/raw > /dev/null
source tests/small_model.sh
SMALL=("${SMALL_MODEL[@]}" --set run.steps=10 --set data.micro_batch_size=2
       --set data.global_batch_size=16 --set schedule.lr.peak=1e-3 --set model.vocab_size=264
       --set data.train_path="$OUT/bytes.h5" --set data.tokenizer= --set data.valid_path=
       --set run.eval_interval=0 --set optimizer.grad_bucket_elements=20000)
run() {  # name np pp dp ep schedule [--set ...]
  local name=$1 np=$2 pp=$3 dp=$4 ep=$5 schedule=$6
  shift 6
  "${MPIRUN[@]}" -np "$np" "$BIN" train configs/tiny.yaml "${SMALL[@]}" --set parallel.pp=$pp \
    --set parallel.dp=$dp --set parallel.ep=$ep --set parallel.schedule=$schedule "$@" \
    --set run.dir="$OUT/$name" --set run.save_params="$OUT/$name/params" > "$OUT/$name.log" 2>&1 \
    || { cat "$OUT/$name.log"; exit 1; }
}
run ref 1 1 1 1 1f1b
run dp2 2 1 2 1 1f1b
run ep2 2 1 2 2 1f1b
run pp2_1f1b 2 2 1 1 1f1b
run pp2_zb1p 2 2 1 1 zb1p
run pp2_cut1 2 2 1 1 1f1b --set "parallel.stage_layers=[0,1]"  # an explicit cut: 1 + 3 layers
run pp2dp2_1f1b 4 2 2 1 1f1b
run pp2dp2_zb1p 4 2 2 1 zb1p
run pp2ep2dp2_1f1b 8 2 4 2 1f1b
run pp2ep2dp2_zb1p 8 2 4 2 zb1p
run pp2_dualpipe 2 2 1 1 dualpipe
run pp2_dualpipev 2 2 1 1 dualpipev
run pp4_dualpipe 4 4 1 1 dualpipe
run pp2ep2dp4_dualpipe 8 2 4 2 dualpipe --set data.micro_batch_size=1
run pp2ep2dp2_dualpipev 4 2 2 2 dualpipev
run pp2ep2dp2_dualpipe 4 2 2 2 dualpipe --set parallel.wait=sleep
run pp2ep2dp2_dualpipe_poll 4 2 2 2 dualpipe --set parallel.wait=poll
grep -q "sleeping MPI waits" "$OUT/pp2ep2dp2_dualpipe.log"
grep -q "polling MPI waits" "$OUT/pp2ep2dp2_dualpipe_poll.log"
run pp2ep2dp2_dualpipe_none 4 2 2 2 dualpipe --set parallel.overlap=none \
  --set optimizer.overlap_grad_reduce=off
# FP8 routed experts with each expert's rows padded to 16 after the EP exchange (the offsets the
# exchange brought, padded on the host) against no padding: bit for bit
run ep2_fp8 2 1 2 2 1f1b --set precision.recipe=fp8 --set precision.expert_row_align=1
run ep2_fp8_align16 2 1 2 2 1f1b --set precision.recipe=fp8 --set precision.expert_row_align=16
# FP8 weight gradients deferred by zb1p (the micro-batch keeps dY as the Wgrads' FP8 tiles in the
# executor's pooled gradient sets) against 1f1b's, run at once: bit for bit
run pp2_fp8_1f1b 2 2 1 1 1f1b --set precision.recipe=fp8
run pp2_fp8_zb1p 2 2 1 1 zb1p --set precision.recipe=fp8
# fp32 master weights sharded with the optimizer state (the FP8 Linears' copies remade from each
# step's all-gather; dense over the twins' DP 4, experts over EDP 2) against held whole: bit for bit
run pp2ep2dp2_dualpipe_fp8 4 2 2 2 dualpipe --set precision.recipe=fp8
run pp2ep2dp2_dualpipe_fp8_whole 4 2 2 2 dualpipe --set precision.recipe=fp8 \
  --set optimizer.shard_master_weights=off
grep -q "master weights sharded" "$OUT/pp2ep2dp2_dualpipe_fp8.log"
# bf16 storage with the blocks' inputs kept in bf16 (the residual stream through one buffer per
# model chunk) against one rank, and with DualPipe's pairs not interleaved
BI=(--set activations.storage=bf16 --set activations.block_input=storage
    --set activations.recompute_norms=on)
run ref_bi 1 1 1 1 1f1b "${BI[@]}"
run pp2ep2dp2_dualpipe_bi 4 2 2 2 dualpipe "${BI[@]}"
run pp2ep2dp2_dualpipe_bi_none 4 2 2 2 dualpipe "${BI[@]}" --set parallel.overlap=none
/usr/bin/python3 - "$OUT" <<'PY'
import glob, json, sys
import h5py, numpy as np
out = sys.argv[1]
def metrics(name):
    return [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl")]
def params(name):
    p = {}
    for f in sorted(glob.glob(f"{out}/{name}/params.rank*.h5")):
        with h5py.File(f) as h:
            def visit(k, d):
                if isinstance(d, h5py.Dataset):
                    a = d[()].astype(np.float64)
                    if k in p:  # replicated tensors must agree across ranks bit for bit
                        assert np.array_equal(p[k], a), f"{name}: ranks disagree on {k}"
                    p[k] = a
            h["params"].visititems(visit)
    return p
ref_m, ref_p = metrics("ref"), params("ref")
passed = failed = 0
layouts = ["dp2", "ep2", "pp2_1f1b", "pp2_zb1p", "pp2_cut1", "pp2dp2_1f1b", "pp2dp2_zb1p",
           "pp2ep2dp2_1f1b", "pp2ep2dp2_zb1p", "pp2_dualpipe", "pp2_dualpipev", "pp4_dualpipe",
           "pp2ep2dp4_dualpipe", "pp2ep2dp2_dualpipev", "pp2ep2dp2_dualpipe"]
for name in layouts:
    m, p = metrics(name), params(name)
    loss_err = max(abs(a["loss"] - b["loss"]) / abs(b["loss"]) for a, b in zip(m, ref_m))
    gn_err = max(abs(a["grad_norm"] - b["grad_norm"]) / b["grad_norm"] for a, b in zip(m, ref_m))
    bitwise = all(a["loss"] == b["loss"] for a, b in zip(m, ref_m))
    # the same routing decisions on every step (a flip would change the expert loads)
    assert all(a["expert_imbalance"] == b["expert_imbalance"] for a, b in zip(m, ref_m)), name
    assert len(m) == len(ref_m) == 10
    assert set(p) == set(ref_p), f"{name}: parameter names differ: {set(p) ^ set(ref_p)}"
    perr, pworst = max((np.linalg.norm(p[k] - ref_p[k]) / (np.linalg.norm(ref_p[k]) + 1e-30), k)
                       for k in p)
    ok = loss_err < 1e-6 and gn_err < 1e-5 and perr < 2e-5
    print(f"{'ok  ' if ok else 'FAIL'} {name:16s} loss rel err {loss_err:.2e} "
          f"{'(bitwise)' if bitwise else '':9s} grad-norm rel err {gn_err:.2e}  "
          f"params rel err {perr:.2e} ({pworst})")
    passed += ok; failed += not ok
def bitwise(a, b):  # two runs' losses, grad norms and parameters, bit for bit
    ma, mb, pa, pb = metrics(a), metrics(b), params(a), params(b)
    same = [(x["loss"], x["grad_norm"]) for x in ma] == [(x["loss"], x["grad_norm"]) for x in mb]
    return same and set(pa) == set(pb) and all(np.array_equal(pa[k], pb[k]) for k in pa)
def pair(a, b, what, also=True, extra=""):  # reports two runs that must agree bit for bit
    global passed, failed
    same = bitwise(a, b) and also
    print(f"{'ok  ' if same else 'FAIL'} {a} vs {b}{what}: losses, grad norms and parameters "
          f"{'bitwise equal' if same else 'DIFFER'}{extra}")
    passed += same; failed += not same
# how a rank waits changes no data: sleeping and polling MPI waits, bit for bit
pair("pp2ep2dp2_dualpipe", "pp2ep2dp2_dualpipe_poll", " (sleeping vs polling waits)")
# the overlap changes no arithmetic: interleaved and forward-then-backward pairs, bit for bit
a, b = "pp2ep2dp2_dualpipe", "pp2ep2dp2_dualpipe_none"
early = [min(x["dp_early"]) for x in metrics(a)], [max(x["dp_early"]) for x in metrics(b)]
pair(a, b, "", also=min(early[0]) > 0.2 and max(early[1]) == 0,
     extra=f"; DP reduction started during the backward: {min(early[0]):.0%}+ of the elements "
           f"(off: {max(early[1]):.0%})")
# zero rows padding each expert's rows to 16 change no value of the FP8 recipe, bit for bit
pair("ep2_fp8", "ep2_fp8_align16", " (experts' rows padded to 16)")
# deferred FP8 weight gradients (from the kept dY tiles) equal immediate ones, bit for bit
pair("pp2_fp8_1f1b", "pp2_fp8_zb1p", " (deferred FP8 Wgrads from kept dY tiles)")
# sharded fp32 masters change no bit: the copies are made from the same values
pair("pp2ep2dp2_dualpipe_fp8", "pp2ep2dp2_dualpipe_fp8_whole", " (fp32 masters sharded vs whole)")
# bf16 block inputs: step 1 to the layouts' tolerance, then to bf16 storage's (see the top)
m, r = metrics("pp2ep2dp2_dualpipe_bi"), metrics("ref_bi")
rel = lambda k, i: abs(m[i][k] - r[i][k]) / abs(r[i][k])
later = max(rel("loss", i) for i in range(1, 10))
ok = len(m) == len(r) == 10 and rel("loss", 0) < 1e-6 and rel("grad_norm", 0) < 1e-6 and later < 1e-4
print(f"{'ok  ' if ok else 'FAIL'} pp2ep2dp2_dualpipe_bi vs ref_bi (bf16 block inputs): step 1 loss "
      f"{rel('loss', 0):.2e}, grad norm {rel('grad_norm', 0):.2e}; steps 2-10 loss {later:.2e}")
passed += ok; failed += not ok
pair("pp2ep2dp2_dualpipe_bi", "pp2ep2dp2_dualpipe_bi_none", " (bf16 block inputs, pairs not "
     "interleaved)")
# where the step went, per rank: the breakdown's additive fields sum to the step time (5%, over
# steps 2-10: a single 0.1 s step on oversubscribed cores carries milliseconds of scheduling skew)
ADD = ["compute_s", "ep_wait_pair_s", "ep_wait_single_s", "pp_idle_s", "dp_comm_s",
       "optimizer_s", "other_s"]
for name in ["pp2ep2dp2_dualpipe", "pp2ep2dp2_zb1p"]:
    rows = metrics(name)[1:]
    total = sum(r["step_seconds"] for r in rows)
    worst = max(abs(sum(r[f][k] for r in rows for f in ADD) - total) / total
                for k in range(len(rows[0]["compute_s"])))
    pair = sum(sum(r["ep_wait_pair_s"]) for r in metrics(name))
    ok = worst < 0.05 and (pair > 0) == ("dualpipe" in name)
    print(f"{'ok  ' if ok else 'FAIL'} {name}: per-rank fields add up to the step within "
          f"{worst:.1%}; EP wait inside pairs {pair:.3f} s")
    passed += ok; failed += not ok
print(f"e2e_parallel_equivalence: {passed} passed, {failed} failed")
sys.exit(1 if failed else 0)
PY
