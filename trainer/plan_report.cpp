// The plan as a table or as JSON (see plan_report.h).
#include "trainer/plan_report.h"

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <string>

namespace moetron {

namespace {

// Parameters with a unit: "671.03B", "37.5M", "264".
std::string count(int64_t n) {
  char b[32];
  const double x = static_cast<double>(n);
  if (x >= 1e9)
    std::snprintf(b, sizeof b, "%.2fB", x / 1e9);
  else if (x >= 1e6)
    std::snprintf(b, sizeof b, "%.2fM", x / 1e6);
  else if (x >= 1e3)
    std::snprintf(b, sizeof b, "%.2fK", x / 1e3);
  else
    std::snprintf(b, sizeof b, "%lld", static_cast<long long>(n));
  return b;
}

std::string fixed(double x, int digits = 2) {
  char b[48];
  std::snprintf(b, sizeof b, "%.*f", digits, x);
  return b;
}

// Pads `s` to `w` characters, on the left (numbers) or the right.
std::string pad(const std::string& s, size_t w, bool left = true) {
  if (s.size() >= w) return s;
  return left ? std::string(w - s.size(), ' ') + s : s + std::string(w - s.size(), ' ');
}

std::string joined(const std::vector<int>& v, const char* sep) {
  std::string out;
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) out += sep;
    out += std::to_string(v[i]);
  }
  return out;
}

void write_header(const Plan& p, std::ostream& out) {
  out << "moetron plan: " << p.source << "\n";
  out << "  layout      " << p.world << (p.world == 1 ? " rank" : " ranks") << " = pp " << p.pp
      << " x dp " << p.dp << " (ep " << p.ep << " inside dp: " << p.dp / p.ep
      << (p.dp / p.ep == 1 ? " copy" : " copies") << " of each expert)";
  if (p.ranks_per_node > 0) out << ", " << p.ranks_per_node << " ranks per node";
  out << "\n  schedule    " << p.schedule << ", " << p.stages
      << (p.stages == 1 ? " stage, " : " stages, ") << p.microbatches << " micro-batches of "
      << p.micro_batch << " x " << p.seq_len << " tokens per pipeline and step\n";
  out << "  device      "
      << (p.memory_known() ? (p.hardware.empty() ? std::string("memory ") : p.hardware + ", ") +
                                 fixed(p.memory_gib, 1) + " GiB"
                           : std::string("memory unknown (hardware.memory_gib 0): not checked"))
      << "\n";
  out << "  parameters  total " << count(p.params_total)
      << " (main model; embedding and head counted once)\n"
      << "              activated " << count(p.params_activated)
      << " per token (the matrices a token's products read: routed experts K of E; the "
         "embedding is a lookup)\n"
      << "              MTP " << count(p.params_mtp) << " (own parameters; embedding and head "
      << "shared), " << count(p.params_mtp_activated) << " activated per token\n";
}

void write_rows(const Plan& p, std::ostream& out) {
  const bool gib = p.peak().bytes.total() >= (int64_t(1) << 30);
  const double unit = gib ? 1073741824.0 : 1048576.0;
  out << "memory per device, " << (gib ? "GiB" : "MiB")
      << " (one row per pipeline rank: its DP and EP ranks hold the same)\n";
  out << pad("pp", 4) << "  " << pad("stages", 7, false) << pad("params", 9);
  // a term's column: 12 characters, or its heading and two spaces
  const auto width = [](const MemoryTermInfo& t) {
    return std::max<size_t>(12, std::strlen(t.heading) + 2);
  };
  for (const MemoryTermInfo& t : kMemoryTerms) out << pad(t.heading, width(t));
  out << pad("total", 10) << pad("slots", 7) << pad("sets", 6) << "\n";
  for (const RankPlan& r : p.ranks) {
    out << pad(std::to_string(r.pp_rank), 4) << "  " << pad(joined(r.stages, ","), 7, false)
        << pad(count(r.params), 9);
    for (const MemoryTermInfo& t : kMemoryTerms)
      out << pad(fixed(r.bytes.*t.bytes / unit), width(t));
    out << pad(fixed(r.bytes.total() / unit), 10) << pad(std::to_string(r.slots), 7)
        << pad(std::to_string(r.grad_sets), 6) << "\n";
  }
  out << "  (activations = slots x the stage's forward-kept bytes of a micro-batch + sets x its "
         "backward buffers, both held at the rank's peak; see docs/design.md)\n";
  bool shared = false;
  for (const RankPlan& r : p.ranks) shared |= r.shared_pools;
  if (shared)
    out << "  (where the pools of slots and sets peak apart, the executor trims each to what the "
           "rest of the step needs: the peak holds both at once)\n";
}

