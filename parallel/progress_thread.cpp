// The MPI progress thread (see progress_thread.h): poke, sleep, until stopped.
#include "parallel/progress_thread.h"

namespace moetron {

ProgressThread::ProgressThread(Communicator& comm, std::chrono::microseconds period) {
  thread_ = std::thread([this, &comm, period] {
    while (!stop_.load(std::memory_order_relaxed)) {
      comm.poke();
      pokes_.fetch_add(1, std::memory_order_relaxed);
      std::this_thread::sleep_for(period);
    }
  });
}

ProgressThread::~ProgressThread() {
  stop_ = true;
  thread_.join();
}

}  // namespace moetron
