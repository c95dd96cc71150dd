// mpi-ranks: 2 3 4
// The MPI communicator on real ranks: every collective and point-to-point operation with odd and
// zero counts, values each rank can predict; sub-communicators of the rank grid. bf16 reductions
// bit for bit against fp32-sum-then-round-to-nearest-even (on pairs of ranks, where MPI applies
// the op once) and deterministic on the whole world; bytes gathers; batched send/recv rings;
// Requests polled with test() (one that cannot be complete yet must say so). The memory-checked
// communicators (comm_checked.h) refuse the other kind of memory, and the rank grid's groups over
// a separate device world have the members of the host ones.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstring>
#include <numeric>
#include <random>
#include <vector>

#include "kernels/buffer.h"
#include "kernels/ops.h"
#include "kernels/scalar.h"
#include "parallel/comm.h"
#include "parallel/comm_checked.h"
#include "parallel/process_groups.h"

using namespace moetron;

namespace {
float value(int rank, size_t i) { return static_cast<float>(rank * 1000 + static_cast<int>(i)); }

// n bf16 values of rank r (any rank can regenerate another's): magnitudes over 2^-4..2^4, both
// signs, so sums of two need rounding about half the time
std::vector<uint16_t> bf16_values(int r, size_t n, unsigned salt) {
  std::mt19937 gen(1234u + 97u * static_cast<unsigned>(r) + salt);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  std::uniform_int_distribution<int> e(-4, 4);
  std::vector<uint16_t> v(n);
  for (auto& x : v) x = f32_to_bf16(std::ldexp(u(gen), e(gen)));
  return v;
}

// polls until complete (fails after 30 s instead of hanging); returns the number of polls
int poll(Request& req) {
  const auto t0 = std::chrono::steady_clock::now();
  int polls = 0;
  while (!req.test()) {
    ++polls;
    if (std::chrono::steady_clock::now() - t0 > std::chrono::seconds(30)) {
      ADD_FAILURE() << "request not complete after 30 s of test()";
      req.wait();
      break;
    }
  }
  return polls;
}
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
  check(pg.host.pp.get(), g.pp_group());
  check(pg.host.dp.get(), g.dp_group());
  check(pg.host.ep.get(), g.ep_group());
  check(pg.host.edp.get(), g.edp_group());
  check(pg.host.tied.get(), g.pp_group());
}

TEST(comm, CheckedGroupsCarryOnlyTheirKindOfMemory) {
  Communicator& w = world();
  const Exec guard = Exec::on(Device::Guard);
  auto host = checked_communicator(w, MemoryKind::Host);
  auto device = checked_communicator(w, MemoryKind::Device);
  const int64_t mine = w.rank() + 1, want = w.size() * (w.size() + 1) / 2;
  // each kind sums on its own memory
  int64_t h = mine;
  host->all_reduce(&h, 1);
  EXPECT_EQ(h, want);
  Buffer<int64_t> d(Device::Guard);
  d.resize(1);
  kernels::copy_from_host(guard, d.data(), &mine, sizeof mine);
  device->all_reduce(d.data(), 1);
  kernels::copy_to_host(guard, &h, d.data(), sizeof h);
  EXPECT_EQ(h, want);
  // and refuses the other, naming the group and what it carries; a split is checked too
  auto expect_refused = [](auto&& call, const std::string& says) {
    try {
      call();
      ADD_FAILURE() << "not refused: " << says;
    } catch (const CommError& e) {
      EXPECT_NE(std::string(e.what()).find(says), std::string::npos) << e.what();
    }
  };
  host->set_name("dp");
  expect_refused([&] { host->all_reduce(d.data(), 1); }, "communicator dp: all_reduce");
  expect_refused([&] { host->all_reduce(d.data(), 1); }, "this group carries host data");
  expect_refused([&] { device->all_reduce(&h, 1); }, "this group carries device data");
  auto pair = device->split(w.rank() / 2, w.rank());
  std::vector<P2pOp> ops = {P2pOp::send(&h, sizeof h, 0, 0)};
  expect_refused([&] { pair->batch_isend_irecv(ops); }, "batch_isend_irecv");
  host->set_name("world");
}

