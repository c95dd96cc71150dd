// run.profile_steps in the training loop (see step_profile.h).
#include "trainer/step_profile.h"

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <stdexcept>

#include "trainer/checkpoint.h"
#include "trainer/run.h"

namespace moetron {

namespace op_profile = kernels::op_profile;

StepProfile::StepProfile(const Run& r) : steps_(r.cfg.run.profile_steps) {
  for (int64_t s : steps_)
    if (s > r.state.step) {
      first_ = s;
      break;
    }
}

bool StepProfile::profiled(int64_t step) const {
  return first_ > 0 && !written_ && std::binary_search(steps_.begin(), steps_.end(), step);
}

void StepProfile::begin(int64_t step) {
  if (!profiled(step)) return;
  op_profile::set_enabled(true);
}

void StepProfile::end(int64_t step, double step_seconds) {
  if (!profiled(step)) return;
  op_profile::set_enabled(false);
  ++done_, seconds_ += step_seconds;
}

bool StepProfile::due(int64_t step, bool last) const {
  return first_ > 0 && !written_ && done_ > 0 && (step >= steps_.back() || last);
}

namespace {
// `fmt` of one row: op, calls, ms, share of the steps, ms per call, TFLOP/s ("-": not a GEMM;
// below 1, three significant digits: a small GEMM on a busy CPU runs at thousandths)
std::string line(const char* fmt, const op_profile::Row& r, double step_seconds) {
  char tflops[32] = "-";
  if (r.flops > 0 && r.seconds > 0) {
    const double t = static_cast<double>(r.flops) / r.seconds / 1e12;
    std::snprintf(tflops, sizeof tflops, t >= 1 ? "%.2f" : "%.3g", t);
  }
  char b[256];
  std::snprintf(b, sizeof b, fmt, r.op.c_str(), static_cast<long long>(r.calls), r.seconds * 1e3,
                step_seconds > 0 ? 100 * r.seconds / step_seconds : 0.0,
                r.calls > 0 ? r.seconds * 1e3 / static_cast<double>(r.calls) : 0.0, tflops);
  return b;
}
}  // namespace

std::string StepProfile::table(const std::vector<op_profile::Row>& rows, double step_seconds,
                               size_t max_rows) {
  std::string out =
      "  op                                 calls          ms   share     ms/call  "
      "TFLOP/s\n";
  for (size_t i = 0; i < rows.size() && i < max_rows; ++i)
    out += line("  %-32s %8lld %11.3f %6.1f%% %11.4f %8s\n", rows[i], step_seconds);
  if (rows.size() > max_rows)
    out += "  (" + std::to_string(rows.size() - max_rows) + " more ops)\n";
  return out;
}

std::string StepProfile::tsv(const std::vector<op_profile::Row>& rows, double step_seconds) {
  std::string out = "op\tcalls\tms\tshare_pct\tms_per_call\ttflops\n";
  for (const op_profile::Row& r : rows)
    out += line("%s\t%lld\t%.6f\t%.3f\t%.6f\t%s\n", r, step_seconds);
  return out;
}

void StepProfile::write(const Run& r, std::ostream& log) {
  written_ = true;
  const std::vector<op_profile::Row> rows = op_profile::collect();
  op_profile::reset();
  const std::string dir = r.cfg.run.dir + "/op_profile";
  const std::string path = dir + "/rank_" + std::to_string(r.world->rank()) + ".tsv";
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  std::ofstream f(path);
  f << tsv(rows, seconds_);
  if (!f) throw std::runtime_error(path + ": write failed");
  if (!r.rank0) return;
  double ops = 0;
  for (const op_profile::Row& row : rows) ops += row.seconds;
  char head[256];
  std::snprintf(head, sizeof head,
                "op profile of %lld step(s), rank 0 (%s): ops ran %.3f s of the steps' %.3f s "
                "(%.1f%%); every op in %s\n",
                static_cast<long long>(done_), device_name(r.cfg.run.device), ops, seconds_,
                seconds_ > 0 ? 100 * ops / seconds_ : 0.0, path.c_str());
  log << "moetron: " << head << prefix_lines("moetron: ", table(rows, seconds_, kLogged))
      << std::flush;
}

}  // namespace moetron
