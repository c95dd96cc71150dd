# Shell helpers for the tests that signal or kill one rank of a running mpirun job
# (tests/e2e_signals.sh, tests/e2e_save_faults.sh, bench/soak.sh); sourced, not run.
#   rank_pid DIR RANK   the pid of the moetron process of that rank of the job whose run.dir is DIR
#   steps_done DIR      steps written to DIR/metrics.jsonl so far (0 before the first)
rank_pid() {
  local p env
  for p in $(pgrep -f "run.dir=$1"); do
    [ "$(cat /proc/$p/comm 2>/dev/null)" == moetron ] || continue
    # read first, then match: `tr ... | grep -q` under the callers' pipefail fails whenever grep
    # exits on its match before tr has written the rest (tr dies of SIGPIPE), so the rank's pid
    # went missing now and then on a large environment
    env=$(tr '\0' '\n' < /proc/$p/environ 2>/dev/null)
    grep -qx "OMPI_COMM_WORLD_RANK=$2" <<< "$env" && echo $p
  done
}
steps_done() { [ -s "$1/metrics.jsonl" ] && wc -l < "$1/metrics.jsonl" || echo 0; }