TEST(comm, DeviceGroupsHaveTheHostGroupsMembers) {
  Communicator& w = world();
  if (w.size() != 4) GTEST_SKIP() << "needs 4 ranks";
  RankGrid g = RankGrid::make(4, w.rank(), 2, 2, 2, 0);
  auto device_world = checked_communicator(w, MemoryKind::Host);  // another world, same ranks
  ProcessGroups pg(g, w, true, true, device_world.get());
  ProcessGroups same(g, w, true);
  EXPECT_EQ(&same.device(), &same.host);  // one world: one set
  ASSERT_NE(&pg.device(), &pg.host);
  auto members = [](Communicator* c) {
    std::vector<int64_t> all(static_cast<size_t>(c->size()), 0);
    all[static_cast<size_t>(c->rank())] = world().rank();
    c->all_reduce(all.data(), all.size());
    return all;
  };
  const Groups& h = pg.host;
  const Groups& d = pg.device();
  for (auto [a, b] : {std::pair{h.pp.get(), d.pp.get()},
                      {h.dp.get(), d.dp.get()},
                      {h.ep.get(), d.ep.get()},
                      {h.edp.get(), d.edp.get()},
                      {h.tied.get(), d.tied.get()},
                      {h.twin_dp.get(), d.twin_dp.get()},
                      {h.twin_edp.get(), d.twin_edp.get()}}) {
    ASSERT_TRUE(a && b);
    EXPECT_NE(a, b);
    EXPECT_EQ(a->name(), b->name());
    EXPECT_EQ(members(a), members(b)) << a->name();
  }
}

TEST(comm, Bf16AllReduceSumRoundsToNearestEvenBitForBit) {
  Communicator& w = world();
  const int r = w.rank();
  // pairs {0,1}, {2,3}, ...: a two-rank sum is one application of the op, so it must equal the
  // fp32 sum rounded once (a lone rank keeps its values)
  auto pair = w.split(r / 2, r);
  ASSERT_NE(pair, nullptr);
  const size_t n = 1001;
  std::vector<uint16_t> d = bf16_values(r, n, 0);
  // two exact ties at the end: 1 + 2^-8 rounds down to 1 (even), (1 + 2^-7) + 2^-8 rounds up to
  // 1 + 2^-6 (truncation would give 1 + 2^-7)
  d.push_back(r % 2 == 0 ? 0x3f80 : 0x3b80);
  d.push_back(r % 2 == 0 ? 0x3f81 : 0x3b80);
  const std::vector<uint16_t> mine = d;
  pair->all_reduce(d.data(), d.size(), CommDType::BF16);
  if (pair->size() == 1) {
    EXPECT_EQ(d, mine);
    return;
  }
  std::vector<uint16_t> other = bf16_values(r ^ 1, n, 0);
  other.push_back(r % 2 == 1 ? 0x3f80 : 0x3b80);
  other.push_back(r % 2 == 1 ? 0x3f81 : 0x3b80);
  int rounded = 0, bad = 0;
  for (size_t i = 0; i < d.size(); ++i) {
    const float s = bf16_to_f32(mine[i]) + bf16_to_f32(other[i]);
    const uint16_t want = f32_to_bf16(s);
    rounded += want != static_cast<uint16_t>(f32_bits(s) >> 16);  // differs from truncation
    if (d[i] != want && ++bad <= 5)
      ADD_FAILURE() << "element " << i << ": got 0x" << std::hex << d[i] << ", want 0x" << want;
  }
  EXPECT_EQ(bad, 0);
  EXPECT_GT(rounded, 100);  // the data exercises rounding, not only exact sums
  EXPECT_EQ(d[n], 0x3f80);
  EXPECT_EQ(d[n + 1], 0x3f82);
}

