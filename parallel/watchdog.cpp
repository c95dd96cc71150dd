// The wait records, the status files and the watchdog thread (see watchdog.h).
//
// A record is one Slot of a fixed table, claimed by a thread the first time it waits or sets a
// context and freed when the thread exits. Its owner writes it under a sequence counter (odd
// while writing); the watchdog copies it and retries if the counter moved. Every field is a
// relaxed atomic, so the copy is race-free as the memory model counts it, and the release/acquire
// fences around the counter make a copy that passed the check consistent.
#include "parallel/watchdog.h"

#include <unistd.h>

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

namespace moetron::watchdog {

namespace {

struct Slot {
  std::atomic<bool> used{false}, main{false};
  std::atomic<uint32_t> seq{0};
  std::atomic<const char*> op{nullptr}, group{nullptr}, phase{nullptr};
  std::atomic<int> peer{-1}, n_ranks{0}, microbatch{-1}, stage{-1};
  std::atomic<int> ranks[kMaxRanks] = {};
  std::atomic<int64_t> start_ns{0}, step{0};
};
constexpr int kSlots = 64;  // threads that communicate at once (training uses 2)
Slot g_slots[kSlots];

constexpr auto R = std::memory_order_relaxed;

// The owner's writes: begin() makes the counter odd, end() even again.
void begin(Slot& s) {
  s.seq.store(s.seq.load(R) + 1, R);
  std::atomic_thread_fence(std::memory_order_release);
}
void end(Slot& s) { s.seq.store(s.seq.load(R) + 1, std::memory_order_release); }

void clear(Slot& s) {
  begin(s);
  s.op.store(nullptr, R), s.group.store(nullptr, R), s.phase.store(nullptr, R);
  s.peer.store(-1, R), s.n_ranks.store(0, R), s.microbatch.store(-1, R), s.stage.store(-1, R);
  s.start_ns.store(0, R), s.step.store(0, R);
  end(s);
}

// The calling thread's slot, claimed on first use and freed at thread exit.
struct Holder {
  Slot* slot = nullptr;
  ~Holder() {
    if (!slot) return;
    clear(*slot);
    slot->main.store(false, R);
    slot->used.store(false, std::memory_order_release);
  }
};
thread_local Holder t_holder;

Slot* my_slot() {
  if (t_holder.slot) return t_holder.slot;
  for (Slot& s : g_slots) {
    bool free = false;
    if (s.used.compare_exchange_strong(free, true, std::memory_order_acq_rel)) {
      clear(s);
      return t_holder.slot = &s;
    }
  }
  return nullptr;  // more threads than slots: this one's waits go unwatched
}

std::string fmt(const char* f, double v) {
  char b[64];
  std::snprintf(b, sizeof b, f, v);
  return b;
}

// "step 5, phase pipeline, micro-batch 3, stage 1" (the parts that are known)
std::string context(int64_t step, const std::string& phase, int microbatch, int stage) {
  std::string s = "step " + std::to_string(step);
  if (!phase.empty()) s += ", phase " + phase;
  if (microbatch >= 0) s += ", micro-batch " + std::to_string(microbatch);
  if (stage >= 0) s += ", stage " + std::to_string(stage);
  return s;
}

std::string escape(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    if (static_cast<unsigned char>(c) >= 0x20) o += c;
  }
  return o;
}

// The value after "key": in one of our status lines (a number, or a string without its quotes).
std::optional<std::string> field(const std::string& j, const char* key) {
  const std::string k = std::string("\"") + key + "\":";
  size_t p = j.find(k);
  if (p == std::string::npos) return std::nullopt;
  p += k.size();
  if (p < j.size() && j[p] == '"') {
    std::string v;
    for (++p; p < j.size() && j[p] != '"'; ++p)
      v += j[p] == '\\' && p + 1 < j.size() ? j[++p] : j[p];
    if (p >= j.size()) return std::nullopt;
    return v;
  }
  const size_t e = j.find_first_of(",}", p);
  if (e == std::string::npos) return std::nullopt;
  return j.substr(p, e - p);
}

}  // namespace

