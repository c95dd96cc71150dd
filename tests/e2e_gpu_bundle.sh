#!/usr/bin/env bash
# End to end: the bundle that carries moetron to a GPU machine lacking its dependencies
# (scripts/gpu_bundle.sh) runs there. A chroot stands for that machine: it holds only glibc, the
# C++ runtime, bash and CUDA's libraries — no Open MPI, HDF5, yaml-cpp, oneDNN or OpenBLAS. The
# bundle of this build, unpacked and set up by its env.sh inside, trains tiny.yaml 2 steps on the
# CPU as a singleton MPI process (no mpirun, no daemon), writes a checkpoint (HDF5), and its
# losses and gradient norms equal those of the same run outside, bit for bit; then the bundle's
# mpirun trains the same on 2 ranks (PP2: how gpu_check.sh runs a multi-rank layout on one GPU),
# again equal to the run outside. Needs root and
# mount namespaces (unshare -m); without them, or in a build without the CUDA backend, it is
# skipped (exit 77) with the reason.  Args: MOETRON_BIN BUILD_DIR
set -euo pipefail
BIN=$1; BUILD=$2; OUT=$BUILD/e2e_gpu_bundle
SRC=$(pwd)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
skip() { echo "SKIPPED: $*"; exit 77; }
[[ -x $BUILD/tests/cuda_tests ]] || skip "no CUDA backend in this build"
[[ -d /usr/local/cuda/lib ]] || skip "no /usr/local/cuda/lib"
rm -rf "$OUT" && mkdir -p "$OUT/probe"
# root, a mount namespace, bind mounts and chroot: what the test does, tried on / first
[[ $(id -u) == 0 ]] &&
  unshare -m sh -c 'mount --bind / "$1" && chroot "$1" /bin/true' _ "$OUT/probe" 2>/dev/null ||
  skip "needs root, unshare -m, bind mounts and chroot"

XZ_OPT="-0 -T0" bash scripts/gpu_bundle.sh --build "$BUILD" "$OUT/bundle" > "$OUT/bundle.log"

# the machine: glibc, the C++ runtime, bash; CUDA's libraries mounted where they are here
root=$OUT/root
mkdir -p "$root"/{lib64,lib/x86_64-linux-gnu,bin,usr/local/cuda/lib,proc,sys,dev,tmp,b} "$root$SRC"
cp -L /lib64/ld-linux-x86-64.so.2 "$root/lib64/"
for lib in libc.so.6 libm.so.6 libpthread.so.0 libdl.so.2 librt.so.1 libresolv.so.2 \
  libstdc++.so.6 libgcc_s.so.1 libtinfo.so.6; do
  cp -L "/lib/x86_64-linux-gnu/$lib" "$root/lib/x86_64-linux-gnu/"
done
cp /bin/bash "$root/bin/"
cp "$OUT/bundle/env.sh" "$OUT/bundle/moetron-gpu.tar.xz" "$root/b/"
mkdir -p "$root/tmp/moetron_gpu"  # env.sh unpacks with tar, which the chroot lacks: done here
tar xJf "$OUT/bundle/moetron-gpu.tar.xz" -C "$root/tmp/moetron_gpu"

args=(train "$SRC/configs/tiny.yaml" --set run.steps=2 --set run.threads=1
      --set run.eval_interval=0 --set run.sample_interval=0 --set run.save_interval=2)
"$BIN" "${args[@]}" --set run.dir="$OUT/outside" > "$OUT/outside.log" 2>&1

mpirun --oversubscribe --mca btl self,vader --bind-to none -np 2 "$BIN" "${args[@]}" \
  --set parallel.pp=2 --set run.dir="$OUT/outside2" > "$OUT/outside2.log" 2>&1
# shellcheck disable=SC2016
inside='set -e
cd "$0"
[[ ! -e /usr/lib/x86_64-linux-gnu/libmpi.so.40 && ! -e /lib/x86_64-linux-gnu/libhdf5_serial.so.103 ]]
export LD_LIBRARY_PATH=/usr/local/cuda/lib
source /b/env.sh
"$MOETRON_BIN/moetron" "$@" --set run.dir=/tmp/inside
"$MOETRON_BIN/mpirun" --oversubscribe --bind-to none -np 2 "$MOETRON_BIN/moetron" "$@" \
  --set parallel.pp=2 --set run.dir=/tmp/inside2'
data=$(readlink -f data/cache)  # the corpus, wherever a link puts it
mkdir -p "$root$data"
unshare -m bash -c '
  set -e
  root=$1 src=$2 data=$3; shift 3
  mount --bind /usr/local/cuda/lib "$root/usr/local/cuda/lib"
  mount --bind "$src" "$root$src"
  mount --bind "$data" "$root$data"
  mount --rbind /dev "$root/dev"
  mount --bind /sys "$root/sys"
  mount -t proc proc "$root/proc"
  exec chroot "$root" /bin/bash -c "$@"' _ "$root" "$SRC" "$data" "$inside" "$SRC" \
  "${args[@]}" > "$OUT/inside.log" 2>&1 ||
  { echo "the bundle failed in the chroot:"; tail -20 "$OUT/inside.log"; exit 1; }

/usr/bin/python3 - "$OUT/outside/metrics.jsonl" "$root/tmp/inside/metrics.jsonl" \
  "$root/tmp/inside/checkpoints/step_2" "$OUT/outside2/metrics.jsonl" \
  "$root/tmp/inside2/metrics.jsonl" <<'PY'
import json, os, sys
a, b, a2, b2 = ([(r["loss"], r["grad_norm"]) for r in map(json.loads, open(p))]
                for p in sys.argv[1:3] + sys.argv[4:6])
assert len(a) == 2 and a == b, f"outside {a} != inside {b}"
assert os.path.isdir(sys.argv[3]) and os.listdir(sys.argv[3]), "no checkpoint written inside"
assert len(a2) == 2 and a2 == b2, f"2 ranks: outside {a2} != inside {b2}"
print(f"bundle: 2 steps in the chroot, losses {[x for x, _ in b]} as outside; "
      f"on 2 ranks through its mpirun {[x for x, _ in b2]} as outside")
PY
