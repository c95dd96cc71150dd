#!/usr/bin/env bash
# The crash soak in CI (issue #15 part 3): bench/soak.sh with 3 trials — a 4-rank run (PP2 x DP2,
# EP2) SIGKILLed on a random rank at a random step, resumed with --resume auto, bitwise equal to
# the uninterrupted run in every later loss and in the final parameters. 20 trials are recorded in
# docs/reliability.md.  Args: MOETRON_BIN BUILD_DIR
set -uo pipefail
MOETRON_BIN=$1 SOAK_DIR=$2/e2e_soak bench/soak.sh 3
