// Hang detection (issue #15 part 2): deadlines on every blocking communication wait, and a
// per-rank heartbeat that says which rank is behind.
//
// Two halves. The cheap one runs on every thread that communicates: a WaitScope around each
// blocking wait (the MPI communicator puts one in every blocking call and in a Request's blocking
// wait; the NCCL communicator in its host waits) marks the thread's record as "waiting in OP on
// PEER (or over RANKS of GROUP) since T". The record also carries the thread's context — step,
// phase, micro-batch, stage — that the trainer, the pipeline executor and the checkpoint writer
// set. A record is a fixed slot of relaxed atomics behind a sequence counter (a seqlock): no
// allocation, no lock, a dozen atomic stores and one clock read per wait.
//
// The other half is one Watchdog thread per process (as PyTorch's NCCL watchdog), started by
// `moetron train` when run.comm_timeout_s > 0. Every interval (1 s) it reads the records and
// rewrites this rank's status file <status_dir>/rank_<R>.json atomically (tmp + rename): pid,
// host, wall time, step, phase, micro-batch, stage and what the main thread waits for. When a
// record has waited longer than the timeout, it reads every rank's status file, names the rank
// most behind (a stale heartbeat — stopped, dead or unreachable — before one that is not waiting
// at all, before the lowest step) and calls on_hang with one line, e.g.
//   hang: waited 5.8 s (run.comm_timeout_s 5) in irecv with rank 2 of group pp (step 6, phase
//   pipeline, micro-batch 2, stage 0); most behind: rank 3 (no heartbeat for 6.0 s: ...)
// on_hang aborts the job (abort_all); if it has not ended the process 20 s later, the watchdog
// _exits(1) (a rank that dies makes mpirun end the job). Nothing here changes what the
// communicators call, so reductions stay bitwise what they were.
//
// The waits themselves are not timed out in place (no MPI_Test loops): a hung MPI call cannot
// be cancelled portably, so the whole job ends, which is what the issue asks.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace moetron::watchdog {

// ---- the calling thread's context (copied into its wait record; cheap, any thread) ----
// step: the 1-based step in progress (0 = before the first); phase: a string literal
// ("setup", "pipeline", "optimizer", "eval", "sample", "checkpoint save", ...).
void set_step(int64_t step, const char* phase);
void set_phase(const char* phase);
// The micro-batch and model stage the thread computes or waits for (-1, -1: none).
void set_microbatch(int microbatch, int stage);

// Marks the calling thread as waiting until destroyed. op: a string literal ("recv",
// "all_reduce", ...; null: the scope records nothing). peer: the world rank waited on, -1 for a
// collective. ranks/n_ranks: the world ranks involved (a collective's group, a batch's peers), may
// be null; the first kMaxRanks are copied. `group` (the communicator's name, may be null) must
// outlive the scope. Nests: inside another scope of the thread it records nothing (the outer wait
// and its start time stand).
constexpr int kMaxRanks = 8;
class WaitScope {
 public:
  WaitScope(const char* op, int peer, const char* group = nullptr, const int* ranks = nullptr,
            int n_ranks = 0) noexcept;
  ~WaitScope();
  WaitScope(const WaitScope&) = delete;
  WaitScope& operator=(const WaitScope&) = delete;

 private:
  void* slot_;  // null: an inner scope, or no record free
};

// A consistent copy of one thread's record.
struct WaitInfo {
  const char* op = nullptr;  // null: not waiting
  int peer = -1;
  const char* group = nullptr;
  std::vector<int> ranks;  // the first kMaxRanks
  int n_ranks = 0;
  int64_t start_ns = 0;  // steady clock
  int64_t step = 0;
  const char* phase = nullptr;
  int microbatch = -1, stage = -1;
  bool main = false;  // the thread that started the watchdog (the training loop)
};
// Every thread's record (those that have ever waited or set a context and still exist).
std::vector<WaitInfo> snapshot();
int64_t steady_now_ns();

// What a rank's status file says.
struct RankStatus {
  int rank = -1;
  int64_t pid = 0;
  std::string host;
  double time = 0;  // wall clock (seconds since the epoch) when written
  int64_t step = 0;
  std::string phase;
  int microbatch = -1, stage = -1;
  std::string waiting;  // the main thread's wait ("" = none)
  int peer = -1;
  double waited_s = 0;
};
std::string status_json(const RankStatus& s);
std::optional<RankStatus> parse_status(const std::string& json);
// Writes `s` to `path` through path.tmp and a rename; false on any failure (never throws).
bool write_status(const std::string& path, const RankStatus& s);
std::optional<RankStatus> read_status(const std::string& path);

// The rank most behind, as a phrase ("rank 1 (no heartbeat for 6.2 s: stopped, dead or
// unreachable; last at step 5, phase pipeline, micro-batch 3)"), from every rank's status
// (nullopt: no file) at wall time `now`; `stale_s`: a heartbeat older than this is stale.
// "" when no rank stands out.
std::string most_behind(const std::vector<std::optional<RankStatus>>& ranks, double now,
                        double stale_s);
// The hang line for a wait that has lasted `waited_s`.
std::string hang_message(const WaitInfo& w, double waited_s, double timeout_s,
                         const std::string& behind);

struct Options {
  double timeout_s = 600;  // run.comm_timeout_s (> 0)
  double interval_s = 1;   // heartbeat and check period
  std::string status_dir;  // "" = no status files
  int rank = 0, world = 1;
  std::function<void(const std::string&)> on_hang;  // must not return (abort_all)
  std::function<int64_t()> now_ns = steady_now_ns;  // wait clock (tests inject one)
  std::function<double()> wall_s;                   // heartbeat clock; default: system clock
  double abort_grace_s = 20;                        // then _exit(1) if on_hang returned
};

// The process's watchdog. start() marks the calling thread as the main one and, with a positive
// timeout, starts the thread; stop() (and the destructor) end it. check() is one tick (tests call
// it directly): it writes the heartbeat and returns the hang message of an expired wait, if any.
class Watchdog {
 public:
  explicit Watchdog(Options o);
  ~Watchdog() { stop(); }
  Watchdog(const Watchdog&) = delete;
  Watchdog& operator=(const Watchdog&) = delete;
  void start();
  void stop();
  std::optional<std::string> check();
  std::string status_path(int rank) const;

 private:
  void loop();
  RankStatus own_status(const std::vector<WaitInfo>& recs) const;
  Options o_;
  std::thread thread_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool stopping_ = false;
};

}  // namespace moetron::watchdog