int64_t steady_now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch())
      .count();
}

void set_step(int64_t step, const char* phase) {
  Slot* s = my_slot();
  if (!s) return;
  begin(*s);
  s->step.store(step, R), s->phase.store(phase, R);
  s->microbatch.store(-1, R), s->stage.store(-1, R);
  end(*s);
}

void set_phase(const char* phase) {
  Slot* s = my_slot();
  if (!s) return;
  begin(*s);
  s->phase.store(phase, R), s->microbatch.store(-1, R), s->stage.store(-1, R);
  end(*s);
}

void set_microbatch(int microbatch, int stage) {
  Slot* s = my_slot();
  if (!s) return;
  begin(*s);
  s->microbatch.store(microbatch, R), s->stage.store(stage, R);
  end(*s);
}

WaitScope::WaitScope(const char* op, int peer, const char* group, const int* ranks,
                     int n_ranks) noexcept
    : slot_(nullptr) {
  if (!op) return;
  Slot* s = my_slot();
  if (!s || s->start_ns.load(R) != 0) return;  // inside an outer wait: it stands
  slot_ = s;
  begin(*s);
  s->op.store(op, R), s->peer.store(peer, R), s->group.store(group, R);
  s->n_ranks.store(ranks ? n_ranks : 0, R);
  for (int i = 0; ranks && i < std::min(n_ranks, kMaxRanks); ++i) s->ranks[i].store(ranks[i], R);
  s->start_ns.store(steady_now_ns(), R);
  end(*s);
}

WaitScope::~WaitScope() {
  if (!slot_) return;
  Slot& s = *static_cast<Slot*>(slot_);
  begin(s);
  s.op.store(nullptr, R), s.start_ns.store(0, R);
  end(s);
}

std::vector<WaitInfo> snapshot() {
  std::vector<WaitInfo> out;
  for (Slot& s : g_slots) {
    if (!s.used.load(std::memory_order_acquire)) continue;
    for (int attempt = 0; attempt < 1000; ++attempt) {
      const uint32_t s1 = s.seq.load(std::memory_order_acquire);
      if (s1 & 1) {
        std::this_thread::yield();
        continue;
      }
      WaitInfo w;
      w.op = s.op.load(R), w.peer = s.peer.load(R), w.group = s.group.load(R);
      w.n_ranks = s.n_ranks.load(R);
      for (int i = 0; i < std::min(w.n_ranks, kMaxRanks); ++i)
        w.ranks.push_back(s.ranks[i].load(R));
      w.start_ns = s.start_ns.load(R), w.step = s.step.load(R), w.phase = s.phase.load(R);
      w.microbatch = s.microbatch.load(R), w.stage = s.stage.load(R), w.main = s.main.load(R);
      std::atomic_thread_fence(std::memory_order_acquire);
      if (s.seq.load(R) != s1) continue;
      if (!w.op) w.start_ns = 0;
      out.push_back(std::move(w));
      break;
    }
  }
  return out;
}

// ---- status files ----

std::string status_json(const RankStatus& s) {
  std::ostringstream o;
  o << "{\"rank\":" << s.rank << ",\"pid\":" << s.pid << ",\"host\":\"" << escape(s.host)
    << "\",\"time\":" << fmt("%.3f", s.time) << ",\"step\":" << s.step << ",\"phase\":\""
    << escape(s.phase) << "\",\"microbatch\":" << s.microbatch << ",\"stage\":" << s.stage
    << ",\"waiting\":\"" << escape(s.waiting) << "\",\"peer\":" << s.peer
    << ",\"waited_s\":" << fmt("%.3f", s.waited_s) << "}\n";
  return o.str();
}

