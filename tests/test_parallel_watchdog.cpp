// The hang watchdog (parallel/watchdog.h) without MPI: wait records and their context, expiry
// against an injected clock, the hang message, the status files and the choice of the rank most
// behind, and the background thread firing on a real expired wait (and not on short ones).
#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <future>
#include <thread>

#include "parallel/watchdog.h"

namespace wd = moetron::watchdog;

namespace {

// The records of waits in progress (other threads of this process have none).
std::vector<wd::WaitInfo> waiting() {
  std::vector<wd::WaitInfo> out;
  for (auto& w : wd::snapshot())
    if (w.op) out.push_back(w);
  return out;
}

std::string temp_dir(const char* name) {
  const auto d = std::filesystem::temp_directory_path() /
                 (std::string("moetron_watchdog_") + name + "_" + std::to_string(getpid()));
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  return d.string();
}

wd::RankStatus status(int rank, double time, int64_t step, const char* waiting_in) {
  wd::RankStatus s;
  s.rank = rank, s.pid = 100 + rank, s.host = "node", s.time = time, s.step = step;
  s.phase = "pipeline", s.microbatch = 3, s.stage = rank / 2, s.waiting = waiting_in;
  return s;
}

}  // namespace

TEST(Watchdog, WaitScopeRecordsTheWaitAndItsContext) {
  wd::set_step(5, "pipeline");
  wd::set_microbatch(3, 1);
  EXPECT_TRUE(waiting().empty());
  const int ranks[] = {0, 2, 4};
  {
    const wd::WaitScope w("all_reduce", -1, "dp", ranks, 3);
    auto recs = waiting();
    ASSERT_EQ(recs.size(), 1u);
    EXPECT_STREQ(recs[0].op, "all_reduce");
    EXPECT_EQ(recs[0].peer, -1);
    EXPECT_STREQ(recs[0].group, "dp");
    EXPECT_EQ(recs[0].ranks, (std::vector<int>{0, 2, 4}));
    EXPECT_EQ(recs[0].step, 5);
    EXPECT_STREQ(recs[0].phase, "pipeline");
    EXPECT_EQ(recs[0].microbatch, 3);
    EXPECT_EQ(recs[0].stage, 1);
    const int64_t start = recs[0].start_ns;
    EXPECT_GT(start, 0);
    {  // an inner wait (a Request waited inside a call) keeps the outer one and its start
      const wd::WaitScope inner("irecv", 7, "pp");
      recs = waiting();
      ASSERT_EQ(recs.size(), 1u);
      EXPECT_STREQ(recs[0].op, "all_reduce");
      EXPECT_EQ(recs[0].start_ns, start);
    }
    EXPECT_EQ(waiting().size(), 1u);
  }
  EXPECT_TRUE(waiting().empty());
  {
    const wd::WaitScope none(nullptr, 1);  // a non-blocking test: nothing recorded
    EXPECT_TRUE(waiting().empty());
  }
  wd::set_phase("optimizer");  // a new phase forgets the micro-batch
  const wd::WaitScope w("recv", 1, "pp");
  ASSERT_EQ(waiting().size(), 1u);
  EXPECT_EQ(waiting()[0].microbatch, -1);
  EXPECT_STREQ(waiting()[0].phase, "optimizer");
}

TEST(Watchdog, SeesWaitsOfOtherThreadsAndFreesTheirRecords) {
  std::promise<void> go;
  std::promise<void> in;
  std::thread t([&] {
    wd::set_step(9, "checkpoint save");
    const wd::WaitScope w("all_reduce", -1, "checkpoint");
    in.set_value();
    go.get_future().wait();
  });
  in.get_future().wait();
  auto recs = waiting();
  ASSERT_EQ(recs.size(), 1u);
  EXPECT_EQ(recs[0].step, 9);
  EXPECT_STREQ(recs[0].phase, "checkpoint save");
  const size_t threads = wd::snapshot().size();
  go.set_value();
  t.join();
  EXPECT_TRUE(waiting().empty());
  EXPECT_EQ(wd::snapshot().size(), threads - 1);  // its record was freed at thread exit
}

TEST(Watchdog, ExpiresOnlyPastTheTimeoutAndSaysWhatItWaitedFor) {
  int64_t now = 0;
  wd::Options o;
  o.timeout_s = 5;
  o.rank = 2, o.world = 4;
  o.now_ns = [&] { return now; };
  wd::Watchdog dog(o);
  now = wd::steady_now_ns() + 60'000'000'000;
  EXPECT_FALSE(dog.check());  // nothing waits
  wd::set_step(5, "pipeline");
  wd::set_microbatch(3, 1);
  const wd::WaitScope w("recv", 1, "pp");
  now = wd::steady_now_ns() + 4'900'000'000;
  EXPECT_FALSE(dog.check());
  now = wd::steady_now_ns() + 6'000'000'000;
  const auto m = dog.check();
  ASSERT_TRUE(m);
  EXPECT_EQ(m->substr(0, 13), "hang: waited ");
  EXPECT_NE(m->find(" s (run.comm_timeout_s 5) in recv with rank 1 of group pp (step 5, phase "
                    "pipeline, micro-batch 3, stage 1); aborting the job"),
            std::string::npos)
      << *m;
}

