#!/usr/bin/env bash
# Binaries for a GPU machine that has the NVIDIA driver and CUDA 13's cuBLASLt and NCCL but none of
# moetron's other dependencies (the machines the device tool lends have no yaml-cpp, HDF5, Open MPI,
# oneDNN or OpenBLAS, and no network to install them). Builds for sm_90a here and writes OUT/:
#   moetron-gpu.tar.xz  bin/: moetron, cuda_tests, bench_cuda_gemm, bench_cuda_attention,
#                       bench_cuda_copy, and Open MPI's mpirun (one node: it starts the ranks
#                       itself, no daemon); lib/: every shared library they load that is not glibc,
#                       libstdc++/libgcc or CUDA's (the machine's own), with Open MPI's and PMIx's
#                       plugins (lib/openmpi3, lib/pmix: all but those for hardware a one-node run
#                       does not use — UCX, OFI, PSM, verbs — and OpenSHMEM's) and what they load;
#                       share/: Open MPI's and PMIx's help texts (its error messages);
#   env.sh              sourced (bash) by scripts/gpu_check.sh --prebuilt OUT: unpacks the archive
#                       into /tmp/moetron_gpu once and exports what makes it found — the library
#                       path, Open MPI's install directories moved there (OPAL_PKGLIBDIR,
#                       OPAL_PKGDATADIR, PMIx's component path), a singleton that starts no
#                       daemon (ess_singleton_isolated: one process, no mpirun) and mpirun's
#                       launcher for this node only (plm isolated); MOETRON_BIN is the
#                       binaries' directory.
# The binaries target x86-64-v3 (AVX2), not this machine's CPU. --build DIR bundles an existing
# build instead (with its own -march): tests/e2e_gpu_bundle.sh unpacks such a bundle into a chroot
# that has only glibc, the C++ runtime and CUDA's libraries, and trains tiny.yaml there on the CPU.
# Usage: scripts/gpu_bundle.sh [--build DIR] OUT
set -euo pipefail
cd "$(dirname "$0")/.."
build=""
while (($#)); do
  case $1 in
    --build) build=$2; shift 2 ;;
    -*) echo "gpu_bundle: unknown argument $1 (expected --build DIR, then OUT)" >&2; exit 2 ;;
    *) out=$1; shift ;;
  esac
done
[[ -n ${out:-} ]] || { echo "usage: scripts/gpu_bundle.sh [--build DIR] OUT" >&2; exit 2; }

if [[ -z $build ]]; then
  build=build-gpu
  cmake -S . -B $build -G Ninja -DCMAKE_BUILD_TYPE=Release -DMOETRON_CUDA=ON \
    -DCMAKE_CUDA_ARCHITECTURES=90a -DMOETRON_MARCH=x86-64-v3 >/dev/null
  cmake --build $build -j"$(nproc)" --target moetron cuda_tests bench_cuda_gemm \
    bench_cuda_attention bench_cuda_copy
fi
bins=("$build/moetron" "$build/tests/cuda_tests" "$build/bench_cuda_gemm"
      "$build/bench_cuda_attention" "$build/bench_cuda_copy")
for b in "${bins[@]}"; do
  [[ -x $b ]] || { echo "gpu_bundle: $b: not built" >&2; exit 1; }
done

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
mkdir -p "$stage/bin" "$stage/lib/openmpi3" "$stage/lib/pmix" "$stage/share"
cp "${bins[@]}" "$stage/bin/"
cp -L "$(readlink -f "$(command -v mpirun)")" "$stage/bin/mpirun"
cp -L /usr/lib/x86_64-linux-gnu/openmpi/lib/openmpi3/*.so "$stage/lib/openmpi3/"
cp -L /usr/lib/x86_64-linux-gnu/pmix2/lib/pmix/*.so "$stage/lib/pmix/"
(cd "$stage/lib/openmpi3" &&
  rm -f ./*_ucx.so ./*_ofi.so ./*_openib.so ./mca_mtl_psm*.so ./mca_atomic_* ./mca_memheap_* \
    ./mca_scoll_* ./mca_spml_* ./mca_sshmem_*)
cp -r /usr/share/openmpi "$stage/share/openmpi"
if [[ -d /usr/share/pmix ]]; then cp -r /usr/share/pmix "$stage/share/pmix"; fi

# The machine's own: glibc, the C++ runtime, the driver and CUDA's libraries.
from_machine='^(linux-vdso|ld-linux|libc\.so|libm\.so|libpthread|libdl\.so|librt\.so|libresolv|libstdc\+\+|libgcc_s|libcuda\.so|libcudart|libcublas|libnccl|libnvidia)'
# Every library the binaries and plugins load, transitively (ldd lists the whole tree).
ldd "$stage"/bin/* "$stage"/lib/openmpi3/*.so "$stage"/lib/pmix/*.so 2>/dev/null |
  awk '$2 == "=>" && $3 ~ /^\// {print $1, $3}' | sort -u |
  while read -r name path; do
    if [[ ! $name =~ $from_machine ]]; then cp -L "$path" "$stage/lib/$name"; fi
  done

rm -rf "$out" && mkdir -p "$out"
XZ_OPT=${XZ_OPT:--6 -T0} tar cJf "$out/moetron-gpu.tar.xz" -C "$stage" bin lib share
cat > "$out/env.sh" <<'EOF'
# Sourced (bash): unpacks the bundle next to this file into /tmp/moetron_gpu (once) and exports
# what makes its binaries, libraries and Open MPI found there (scripts/gpu_bundle.sh).
moetron_bundle=/tmp/moetron_gpu
if [[ ! -x $moetron_bundle/bin/moetron ]]; then
  mkdir -p $moetron_bundle &&
    tar xJf "$(dirname "${BASH_SOURCE[0]}")/moetron-gpu.tar.xz" -C $moetron_bundle
fi
export MOETRON_BIN=$moetron_bundle/bin
export LD_LIBRARY_PATH=$moetron_bundle/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
export OPAL_PKGLIBDIR=$moetron_bundle/lib/openmpi3 OPAL_PKGDATADIR=$moetron_bundle/share/openmpi
export OMPI_MCA_mca_base_component_path=$moetron_bundle/lib/openmpi3
export PMIX_MCA_mca_base_component_path=$moetron_bundle/lib/pmix
export OMPI_MCA_ess_singleton_isolated=1 OMPI_MCA_btl=self,vader
export OMPI_MCA_plm=isolated  # mpirun: ranks on this node only (no ssh there to start daemons)
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
EOF
echo "gpu_bundle: $out: $(tar tJf "$out/moetron-gpu.tar.xz" | grep -c '\.so') libraries," \
  "$(du -sh "$out/moetron-gpu.tar.xz" | cut -f1) packed"