std::optional<RankStatus> parse_status(const std::string& j) {
  RankStatus s;
  const auto rank = field(j, "rank"), pid = field(j, "pid"), host = field(j, "host"),
             time = field(j, "time"), step = field(j, "step"), phase = field(j, "phase"),
             mb = field(j, "microbatch"), stage = field(j, "stage"), waiting = field(j, "waiting"),
             peer = field(j, "peer"), waited = field(j, "waited_s");
  if (!rank || !pid || !host || !time || !step || !phase || !mb || !stage || !waiting || !peer ||
      !waited)
    return std::nullopt;
  try {
    s.rank = std::stoi(*rank), s.pid = std::stoll(*pid), s.host = *host;
    s.time = std::stod(*time), s.step = std::stoll(*step), s.phase = *phase;
    s.microbatch = std::stoi(*mb), s.stage = std::stoi(*stage), s.waiting = *waiting;
    s.peer = std::stoi(*peer), s.waited_s = std::stod(*waited);
  } catch (const std::exception&) {
    return std::nullopt;
  }
  return s;
}

bool write_status(const std::string& path, const RankStatus& s) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << status_json(s);
    if (!f.flush()) return false;
  }
  return std::rename(tmp.c_str(), path.c_str()) == 0;
}

std::optional<RankStatus> read_status(const std::string& path) {
  std::ifstream f(path);
  if (!f) return std::nullopt;
  std::stringstream ss;
  ss << f.rdbuf();
  return parse_status(ss.str());
}

// ---- the verdict and the message ----

std::string most_behind(const std::vector<std::optional<RankStatus>>& ranks, double now,
                        double stale_s) {
  int stale = -1, missing = -1, busy = -1, low = -1;
  double oldest = stale_s;
  int64_t min_step = INT64_MAX, max_step = INT64_MIN;
  for (int r = 0; r < static_cast<int>(ranks.size()); ++r) {
    const auto& s = ranks[r];
    if (!s) {
      if (missing < 0) missing = r;
      continue;
    }
    if (now - s->time > oldest) oldest = now - s->time, stale = r;
    if (s->waiting.empty() && (busy < 0 || s->step < ranks[busy]->step)) busy = r;
    if (s->step < min_step) min_step = s->step, low = r;
    max_step = std::max(max_step, s->step);
  }
  auto where = [&](int r) {
    const RankStatus& s = *ranks[r];
    return context(s.step, s.phase, s.microbatch, s.stage);
  };
  if (stale >= 0)
    return "rank " + std::to_string(stale) + " (no heartbeat for " + fmt("%.1f", oldest) +
           " s: stopped, dead or unreachable; last at " + where(stale) + ")";
  if (missing >= 0)
    return "rank " + std::to_string(missing) + " (no status file: it never started its watchdog)";
  if (busy >= 0)
    return "rank " + std::to_string(busy) + " (alive but in no communication wait, at " +
           where(busy) + ")";
  if (low >= 0 && min_step < max_step)
    return "rank " + std::to_string(low) + " (at " + where(low) + ", behind step " +
           std::to_string(max_step) + ")";
  return "";
}

std::string hang_message(const WaitInfo& w, double waited_s, double timeout_s,
                         const std::string& behind) {
  std::string m = "hang: waited " + fmt("%.1f", waited_s) + " s (run.comm_timeout_s " +
                  fmt("%g", timeout_s) + ") in " + (w.op ? w.op : "?");
  if (w.peer >= 0) {
    m += " with rank " + std::to_string(w.peer);
  } else if (w.n_ranks > 0) {
    m += " over ranks ";
    for (size_t i = 0; i < w.ranks.size(); ++i) {
      if (i) m += ',';
      m += std::to_string(w.ranks[i]);
    }
    if (w.n_ranks > kMaxRanks) m += ",... (" + std::to_string(w.n_ranks) + " ranks)";
  }
  if (w.group) m += std::string(" of group ") + w.group;
  m += " (" + context(w.step, w.phase ? w.phase : "", w.microbatch, w.stage) + ")";
  if (!behind.empty()) m += "; most behind: " + behind;
  return m + "; aborting the job";
}

