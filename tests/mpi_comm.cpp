// mpi-ranks: 2 3 4
// The MPI communicator on real ranks: every collective and point-to-point operation with odd and
// zero counts, values each rank can predict; sub-communicators of the rank grid.
#include <gtest/gtest.h>

#include <numeric>
#include <vector>

#include "parallel/comm.h"
#include "parallel/process_groups.h"

using namespace moetron;

namespace {
float value(int rank, size_t i) { return static_cast<float>(rank * 1000 + static_cast<int>(i)); }
}  // namespace

TEST(comm, AllReduceSumAndMax) {
  Communicator& w = world();
  const int P = w.size(), r = w.rank();
  std::vector<double> d(7);
  for (size_t i = 0; i < d.size(); ++i) d[i] = r + 0.5 * static_cast<double>(i);
  w.all_reduce(d.data(), d.size());
  for (size_t i = 0; i < d.size(); ++i)
    EXPECT_DOUBLE_EQ(d[i], P * (P - 1) / 2.0 + P * 0.5 * static_cast<double>(i));
  int64_t m = r * 3;
  w.all_reduce(&m, 1, ReduceOp::Max);
  EXPECT_EQ(m, (P - 1) * 3);
}

TEST(comm, ReduceScatterAndAllGather) {
  Communicator& w = world();
  const int P = w.size(), r = w.rank();
  const size_t n = 5;
  std::vector<float> in(P * n), out(n);
  for (size_t i = 0; i < in.size(); ++i) in[i] = value(r, i);
  w.reduce_scatter(in.data(), out.data(), n);
  for (size_t i = 0; i < n; ++i) {
    float want = 0;
    for (int q = 0; q < P; ++q) want += value(q, r * n + i);
    EXPECT_EQ(out[i], want);
  }
  std::vector<float> all(P * n);
  w.all_gather(out.data(), all.data(), n);
  for (int q = 0; q < P; ++q)
    for (size_t i = 0; i < n; ++i) {
      float want = 0;
      for (int s = 0; s < P; ++s) want += value(s, q * n + i);
      EXPECT_EQ(all[q * n + i], want);
    }
}

TEST(comm, AllToAllVWithZeroCountsOverlapsCompute) {
  Communicator& w = world();
  const int P = w.size(), r = w.rank();
  // rank r sends (r + p) % 3 floats to peer p (some zero), valued (r, p, i)
  std::vector<size_t> sb(P), rb(P);
  std::vector<float> send;
  for (int p = 0; p < P; ++p) {
    const int c = (r + p) % 3;
    sb[p] = c * sizeof(float);
    rb[p] = ((p + r) % 3) * sizeof(float);
    for (int i = 0; i < c; ++i) send.push_back(static_cast<float>(r * 100 + p * 10 + i));
  }
  std::vector<float> recv(std::accumulate(rb.begin(), rb.end(), size_t{0}) / sizeof(float));
  Request req = w.iall_to_all_v(send.data(), sb, recv.data(), rb);
  double busy = 0;  // local work while the exchange is in flight
  for (int i = 0; i < 100000; ++i) busy += i * 1e-9;
  req.wait();
  EXPECT_GT(busy, 0);
  size_t k = 0;
  for (int p = 0; p < P; ++p)
    for (int i = 0; i < (p + r) % 3; ++i) EXPECT_EQ(recv[k++], p * 100 + r * 10 + i);
  EXPECT_THROW(w.iall_to_all_v(send.data(), {}, recv.data(), rb), CommError);
}

TEST(comm, PointToPointRing) {
  Communicator& w = world();
  const int P = w.size(), r = w.rank();
  std::vector<int64_t> out(3, r), in(3, -1);
  Request rr = w.irecv(in.data(), sizeof(int64_t) * 3, (r + P - 1) % P, 7);
  Request sr = w.isend(out.data(), sizeof(int64_t) * 3, (r + 1) % P, 7);
  rr.wait();
  sr.wait();
  EXPECT_EQ(in[0], (r + P - 1) % P);
  int64_t counts_in[8], counts_out[8];
  for (int p = 0; p < P; ++p) counts_out[p] = r * 10 + p;
  w.all_to_all(counts_out, counts_in, 1);
  for (int p = 0; p < P; ++p) EXPECT_EQ(counts_in[p], p * 10 + r);
}

TEST(comm, GroupsOfTheRankGrid) {
  Communicator& w = world();
  if (w.size() != 4) GTEST_SKIP() << "needs 4 ranks";
  // PP2 x DP2 with EP2: groups by the grid's arithmetic; an all-reduce of the world rank over each
  // group sums exactly the group's members
  RankGrid g = RankGrid::make(4, w.rank(), 2, 2, 2, 0);
  ProcessGroups pg(g, w, true);
  auto check = [&](Communicator* c, std::vector<int> members) {
    ASSERT_NE(c, nullptr);
    EXPECT_EQ(c->size(), static_cast<int>(members.size()));
    int64_t s = w.rank();
    c->all_reduce(&s, 1);
    EXPECT_EQ(s, std::accumulate(members.begin(), members.end(), 0));
  };
  check(pg.pp.get(), g.pp_group());
  check(pg.dp.get(), g.dp_group());
  check(pg.ep.get(), g.ep_group());
  check(pg.edp.get(), g.edp_group());
  check(pg.tied.get(), g.pp_group());
}
