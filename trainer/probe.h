// `moetron probe`: this machine's figures for a CPU hardware profile, measured in about a second
// — the dense fp32 and bf16 GEMM rates through the kernels' own GEMM op (kernels/ops.h, every
// thread of the process, large square products: the peak the estimator prices GEMMs against), and
// the memory copy bandwidth (the estimator's hbm_gbs, and the intra-node link of processes that
// exchange through shared memory). The output is a complete profile (configs/hardware/cpu.yaml's
// keys) with these figures; the efficiency factors are 1 (the probes measure what is reached)
// until `moetron estimate --calibrate` fits the GEMM factor on one measured run.
#pragma once

#include <ostream>

namespace moetron {

struct ProbeResult {
  double fp32_tflops = 0, bf16_tflops = 0, copy_gbs = 0;
  int threads = 0;
};

ProbeResult probe_machine(double seconds_per_probe = 0.3);
void write_probe_profile(const ProbeResult& r, std::ostream& out);

}  // namespace moetron
