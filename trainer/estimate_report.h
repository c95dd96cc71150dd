// `moetron estimate`'s output: a readable table (default) or JSON (--json) with the same figures
// under self-explaining keys — step_seconds and its breakdown (compute_s, exposed_ep_s,
// bubble_s, dp_s, optimizer_s), tokens_per_s_per_gpu, mfu (against the dense BF16 peak; a CPU
// profile without one: the fp32 peak), mfu_fp8, gpu_hours_per_1e12_tokens, run_tokens,
// run_gpu_hours, memory_bytes_per_gpu and fits (null when the memory is unknown), the routing
// statistics and the per-stage, per-micro-batch op costs (op_F_s, op_B_s, op_W_s, op_FB_s: the
// names of metrics.jsonl's measured means). Times in seconds.
#pragma once

#include <ostream>
#include <string>

#include "trainer/estimate.h"

namespace moetron {

void write_estimate_table(const Estimate& e, std::ostream& out);
void write_estimate_json(const Estimate& e, std::ostream& out);
// The predicted timeline (Estimate::timeline) as a Chrome Trace Event file in the format of a
// run's merged trace (parallel/trace.h): a process per pipeline rank, its compute ops on the
// compute track, the DP reduction and the optimizer after them. Throws std::runtime_error when
// the file cannot be written.
void write_estimate_trace(const Estimate& e, const std::string& path);

}  // namespace moetron
