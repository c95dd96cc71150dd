// Progress line and metrics.jsonl writer (see metrics.h).
#include "trainer/metrics.h"

#include <cmath>
#include <cstdio>
#include <stdexcept>

namespace moetron {

MetricsLog::MetricsLog(const std::string& run_dir) : path_(run_dir + "/metrics.jsonl") {
  out_.open(path_, std::ios::app);
  if (!out_) throw std::runtime_error(path_ + ": cannot open for writing");
}

static std::string num(double x) {
  if (!std::isfinite(x)) return "null";
  char b[64];
  std::snprintf(b, sizeof b, "%.9g", x);
  return b;
}

// a count held in a double, all its digits (exact below 2^53)
static std::string integer(double x) {
  if (!std::isfinite(x)) return "null";
  char b[64];
  std::snprintf(b, sizeof b, "%.0f", x);
  return b;
}

void MetricsLog::write(const StepMetrics& m) {
  out_ << "{\"step\":" << m.step << ",\"loss\":" << num(m.loss) << ",\"lm_loss\":" << num(m.lm_loss)
       << ",\"mtp_loss\":" << num(m.mtp_loss) << ",\"balance_loss\":" << num(m.balance_loss)
       << ",\"lr\":" << num(m.lr) << ",\"grad_norm\":" << num(m.grad_norm)
       << ",\"tokens\":" << m.tokens << ",\"global_batch\":" << m.global_batch
       << ",\"tokens_per_s\":" << num(m.tokens_per_s) << ",\"step_seconds\":" << num(m.step_seconds)
       << ",\"expert_imbalance\":" << num(m.expert_imbalance)
       << ",\"ep_imbalance\":" << num(m.ep_imbalance)
       << ",\"bias_update_speed\":" << num(m.bias_update_speed)
       << ",\"mtp_weight\":" << num(m.mtp_weight)
       << ",\"max_nodes_per_token\":" << m.max_nodes_per_token
       << ",\"ep_rows_peak\":" << num(m.ep_rows_peak)
       << ",\"flops_per_token\":" << num(m.flops_per_token)
       << ",\"tokens_per_s_per_device\":" << num(m.tokens_per_s_per_device())
       << ",\"model_tflops_per_device\":" << num(m.model_tflops_per_device())
       << ",\"device_hours_per_1e12_tokens\":" << num(m.device_hours_per_1e12_tokens())
       << ",\"eta_seconds\":" << num(m.eta_seconds) << ",\"bad_steps\":" << m.bad_steps;
  if (m.skipped) {
    out_ << ",\"skipped\":true,\"bad_ranks\":[";
    for (size_t i = 0; i < m.bad_ranks.size(); ++i) out_ << (i ? "," : "") << m.bad_ranks[i];
    out_ << "]";
  }
  if (!std::isnan(m.valid_loss)) out_ << ",\"valid_loss\":" << num(m.valid_loss);
  if (m.peak_bf16_tflops > 0) out_ << ",\"mfu\":" << num(m.mfu(m.peak_bf16_tflops));
  if (m.peak_fp8_tflops > 0) out_ << ",\"mfu_fp8\":" << num(m.mfu(m.peak_fp8_tflops));
  if (!std::isnan(m.gemm_flops))
    out_ << ",\"gemm_flops_executed\":" << integer(m.gemm_flops)
         << ",\"gemm_flops_recompute\":" << integer(m.gemm_flops_recompute)
         << ",\"gemm_tflops_executed_per_device\":" << num(m.gemm_tflops_per_device());
  if (!std::isnan(m.host_waits)) out_ << ",\"host_waits\":" << integer(m.host_waits);
  out_ << ",\"rank_times\":[";
  for (size_t i = 0; i < m.rank_times.size(); ++i) out_ << (i ? "," : "") << num(m.rank_times[i]);
  out_ << "]";
  for (const auto& [name, per_rank] : m.breakdown) {
    out_ << ",\"" << name << "\":[";
    for (size_t i = 0; i < per_rank.size(); ++i) out_ << (i ? "," : "") << num(per_rank[i]);
    out_ << "]";
  }
  out_ << "}\n";
  out_.flush();
  if (!out_) throw std::runtime_error(path_ + ": write failed");
}

std::string MetricsLog::progress_line(const StepMetrics& m) {
  char b[256];
  const int eta = static_cast<int>(m.eta_seconds);
  std::snprintf(b, sizeof b,
                "step %lld/%lld | loss %.4f (lm %.4f mtp %.4f bal %.2e) | lr %.3e | gnorm %.3f | "
                "%.0f tok/s | %.3f TFLOP/s/dev | imb %.2f | eta %dm%02ds",
                static_cast<long long>(m.step), static_cast<long long>(m.total_steps), m.loss,
                m.lm_loss, m.mtp_loss, m.balance_loss, m.lr, m.grad_norm, m.tokens_per_s,
                m.model_tflops_per_device(), m.expert_imbalance, eta / 60, eta % 60);
  std::string line = b;
  if (m.peak_bf16_tflops > 0) {
    std::snprintf(b, sizeof b, " | mfu %.1f%%", 100 * m.mfu(m.peak_bf16_tflops));
    line += b;
  }
  if (m.mem_peak_gib > 0) {
    std::snprintf(b, sizeof b, " | mem %.2f GiB", m.mem_peak_gib);
    line += b;
  }
  if (!std::isnan(m.valid_loss)) {
    std::snprintf(b, sizeof b, " | valid %.4f", m.valid_loss);
    line += b;
  }
  if (m.skipped) line += " | SKIPPED (non-finite)";
  return line;
}

}  // namespace moetron