TEST(Watchdog, HangMessageOfACollective) {
  wd::WaitInfo w;
  w.op = "reduce_scatter", w.group = "dp", w.step = 7, w.phase = "optimizer";
  w.ranks = {0, 1, 2, 3, 4, 5, 6, 7}, w.n_ranks = 16;
  EXPECT_EQ(wd::hang_message(w, 30.04, 30, "rank 9 (x)"),
            "hang: waited 30.0 s (run.comm_timeout_s 30) in reduce_scatter over ranks "
            "0,1,2,3,4,5,6,7,... (16 ranks) of group dp (step 7, phase optimizer); most behind: "
            "rank 9 (x); aborting the job");
}

TEST(Watchdog, StatusFilesRoundTrip) {
  const std::string dir = temp_dir("status");
  wd::RankStatus s = status(3, 1234567.25, 42, "irecv");
  s.host = "we\"ird\\host", s.peer = 1, s.waited_s = 2.5;
  ASSERT_TRUE(wd::write_status(dir + "/rank_3.json", s));
  EXPECT_FALSE(std::filesystem::exists(dir + "/rank_3.json.tmp"));
  const auto r = wd::read_status(dir + "/rank_3.json");
  ASSERT_TRUE(r);
  EXPECT_EQ(r->rank, 3);
  EXPECT_EQ(r->pid, 103);
  EXPECT_EQ(r->host, s.host);
  EXPECT_DOUBLE_EQ(r->time, 1234567.25);
  EXPECT_EQ(r->step, 42);
  EXPECT_EQ(r->phase, "pipeline");
  EXPECT_EQ(r->microbatch, 3);
  EXPECT_EQ(r->stage, 1);
  EXPECT_EQ(r->waiting, "irecv");
  EXPECT_EQ(r->peer, 1);
  EXPECT_DOUBLE_EQ(r->waited_s, 2.5);
  EXPECT_FALSE(wd::read_status(dir + "/rank_9.json"));
  EXPECT_FALSE(wd::parse_status("{\"rank\":1}"));
  EXPECT_FALSE(wd::parse_status(""));
  EXPECT_FALSE(wd::write_status(dir + "/no/such/dir/rank_0.json", s));
  std::filesystem::remove_all(dir);
}

TEST(Watchdog, MostBehindPrefersAStaleHeartbeatThenAnIdleRankThenTheLowestStep) {
  const double now = 1000;
  std::vector<std::optional<wd::RankStatus>> r = {
      status(0, now - 0.5, 5, "recv"), status(1, now - 7.3, 5, "irecv"),
      status(2, now - 0.2, 5, "all_reduce"), status(3, now - 4.0, 5, "")};
  EXPECT_EQ(wd::most_behind(r, now, 3),
            "rank 1 (no heartbeat for 7.3 s: stopped, dead or unreachable; last at step 5, phase "
            "pipeline, micro-batch 3, stage 0)");
  r[1]->time = r[3]->time = now - 1;  // all alive: rank 3 is in no wait
  EXPECT_EQ(wd::most_behind(r, now, 3),
            "rank 3 (alive but in no communication wait, at step 5, phase pipeline, micro-batch "
            "3, stage 1)");
  r[3]->waiting = "recv", r[2]->step = 4;  // all waiting: the lowest step
  EXPECT_EQ(wd::most_behind(r, now, 3),
            "rank 2 (at step 4, phase pipeline, micro-batch 3, stage 1, behind step 5)");
  r[2]->step = 5;  // nobody stands out
  EXPECT_EQ(wd::most_behind(r, now, 3), "");
  r[2].reset();
  EXPECT_EQ(wd::most_behind(r, now, 3), "rank 2 (no status file: it never started its watchdog)");
}

TEST(Watchdog, ThreadFiresOnAnExpiredWaitAndWritesHeartbeats) {
  const std::string dir = temp_dir("thread");
  std::promise<std::string> fired;
  wd::Options o;
  o.timeout_s = 0.3, o.interval_s = 0.05, o.abort_grace_s = 0;
  o.status_dir = dir, o.rank = 0, o.world = 2;
  o.on_hang = [&](const std::string& m) { fired.set_value(m); };
  // rank 1's heartbeat stopped 10 s ago (a SIGSTOPped process)
  ASSERT_TRUE(wd::write_status(
      dir + "/rank_1.json",
      status(1,
             std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch())
                     .count() -
                 10,
             4, "")));
  wd::Watchdog dog(o);
  wd::set_step(4, "pipeline");
  dog.start();
  {  // short waits do not fire
    for (int i = 0; i < 5; ++i) {
      const wd::WaitScope w("recv", 1, "pp");
      std::this_thread::sleep_for(std::chrono::milliseconds(40));
    }
  }
  auto f = fired.get_future();
  EXPECT_EQ(f.wait_for(std::chrono::milliseconds(400)), std::future_status::timeout);
  const auto t0 = std::chrono::steady_clock::now();
  const wd::WaitScope w("recv", 1, "pp");
  ASSERT_EQ(f.wait_for(std::chrono::seconds(5)), std::future_status::ready);
  const double took = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  EXPECT_GE(took, 0.3);
  const std::string m = f.get();
  EXPECT_NE(m.find("in recv with rank 1 of group pp (step 4, phase pipeline)"), std::string::npos)
      << m;
  EXPECT_NE(m.find("most behind: rank 1 (no heartbeat for 1"), std::string::npos) << m;
  const auto own = wd::read_status(dir + "/rank_0.json");
  ASSERT_TRUE(own);
  EXPECT_EQ(own->pid, getpid());
  EXPECT_EQ(own->step, 4);
  EXPECT_EQ(own->waiting, "recv");
  EXPECT_EQ(own->peer, 1);
  dog.stop();
  std::filesystem::remove_all(dir);
}
