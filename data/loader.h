// The training side of the data pipeline: this rank's batches, one per step, sized by the
// batch-size schedule (data/batch_schedule.h) and read from a Dataset (data/dataset.h).
//
// The sampler state is a single number, the samples consumed so far: the step's first sample.
// The Loader keeps that count and prepares the next batches on a background thread, so the
// trainer rarely waits on HDF5; step_batch() computes the same batch from the step number alone
// (replaying the schedule), for checks and tools. Prefetching never changes which samples a step
// reads: a run with prefetch = 0 reads the same batches.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#include "data/batch_schedule.h"
#include "data/dataset.h"

namespace moetron::data {

// Stateless form of the Loader: the batch of `step` for DP rank `dp_rank` of schedule.dp(), when
// every step since sample 0 followed `schedule`: first = schedule.consumed_before(step).samples,
// global batch = schedule.batch_size_at(first * seq_len). (consumed_before replays the ramp:
// O(ramp steps) per call; the Loader keeps the running count instead.)
Batch step_batch(const Dataset& data, const BatchSchedule& schedule, int64_t step, int64_t dp_rank);

struct LoaderOptions {
  int64_t dp = 1;  // must equal the schedule's dp
  int64_t dp_rank = 0;
  int prefetch = 2;  // batches prepared ahead by a background thread; 0: synchronous
};

// This rank's stream of training batches, one per step, sized by the batch schedule.
// next() returns step after step; samples_consumed() is the state to checkpoint (after the
// batches next() has returned; prefetched ones do not count). Errors in the prefetch thread are
// re-thrown by next() once the batches before them are consumed. The destructor stops and joins
// the thread.
class Loader {
 public:
  // `data` must outlive the loader. Throws std::invalid_argument if the schedule's seq_len or dp
  // differ from the dataset's / options', or dp_rank is out of range, or samples_consumed < 0.
  Loader(const Dataset& data, BatchSchedule schedule, LoaderOptions options,
         int64_t samples_consumed = 0);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  Batch next();
  int64_t samples_consumed() const { return consumed_; }
  int64_t tokens_consumed() const { return consumed_ * data_.seq_len(); }

 private:
  Batch make(int64_t first) const;
  void produce(int64_t first);

  const Dataset& data_;
  BatchSchedule schedule_;
  LoaderOptions opt_;
  int64_t consumed_;

  // prefetch state (guarded by mu_)
  std::mutex mu_;
  std::condition_variable not_full_, not_empty_;
  std::deque<Batch> queue_;
  std::exception_ptr producer_error_;  // thrown by next() once the queue is empty, every time
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace moetron::data