// ---- the watchdog ----

Watchdog::Watchdog(Options o) : o_(std::move(o)) {
  if (!o_.wall_s)
    o_.wall_s = [] {
      return std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
          .count();
    };
}

std::string Watchdog::status_path(int rank) const {
  return o_.status_dir + "/rank_" + std::to_string(rank) + ".json";
}

void Watchdog::start() {
  if (Slot* s = my_slot()) s->main.store(true, R);
  if (o_.timeout_s <= 0 || thread_.joinable()) return;
  stopping_ = false;
  check();  // the first heartbeat before training starts
  thread_ = std::thread([this] { loop(); });
}

void Watchdog::stop() {
  {
    std::lock_guard<std::mutex> lk(mu_);
    stopping_ = true;
  }
  cv_.notify_all();
  if (!thread_.joinable()) return;
  thread_.join();
  if (!o_.status_dir.empty())  // the last heartbeat: where this rank finished
    write_status(status_path(o_.rank), own_status(snapshot()));
}

RankStatus Watchdog::own_status(const std::vector<WaitInfo>& recs) const {
  RankStatus s;
  s.rank = o_.rank, s.pid = getpid(), s.time = o_.wall_s();
  char host[256] = {};
  if (gethostname(host, sizeof host - 1) == 0) s.host = host;
  const WaitInfo* m = nullptr;
  for (const WaitInfo& w : recs)
    if (w.main) m = &w;
  if (!m) return s;
  s.step = m->step, s.phase = m->phase ? m->phase : "";
  s.microbatch = m->microbatch, s.stage = m->stage;
  if (m->op) {
    s.waiting = m->op, s.peer = m->peer;
    s.waited_s = static_cast<double>(o_.now_ns() - m->start_ns) * 1e-9;
  }
  return s;
}

std::optional<std::string> Watchdog::check() {
  const std::vector<WaitInfo> recs = snapshot();
  const RankStatus own = own_status(recs);
  if (!o_.status_dir.empty()) write_status(status_path(o_.rank), own);
  const int64_t now = o_.now_ns();
  const WaitInfo* worst = nullptr;
  for (const WaitInfo& w : recs)
    if (w.op && (!worst || w.start_ns < worst->start_ns)) worst = &w;
  if (!worst) return std::nullopt;
  const double waited = static_cast<double>(now - worst->start_ns) * 1e-9;
  if (o_.timeout_s <= 0 || waited <= o_.timeout_s) return std::nullopt;
  std::string behind;
  if (!o_.status_dir.empty()) {
    std::vector<std::optional<RankStatus>> all;
    for (int r = 0; r < o_.world; ++r)
      all.push_back(r == o_.rank ? std::optional<RankStatus>(own) : read_status(status_path(r)));
    behind = most_behind(all, o_.wall_s(), std::max(3 * o_.interval_s, 2.0));
  }
  return hang_message(*worst, waited, o_.timeout_s, behind);
}

void Watchdog::loop() {
  const auto period = std::chrono::duration<double>(o_.interval_s);
  std::unique_lock<std::mutex> lk(mu_);
  while (!cv_.wait_for(lk, period, [this] { return stopping_; })) {
    lk.unlock();
    const std::optional<std::string> hang = check();
    if (hang) {
      if (o_.abort_grace_s > 0)  // a backstop in case the abort itself hangs
        std::thread([g = o_.abort_grace_s] {
          std::this_thread::sleep_for(std::chrono::duration<double>(g));
          std::fprintf(stderr, "moetron: error: the job abort did not end this process; exiting\n");
          _exit(1);
        }).detach();
      if (o_.on_hang) o_.on_hang(*hang);
      return;  // one report
    }
    lk.lock();
  }
}

}  // namespace moetron::watchdog
