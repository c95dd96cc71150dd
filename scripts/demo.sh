#!/usr/bin/env bash
# The main job: set up, fetch the State of the Union corpus, convert it to token files, and train
# configs/tiny.yaml on it. Extra arguments go to `moetron train` (e.g. --set run.steps=50).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/prepare_data.sh build/moetron
build/moetron train configs/tiny.yaml "$@"