TEST(comm, Bf16AllReduceSumIsDeterministicOnTheWorld) {
  Communicator& w = world();
  const int P = w.size(), r = w.rank();
  const size_t n = 777;
  const std::vector<uint16_t> in = bf16_values(r, n, 1);
  std::vector<uint16_t> a = in, b = in;
  w.all_reduce(a.data(), n, CommDType::BF16);
  w.all_reduce(b.data(), n, CommDType::BF16);
  EXPECT_EQ(a, b);  // same inputs, same bits
  // every rank holds the same bits
  std::vector<uint16_t> all(P * n);
  w.all_gather(a.data(), all.data(), n * sizeof(uint16_t), CommDType::Bytes);
  for (int q = 0; q < P; ++q)
    EXPECT_EQ(std::memcmp(all.data() + q * n, a.data(), n * sizeof(uint16_t)), 0) << "rank " << q;
  // within P-1 roundings of the exact sum, each at most 2^-8 of the running |sum|
  for (size_t i = 0; i < n; ++i) {
    double exact = 0, mag = 0;
    for (int q = 0; q < P; ++q) {
      const double x = bf16_to_f32(bf16_values(q, n, 1)[i]);
      exact += x, mag += std::fabs(x);
    }
    EXPECT_LE(std::fabs(bf16_to_f32(a[i]) - exact), (P - 1) * std::ldexp(mag, -8)) << i;
  }
  // small integers: every partial sum is exact in bf16, so any order gives the rounded fp32 sum
  std::vector<uint16_t> k(9);
  for (size_t i = 0; i < k.size(); ++i)
    k[i] = f32_to_bf16(static_cast<float>((r + 1) * (static_cast<int>(i) - 4) * 3));
  w.all_reduce(k.data(), k.size(), CommDType::BF16);
  for (size_t i = 0; i < k.size(); ++i)
    EXPECT_EQ(bf16_to_f32(k[i]), P * (P + 1) / 2.0 * (static_cast<int>(i) - 4) * 3);
  w.all_reduce(static_cast<void*>(nullptr), 0, CommDType::BF16);  // zero count
}

TEST(comm, Bf16AllReduceMax) {
  Communicator& w = world();
  const int P = w.size(), r = w.rank();
  const size_t n = 301;
  std::vector<uint16_t> d = bf16_values(r, n, 2);
  d.push_back(r == 0 ? 0x8000 : 0x0000);      // max(-0, +0, ...) = +0
  d.push_back(r == P - 1 ? 0x7fc0 : 0x3f80);  // a NaN anywhere gives NaN
  w.all_reduce(d.data(), d.size(), CommDType::BF16, ReduceOp::Max);
  for (size_t i = 0; i < n; ++i) {
    float want = -INFINITY;
    for (int q = 0; q < P; ++q) want = std::max(want, bf16_to_f32(bf16_values(q, n, 2)[i]));
    EXPECT_EQ(d[i], f32_to_bf16(want)) << i;
  }
  EXPECT_EQ(d[n], 0x0000);
  EXPECT_EQ(d[n + 1], 0x7fc0);
}

