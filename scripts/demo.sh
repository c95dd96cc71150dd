#!/usr/bin/env bash
# The main job: set up, fetch the State of the Union corpus, convert it to token files, train
# configs/tiny.yaml on it (printing a greedy text sample every 100 steps and at the end), save the
# final checkpoint, and let the trained model continue a prompt with `moetron generate`. Extra
# arguments go to `moetron train` (e.g. --set run.steps=50).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/prepare_data.sh build/moetron
build/moetron train configs/tiny.yaml --set run.save_interval=100 "$@"
run_dir=runs/tiny
for a in "$@"; do [[ $a == *run.dir=* ]] && run_dir=${a#*run.dir=}; done
echo "== build/moetron generate $run_dir --prompt 'The state of the Union' --max-tokens 100"
build/moetron generate "$run_dir" --prompt "The state of the Union" --max-tokens 100
