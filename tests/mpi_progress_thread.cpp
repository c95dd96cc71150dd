// mpi-ranks: 2
// The MPI progress thread (parallel/progress_thread.h) on real ranks. Rank 1 sends rank 0 a 4 MiB
// message, far above the shared-memory transport's eager limit: the send completes only once rank
// 0's MPI library has matched it to the receive rank 0 posted. Rank 0 then computes (sleeps) for
// 3 s without calling MPI. Without the thread, rank 1's send waits for rank 0's next MPI call,
// after the sleep (checked, so the setup shows what it claims); with it, the thread's pokes let
// the send complete during the sleep.
#include <gtest/gtest.h>

#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "parallel/comm.h"
#include "parallel/progress_thread.h"

using namespace moetron;

namespace {

// Rank 1's seconds in the blocking send; rank 0 receives into `buf` and sleeps with or without
// the progress thread.
double send_seconds(bool thread) {
  Communicator& w = world();
  std::vector<char> buf(4 << 20, static_cast<char>(w.rank() + 1));
  double seconds = 0;
  w.barrier();
  if (w.rank() == 0) {
    Request r = w.irecv(buf.data(), buf.size(), 1, 7);
    {
      std::unique_ptr<ProgressThread> pt;
      if (thread) pt = std::make_unique<ProgressThread>(w, std::chrono::microseconds(200));
      std::this_thread::sleep_for(std::chrono::milliseconds(3000));  // compute, no MPI calls
      if (pt) {
        EXPECT_GT(pt->pokes(), 10);
      }
    }
    r.wait();
    EXPECT_EQ(buf.front(), 2);
    EXPECT_EQ(buf.back(), 2);
  } else {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));  // rank 0 posts first
    const auto t0 = std::chrono::steady_clock::now();
    w.send(buf.data(), buf.size(), 0, 7);
    seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  w.all_reduce(&seconds, 1);
  return seconds;
}

}  // namespace

TEST(progress_thread, LetsASendCompleteWhileTheReceiverComputes) {
  if (world().size() != 2) GTEST_SKIP() << "needs 2 ranks";
  const double without = send_seconds(false), with = send_seconds(true);
  EXPECT_GT(without, 2.0) << "the send completed without the receiver's progress: this test "
                             "no longer shows what the progress thread does";
  EXPECT_LT(with, 1.5) << "the send waited for the receiver's compute to end";
}