TEST(comm, ReduceScatterAndAllGatherInBf16AndBytes) {
  Communicator& w = world();
  const int P = w.size(), r = w.rank();
  const size_t n = 3;
  // bf16 reduce-scatter of small integers (exact), then all-gather of the blocks
  std::vector<uint16_t> in(P * n), out(n), all(P * n);
  auto v = [](int q, size_t i) { return static_cast<float>(q * 10 + static_cast<int>(i)); };
  for (size_t i = 0; i < in.size(); ++i) in[i] = f32_to_bf16(v(r, i));
  w.reduce_scatter(in.data(), out.data(), n, CommDType::BF16);
  auto sum = [&](size_t i) {
    float s = 0;
    for (int q = 0; q < P; ++q) s += v(q, i);
    return s;
  };
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(bf16_to_f32(out[i]), sum(r * n + i)) << i;
  w.all_gather(out.data(), all.data(), n, CommDType::BF16);
  for (size_t i = 0; i < all.size(); ++i) EXPECT_EQ(bf16_to_f32(all[i]), sum(i)) << i;
  // bf16 max reduce-scatter, int64 max reduce-scatter, fp64 all-gather through the typed-less API
  w.reduce_scatter(in.data(), out.data(), n, CommDType::BF16, ReduceOp::Max);
  for (size_t i = 0; i < n; ++i) EXPECT_EQ(bf16_to_f32(out[i]), v(P - 1, r * n + i));
  std::vector<int64_t> li(P), lo(1);
  for (int p = 0; p < P; ++p) li[p] = (r * 7 + p * 3) % 5;
  w.reduce_scatter(li.data(), lo.data(), 1, CommDType::I64, ReduceOp::Max);
  int64_t want = 0;
  for (int q = 0; q < P; ++q) want = std::max<int64_t>(want, (q * 7 + r * 3) % 5);
  EXPECT_EQ(lo[0], want);
  double mine = r + 0.25;
  std::vector<double> ds(P);
  w.all_gather(&mine, ds.data(), 1, CommDType::F64);
  for (int q = 0; q < P; ++q) EXPECT_EQ(ds[q], q + 0.25);
  // bytes: 7 odd bytes per rank; reducing bytes is an error on every rank (before any message)
  std::vector<uint8_t> b(7), ball(P * 7);
  for (size_t i = 0; i < b.size(); ++i) b[i] = static_cast<uint8_t>(r * 16 + i);
  w.all_gather(b.data(), ball.data(), b.size(), CommDType::Bytes);
  for (int q = 0; q < P; ++q)
    for (size_t i = 0; i < 7; ++i) EXPECT_EQ(ball[q * 7 + i], q * 16 + i);
  EXPECT_THROW(w.all_reduce(b.data(), b.size(), CommDType::Bytes), CommError);
  EXPECT_THROW(w.reduce_scatter(ball.data(), b.data(), 7, CommDType::Bytes), CommError);
}

TEST(comm, TypedWrappersMatchTheDtypeForms) {
  Communicator& w = world();
  const int P = w.size(), r = w.rank();
  std::vector<float> f(5), g(5);
  for (size_t i = 0; i < f.size(); ++i) f[i] = g[i] = 0.1f * static_cast<float>(r + i);
  w.all_reduce(f.data(), f.size());
  w.all_reduce(g.data(), g.size(), CommDType::F32);
  EXPECT_EQ(f, g);
  float m = static_cast<float>(r);
  w.all_reduce(&m, 1, ReduceOp::Max);
  EXPECT_EQ(m, P - 1);
  double d = 1.5;
  w.all_reduce(&d, 1);
  EXPECT_EQ(d, 1.5 * P);
  int64_t k = r + 1;
  w.all_reduce(&k, 1);
  EXPECT_EQ(k, P * (P + 1) / 2);
}

