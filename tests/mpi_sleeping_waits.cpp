// mpi-ranks: 2 3
// Sleeping MPI waits (parallel/comm.h set_sleeping_waits, parallel.wait) on real ranks. Every
// blocking operation — send/recv, a Request's wait, the blocking collectives, a barrier — gives
// the same data, bit for bit, as with Open MPI's polling waits; and a rank that waits 0.4 s for a
// peer that computes spends a small part of that in CPU time (a polling one spends about all of
// it when it has a core to itself), so on a node with more ranks than cores the waiting ranks
// leave the cores to the computing ones.
#include <gtest/gtest.h>

#include <chrono>
#include <cstring>
#include <ctime>
#include <thread>
#include <vector>

#include "parallel/comm.h"

using namespace moetron;

namespace {

double process_cpu_seconds() {
  timespec t{};
  clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &t);
  return static_cast<double>(t.tv_sec) + 1e-9 * static_cast<double>(t.tv_nsec);
}

// Every blocking operation once; what each rank received, as bytes.
std::vector<unsigned char> exchange_everything(Communicator& w) {
  const int P = w.size(), r = w.rank();
  std::vector<unsigned char> got;
  const auto keep = [&](const void* p, size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    got.insert(got.end(), b, b + n);
  };
  std::vector<float> f(9);
  for (size_t i = 0; i < f.size(); ++i) f[i] = 0.1f * static_cast<float>(r + 1) / (1.f + i);
  w.all_reduce(f.data(), f.size());  // fp32 sums: the algorithm's order shows in the bits
  keep(f.data(), sizeof(float) * f.size());
  std::vector<float> mine(3, static_cast<float>(r) + 0.25f), all(3 * P);
  w.all_gather(mine.data(), all.data(), mine.size());
  keep(all.data(), sizeof(float) * all.size());
  std::vector<int64_t> in(P), out(P);
  for (int q = 0; q < P; ++q) in[q] = 100 * r + q;
  w.all_to_all(in.data(), out.data(), 1);
  keep(out.data(), sizeof(int64_t) * out.size());
  const int next = (r + 1) % P, prev = (r + P - 1) % P;
  int64_t token = 7 * r + 1, from_prev = -1;
  if (r % 2 == 0) {  // a ring of blocking sends and receives, in an order that cannot deadlock
    w.send(&token, sizeof token, next, 3);
    w.recv(&from_prev, sizeof from_prev, prev, 3);
  } else {
    w.recv(&from_prev, sizeof from_prev, prev, 3);
    w.send(&token, sizeof token, next, 3);
  }
  keep(&from_prev, sizeof from_prev);
  int64_t req_in = -1;
  Request rr = w.irecv(&req_in, sizeof req_in, prev, 4);
  Request rs = w.isend(&token, sizeof token, next, 4);
  rs.wait(), rr.wait();
  keep(&req_in, sizeof req_in);
  std::vector<float> rs_in(2 * P, static_cast<float>(r) * 0.5f + 1.f / 3), rs_out(2);
  w.reduce_scatter(rs_in.data(), rs_out.data(), 2);
  keep(rs_out.data(), sizeof(float) * rs_out.size());
  w.barrier();
  return got;
}

}  // namespace

TEST(SleepingWaits, SameDataBitForBitAsPolling) {
  Communicator& w = world();
  set_sleeping_waits(false);
  const std::vector<unsigned char> polled = exchange_everything(w);
  set_sleeping_waits(true);
  EXPECT_TRUE(sleeping_waits());
  const std::vector<unsigned char> slept = exchange_everything(w);
  set_sleeping_waits(false);
  ASSERT_EQ(polled.size(), slept.size());
  EXPECT_EQ(std::memcmp(polled.data(), slept.data(), polled.size()), 0);
  // and the values are what the ranks sent: the ring's token from the previous rank
  const int P = w.size(), prev = (w.rank() + P - 1) % P;
  int64_t from_prev = 0;
  const size_t at = sizeof(float) * (9 + 3 * P) + sizeof(int64_t) * P;
  std::memcpy(&from_prev, slept.data() + at, sizeof from_prev);
  EXPECT_EQ(from_prev, 7 * prev + 1);
}

// Rank 0 computes (sleeps) 0.4 s, then sends; every other rank waits for it in a blocking
// receive, a Request's wait and an all-reduce. With sleeping waits, the waiters' CPU time is a
// small part of the 1.2 s they wait.
TEST(SleepingWaits, AWaitingRankLeavesItsCore) {
  Communicator& w = world();
  const int P = w.size(), r = w.rank();
  set_sleeping_waits(true);
  w.barrier();
  const double cpu0 = process_cpu_seconds();
  const auto t0 = std::chrono::steady_clock::now();
  const auto compute = [] { std::this_thread::sleep_for(std::chrono::milliseconds(400)); };
  int64_t v = 0;
  if (r == 0) {
    for (int q = 1; q < P; ++q) compute(), v = q, w.send(&v, sizeof v, q, 5);
    compute(), v = 11;
    for (int q = 1; q < P; ++q) w.send(&v, sizeof v, q, 6);
    compute();
  } else {
    w.recv(&v, sizeof v, 0, 5);
    EXPECT_EQ(v, r);
    Request req = w.irecv(&v, sizeof v, 0, 6);
    req.wait();
    EXPECT_EQ(v, 11);
  }
  double one = 1;
  w.all_reduce(&one, 1);
  EXPECT_EQ(one, P);
  const double wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double cpu = process_cpu_seconds() - cpu0;
  set_sleeping_waits(false);
  EXPECT_GE(wall, 0.4 * (P + 1) - 0.05);
  if (r != 0) {
    EXPECT_LT(cpu, 0.25 * wall) << "a waiting rank used " << cpu << " s of CPU in " << wall << " s";
  }
}