void write_verdict(const Plan& p, std::ostream& out) {
  const RankPlan& r = p.peak();
  const int64_t total = r.bytes.total();
  out << "  peak        pipeline rank " << r.pp_rank << ": " << fixed(total / 1073741824.0)
      << " GiB per device";
  if (!p.memory_known())
    out << " (memory unknown: not checked)\n";
  else if (p.fits())
    out << " of " << fixed(p.memory_gib, 1) << ": fits, "
        << fixed((p.memory_bytes() - total) / 1073741824.0) << " GiB to spare\n";
  else
    out << " of " << fixed(p.memory_gib, 1) << ": DOES NOT FIT, over by "
        << fixed((total - p.memory_bytes()) / 1073741824.0) << " GiB\n";
  if (p.ep > 1) {
    out << "  experts     every EP rank counted with " << fixed(p.ep_imbalance)
        << "x the mean expert rows (--ep-imbalance; a run's buffers keep the most its busiest "
           "micro-batches routed to it)";
    if (p.ep_imbalance_limit > 0) out << "; fits up to " << fixed(p.ep_imbalance_limit) << "x";
    out << "\n";
  }
  for (const std::string& n : p.notes) out << "  note        " << n << "\n";
}

// ---- JSON ----

std::string json_string(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += static_cast<char>(c);
    } else if (c < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      out += b;
    } else {
      out += static_cast<char>(c);
    }
  }
  return out + "\"";
}

std::string json_bytes(const MemoryTerms& b) {
  std::string out = "{";
  for (const MemoryTermInfo& t : kMemoryTerms)
    out += json_string(t.key) + ":" + std::to_string(b.*t.bytes) + ",";
  return out + "\"total\":" + std::to_string(b.total()) + "}";
}

std::string json_params(const RankPlan& r) {
  return "{\"total\":" + std::to_string(r.params) +
         ",\"dense\":" + std::to_string(r.params - r.params_expert) +
         ",\"expert\":" + std::to_string(r.params_expert) +
         ",\"optimizer_owned\":" + std::to_string(r.owned) + "}";
}

std::string json_rank(const RankPlan& r) {
  return "{\"pp_rank\":" + std::to_string(r.pp_rank) + ",\"stages\":[" + joined(r.stages, ",") +
         "],\"params\":" + json_params(r) + ",\"bytes\":" + json_bytes(r.bytes) +
         ",\"activation_slots\":" + std::to_string(r.slots) +
         ",\"activation_slot_bytes\":" + std::to_string(r.slot_bytes) +
         ",\"gradient_sets\":" + std::to_string(r.grad_sets) +
         ",\"gradient_set_bytes\":" + std::to_string(r.grad_set_bytes) +
         ",\"pp_message_buffers\":" + std::to_string(r.messages) + "}";
}

}  // namespace

void write_plan_table(const Plan& p, std::ostream& out) {
  write_header(p, out);
  write_rows(p, out);
  write_verdict(p, out);
}

void write_plan_json(const Plan& p, std::ostream& out) {
  const RankPlan& peak = p.peak();
  out << "{\"config\":" << json_string(p.source) << ",\"world\":" << p.world
      << ",\"layout\":{\"pp\":" << p.pp << ",\"dp\":" << p.dp << ",\"ep\":" << p.ep
      << ",\"edp\":" << p.dp / p.ep << ",\"ranks_per_node\":" << p.ranks_per_node
      << ",\"schedule\":" << json_string(p.schedule) << ",\"stages\":" << p.stages
      << ",\"microbatches\":" << p.microbatches << ",\"micro_batch_size\":" << p.micro_batch
      << ",\"seq_len\":" << p.seq_len << ",\"ep_rows_per_token\":" << p.ep_rows
      << ",\"ep_imbalance\":" << p.ep_imbalance
      << ",\"ep_imbalance_limit\":" << p.ep_imbalance_limit << "}"
      << ",\"params_total\":" << p.params_total << ",\"params_activated\":" << p.params_activated
      << ",\"params_mtp\":" << p.params_mtp
      << ",\"params_mtp_activated\":" << p.params_mtp_activated
      << ",\"peak_pp_rank\":" << peak.pp_rank << ",\"params_per_rank\":" << json_params(peak)
      << ",\"bytes_per_rank\":" << json_bytes(peak.bytes)
      << ",\"hardware\":" << json_string(p.hardware) << ",\"memory_bytes\":" << p.memory_bytes()
      << ",\"fits\":" << (p.memory_known() ? (p.fits() ? "true" : "false") : "null")
      << ",\"over_bytes\":"
      << (p.memory_known() ? std::max<int64_t>(0, peak.bytes.total() - p.memory_bytes()) : 0)
      << ",\"ranks\":[";
  for (size_t i = 0; i < p.ranks.size(); ++i) out << (i ? "," : "") << json_rank(p.ranks[i]);
  out << "],\"notes\":[";
  for (size_t i = 0; i < p.notes.size(); ++i) out << (i ? "," : "") << json_string(p.notes[i]);
  out << "]}\n";
}

}  // namespace moetron