TEST(comm, BatchIsendIrecvRingWithSeveralTags) {
  Communicator& w = world();
  const int P = w.size(), r = w.rank();
  const int next = (r + 1) % P, prev = (r + P - 1) % P;
  const std::vector<int> tags = {3, 11, 5, 0};
  auto bytes = [](int tag, int from) { return static_cast<size_t>(tag * 13 + from); };
  std::vector<std::vector<uint8_t>> out(tags.size()), in(tags.size());
  std::vector<P2pOp> ops;
  for (size_t t = 0; t < tags.size(); ++t) {  // receives and sends interleaved, per tag
    out[t].resize(bytes(tags[t], r));
    for (size_t i = 0; i < out[t].size(); ++i) out[t][i] = static_cast<uint8_t>(r * 50 + t + i);
    in[t].assign(bytes(tags[t], prev), 0xff);
    ops.push_back(P2pOp::recv(in[t].data(), in[t].size(), prev, tags[t]));
    ops.push_back(P2pOp::send(out[t].data(), out[t].size(), next, tags[t]));
  }
  ops.push_back(P2pOp::send(nullptr, 0, next, 99));  // zero bytes
  ops.push_back(P2pOp::recv(nullptr, 0, prev, 99));
  Request req = w.batch_isend_irecv(ops);
  req.wait();
  EXPECT_TRUE(req.test());
  for (size_t t = 0; t < tags.size(); ++t) {
    ASSERT_EQ(in[t].size(), bytes(tags[t], prev));
    for (size_t i = 0; i < in[t].size(); ++i)
      ASSERT_EQ(in[t][i], static_cast<uint8_t>(prev * 50 + t + i)) << "tag " << tags[t];
  }
  EXPECT_TRUE(w.batch_isend_irecv(nullptr, 0).test());
  // a bad op throws before anything is posted (on every rank, so nothing is left unmatched)
  std::vector<P2pOp> bad = {P2pOp::send(out[0].data(), 1, next, 1),
                            P2pOp::recv(in[0].data(), 1, P, 1)};
  EXPECT_THROW(w.batch_isend_irecv(bad), CommError);
  bad[1] = P2pOp::recv(in[0].data(), 1, prev, -1);
  EXPECT_THROW(w.batch_isend_irecv(bad), CommError);
}

TEST(comm, TestPollsWithoutBlockingAndRunsOnce) {
  Communicator& w = world();
  const int P = w.size(), r = w.rank();
  const int next = (r + 1) % P, prev = (r + P - 1) % P;
  EXPECT_TRUE(Request().test());
  // a receive whose sender posts only after a barrier cannot be complete before it
  int64_t got = -1, sent = r * 11 + 1;
  Request rr = w.irecv(&got, sizeof got, prev, 21);
  EXPECT_FALSE(rr.test());
  EXPECT_FALSE(rr.test());
  w.barrier();
  Request sr = w.isend(&sent, sizeof sent, next, 21);
  poll(rr);
  poll(sr);
  EXPECT_EQ(got, prev * 11 + 1);
  EXPECT_TRUE(rr.test());
  rr.wait();  // no-op after completion
  // the same for a batch
  std::vector<int64_t> a(3, -1), b(3, r);
  Request br = w.batch_isend_irecv({P2pOp::recv(a.data(), 3 * sizeof(int64_t), prev, 22)});
  EXPECT_FALSE(br.test());
  w.barrier();
  Request bs = w.batch_isend_irecv({P2pOp::send(b.data(), 3 * sizeof(int64_t), next, 22)});
  poll(br);
  bs.wait();
  EXPECT_TRUE(bs.test());
  EXPECT_EQ(a, std::vector<int64_t>(3, prev));
  // variable all-to-all polled to completion
  std::vector<size_t> sb(P, sizeof(int64_t)), rb(P, sizeof(int64_t));
  std::vector<int64_t> s(P), q(P, -1);
  for (int p = 0; p < P; ++p) s[p] = r * 100 + p;
  Request ar = w.iall_to_all_v(s.data(), sb, q.data(), rb);
  poll(ar);
  for (int p = 0; p < P; ++p) EXPECT_EQ(q[p], p * 100 + r);
  // a completion step runs exactly once, through test() or wait()
  int runs = 0, calls = 0;
  Request c([&](bool block) {
    ++calls;
    if (!block && calls < 3) return false;
    ++runs;
    return true;
  });
  EXPECT_FALSE(c.test());
  EXPECT_FALSE(c.test());
  EXPECT_TRUE(c.test());
  EXPECT_TRUE(c.test());
  c.wait();
  EXPECT_EQ(runs, 1);
  EXPECT_EQ(calls, 3);
  // moving keeps it pending; assigning over a pending Request completes the old one first
  int waited = 0;
  Request p([&](bool) { return ++waited > 0; });
  Request moved = std::move(p);
  EXPECT_TRUE(p.test());
  EXPECT_EQ(waited, 0);
  moved = Request();
  EXPECT_EQ(waited, 1);
}
