// The estimate as a table or as JSON (see estimate_report.h).
#include "trainer/estimate_report.h"

#include <cstdio>
#include <string>
#include <vector>

#include "parallel/trace.h"

namespace moetron {

namespace {

std::string num(double x, const char* fmt = "%.4g") {
  char b[48];
  std::snprintf(b, sizeof b, fmt, x);
  return b;
}

// Seconds as ms below 1 s.
std::string secs(double s) { return s < 1 ? num(s * 1e3, "%.3f ms") : num(s, "%.3f s"); }

std::string pct(double part, double whole) {
  return whole > 0 ? num(100 * part / whole, "%.1f%%") : "-";
}

void write_header(const Estimate& e, std::ostream& out) {
  const Plan& p = e.plan;
  out << "moetron estimate: " << p.source << " on " << (e.hardware.empty() ? "?" : e.hardware)
      << "\n  layout      " << p.world << (p.world == 1 ? " rank" : " ranks") << " = pp " << p.pp
      << " x dp " << p.dp << ", ep " << p.ep << ", " << e.ranks_per_node << " per node";
  if (e.rank_share < 1)
    out << " (sharing one CPU node: each rank has " << num(e.rank_share) << " of it, "
        << num(e.busy_share) << " while busy)";
  out << "\n  schedule    " << p.schedule << ", " << p.stages << " stages, " << p.microbatches
      << " micro-batches of " << e.tokens_per_microbatch << " tokens per pipeline; "
      << e.tokens_per_step << " tokens per step\n";
  out << "  model       " << num(e.flops_per_token)
      << " training FLOPs per token (model/flops.h)\n";
  if (p.ep > 1)
    out << "  routing     a token goes to " << num(e.routing.ranks, "%.2f") << " other EP ranks, "
        << num(e.routing.remote_nodes, "%.2f") << " other nodes (" << num(e.routing.ib_rows, "%.2f")
        << " rows over the inter-node link); the busiest EP rank has "
        << num(e.ep_imbalance, "%.3f") << "x the mean rows\n";
}

void write_stages(const Estimate& e, std::ostream& out) {
  out << "per stage, one micro-batch (ms): compute F, B (input + weight), W; EP on the wire; "
         "the ops simulate() replays\n";
  const char* h[] = {"stage", "blocks", "moe",  "F",    "B",    "W",
                     "ep F",  "ep B",   "op F", "op B", "op W", "op F&B"};
  for (const std::string s : h) out << std::string(8 - s.size(), ' ') << s;
  out << "\n";
  for (const StageCost& s : e.stages) {
    const double v[] = {s.f, s.b, s.w, s.f_ep, s.b_ep, s.op_f, s.op_b, s.op_w, s.op_fb};
    out << num(s.stage, "%8.0f") << num(s.blocks, "%8.0f") << num(s.moe_layers, "%8.0f");
    for (double x : v) out << num(x * 1e3, "%8.3f");
    out << "\n";
  }
  if (e.plan.pp > 1) out << "  one PP message " << secs(e.pp_message_s) << "\n";
}

void write_step(const Estimate& e, std::ostream& out) {
  const double s = e.step_s;
  out << "step          " << secs(s) << " (read off pipeline rank " << e.critical_rank << ")\n"
      << "  compute     " << secs(e.compute_s) << "  " << pct(e.compute_s, s) << "\n"
      << "  exposed EP  " << secs(e.exposed_ep_s) << "  " << pct(e.exposed_ep_s, s) << "\n"
      << "  bubble      " << secs(e.bubble_s) << "  " << pct(e.bubble_s, s) << "\n"
      << "  core wait   " << secs(e.core_wait_s) << "  " << pct(e.core_wait_s, s) << "\n"
      << "  DP          " << secs(e.dp_s) << "  " << pct(e.dp_s, s) << "\n"
      << "  optimizer   " << secs(e.optimizer_s) << "  " << pct(e.optimizer_s, s) << "\n";
  out << "tokens/s/GPU  " << num(e.tokens_per_s_per_gpu, "%.1f") << "\n"
      << "MFU           " << num(100 * e.mfu, "%.1f%%") << " of the dense "
      << (e.plan.world >= 1 && e.mfu_fp8 > 0
              ? "BF16 peak, " + num(100 * e.mfu_fp8, "%.1f%%") + " of FP8"
              : std::string("peak"))
      << "\n"
      << "GPU-hours     " << num(e.gpu_hours_per_1e12_tokens, "%.4g") << " per 10^12 tokens; "
      << num(e.run_gpu_hours, "%.4g") << " for the configured run (" << num(e.run_tokens, "%.4g")
      << " tokens = run.steps x global batch x seq_len)\n";
  const Plan& p = e.plan;
  const double gib = static_cast<double>(p.peak().bytes.total()) / 1073741824.0;
  out << "memory        " << num(gib, "%.2f") << " GiB per GPU at the peak (pipeline rank "
      << p.peak().pp_rank << ", moetron plan)";
  if (p.memory_known())
    out << (p.fits() ? ": fits " : ": DOES NOT FIT ") << num(p.memory_gib, "%.1f") << " GiB";
  out << "\n";
}

std::string kv(const char* k, double v) { return std::string("\"") + k + "\":" + num(v, "%.9g"); }

}  // namespace

void write_estimate_table(const Estimate& e, std::ostream& out) {
  write_header(e, out);
  write_stages(e, out);
  write_step(e, out);
}

void write_estimate_json(const Estimate& e, std::ostream& out) {
  const Plan& p = e.plan;
  out << "{\"config\":\"" << p.source << "\",\"hardware\":\"" << e.hardware << "\","
      << "\"world\":" << p.world << ",\"layout\":{\"pp\":" << p.pp << ",\"dp\":" << p.dp
      << ",\"ep\":" << p.ep << ",\"ranks_per_node\":" << e.ranks_per_node << "},\"schedule\":\""
      << p.schedule << "\",\"microbatches\":" << p.microbatches
      << ",\"tokens_per_microbatch\":" << e.tokens_per_microbatch
      << ",\"tokens_per_step\":" << e.tokens_per_step << "," << kv("rank_share", e.rank_share)
      << "," << kv("busy_share", e.busy_share) << "," << kv("ep_imbalance", e.ep_imbalance) << ","
      << kv("flops_per_token", e.flops_per_token) << ",\"routing\":{"
      << kv("ranks_per_token", e.routing.ranks) << ","
      << kv("remote_nodes_per_token", e.routing.remote_nodes) << ","
      << kv("ib_rows_per_token", e.routing.ib_rows) << "},\"stages\":[";
  for (size_t i = 0; i < e.stages.size(); ++i) {
    const StageCost& s = e.stages[i];
    out << (i ? "," : "") << "{\"stage\":" << s.stage << ",\"blocks\":" << s.blocks
        << ",\"moe_layers\":" << s.moe_layers << "," << kv("forward_compute_s", s.f) << ","
        << kv("backward_compute_s", s.b) << "," << kv("weight_compute_s", s.w) << ","
        << kv("forward_ep_s", s.f_ep) << "," << kv("backward_ep_s", s.b_ep) << ","
        << kv("op_F_s", s.op_f) << "," << kv("op_B_s", s.op_b) << "," << kv("op_W_s", s.op_w) << ","
        << kv("op_FB_s", s.op_fb) << "}";
  }
  out << "]," << kv("pp_message_s", e.pp_message_s) << "," << kv("step_seconds", e.step_s)
      << ",\"breakdown\":{" << kv("compute_s", e.compute_s) << ","
      << kv("exposed_ep_s", e.exposed_ep_s) << "," << kv("bubble_s", e.bubble_s) << ","
      << kv("core_wait_s", e.core_wait_s) << "," << kv("dp_s", e.dp_s) << ","
      << kv("optimizer_s", e.optimizer_s) << "},"
      << "\"critical_pp_rank\":" << e.critical_rank << ","
      << kv("tokens_per_s_per_gpu", e.tokens_per_s_per_gpu) << "," << kv("mfu", e.mfu) << ","
      << kv("mfu_fp8", e.mfu_fp8) << ","
      << kv("gpu_hours_per_1e12_tokens", e.gpu_hours_per_1e12_tokens) << ","
      << kv("run_tokens", e.run_tokens) << "," << kv("run_gpu_hours", e.run_gpu_hours)
      << ",\"memory_bytes_per_gpu\":" << p.peak().bytes.total()
      << ",\"memory_bytes_device\":" << (p.memory_known() ? p.memory_bytes() : 0)
      << ",\"fits\":" << (p.memory_known() ? (p.fits() ? "true" : "false") : "null") << "}\n";
}

void write_estimate_trace(const Estimate& e, const std::string& path) {
  std::vector<trace::Process> procs(static_cast<size_t>(e.plan.pp));
  for (int r = 0; r < e.plan.pp; ++r) {
    procs[r].pid = r;
    procs[r].label = "pipeline rank " + std::to_string(r) + " (predicted, " + e.hardware + ")";
  }
  const auto ns = [](double s) { return static_cast<int64_t>(s * 1e9); };
  for (const Estimate::Slice& s : e.timeline) {
    trace::Event ev{ns(s.t0),
                    ns(s.t1),
                    s.name,
                    s.compute ? "mb,stage" : nullptr,
                    {s.mb, s.stage, 0, 0},
                    s.compute          ? trace::Track::Compute
                    : s.name[0] == 'D' ? trace::Track::Dp
                                       : trace::Track::Optimizer};
    procs[static_cast<size_t>(s.rank)].events.push_back(ev);
  }
  std::vector<std::string> fragments;
  for (const trace::Process& p : procs) fragments.push_back(trace::format_process(p, 0));
  trace::write_chrome_trace(path, fragments,
                            "\"predicted\":true,\"step_seconds\":" + std::to_string(e.step_s));
}

}  // namespace moetron
