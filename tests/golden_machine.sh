# Sourced by tests/e2e_golden.sh and tests/e2e_golden_layout.sh: which golden file this machine
# checks against. Bitwise reproducibility holds on one class of CPU, not across classes: oneDNN and
# OpenBLAS choose their GEMM kernels and blocking (so the summation order) by the CPU's ISA and
# cache sizes, and GCC's -march=native by the CPU (which multiply-adds it contracts). The first
# goldens (tests/golden/*.json[l]) were recorded on the CI's AMD EPYC (Zen 4, AVX-512 with
# avx512_bf16); a CPU class whose numbers differ keeps its own under
# tests/golden/<vendor>-<family>-<model>/, recorded (the scripts' --record, which writes there
# when that directory exists) from code that passed the first goldens on their class. Measured on
# the Intel Xeon with AMX of tests/golden/GenuineIntel-6-167/ against the EPYC's goldens: fp32
# 2.2e-8 in the loss and 1.8e-7 in the gradient norm, bf16 and fp8 up to 3.1e-4 and 2.3e-3 over
# 10 steps; the PP2 x DP2 x EP2 layout (fp32) 5.7e-9 in step 1's gradient norm, its expert
# imbalance up to 1.9e-4 by step 10.
# golden_file NAME: sets GOLDEN to this class's file for NAME, else the first one.
machine_key() {
  awk -F': *' '/^vendor_id/ && !v {v=$2} /^cpu family/ && !f {f=$2} /^model[ \t]*:/ && !m {m=$2}
               END {print v "-" f "-" m}' /proc/cpuinfo
}
golden_file() {
  local dir="tests/golden/$(machine_key)"
  GOLDEN="tests/golden/$1"
  [[ -d $dir ]] && GOLDEN="$dir/$1"
  echo "golden: $GOLDEN (this CPU class: $(machine_key))"
}
