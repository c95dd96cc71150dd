// The loader (see loader.h): step_batch, and the Loader with its prefetch thread.
//
// The producer thread makes batch after batch from its own running sample count and queues up to
// `prefetch` of them; next() takes them in order and advances the consumed count that the
// checkpoint records. A failure in the producer is queued behind the batches made before it.
#include "data/loader.h"

#include <limits>
#include <stdexcept>
#include <string>
#include <utility>

namespace moetron::data {

namespace {

void need(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

}  // namespace

Batch step_batch(const Dataset& data, const BatchSchedule& schedule, int64_t step,
                 int64_t dp_rank) {
  need(schedule.seq_len() == data.seq_len(),
       "step_batch: batch schedule seq_len " + std::to_string(schedule.seq_len()) +
           " differs from the dataset's " + std::to_string(data.seq_len()));
  const BatchSchedule::Consumed c = schedule.consumed_before(step);
  return data.batch(c.samples, schedule.batch_size_at(c.tokens), schedule.dp(), dp_rank);
}

// ---------------------------------------------------------------- Loader

Loader::Loader(const Dataset& data, BatchSchedule schedule, LoaderOptions options,
               int64_t samples_consumed)
    : data_(data), schedule_(schedule), opt_(options), consumed_(samples_consumed) {
  need(schedule_.seq_len() == data_.seq_len(),
       "loader: batch schedule seq_len " + std::to_string(schedule_.seq_len()) +
           " differs from the dataset's " + std::to_string(data_.seq_len()));
  need(schedule_.dp() == opt_.dp, "loader: batch schedule dp " + std::to_string(schedule_.dp()) +
                                      " differs from the loader's " + std::to_string(opt_.dp));
  need(opt_.dp_rank >= 0 && opt_.dp_rank < opt_.dp,
       "loader: bad DP rank " + std::to_string(opt_.dp_rank) + " of " + std::to_string(opt_.dp));
  need(opt_.prefetch >= 0, "loader: prefetch must be >= 0");
  need(samples_consumed >= 0,
       "loader: samples consumed must be >= 0, got " + std::to_string(samples_consumed));
  if (opt_.prefetch > 0) thread_ = std::thread(&Loader::produce, this, consumed_);
}

Loader::~Loader() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  not_full_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Batch Loader::make(int64_t first) const {
  need(first <= std::numeric_limits<int64_t>::max() / data_.seq_len(),
       "loader: token count overflows int64");
  return data_.batch(first, schedule_.batch_size_at(first * data_.seq_len()), opt_.dp,
                     opt_.dp_rank);
}

void Loader::produce(int64_t first) {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      not_full_.wait(lock,
                     [&] { return stop_ || queue_.size() < static_cast<size_t>(opt_.prefetch); });
      if (stop_) return;
    }
    Batch b;
    try {
      b = make(first);
    } catch (...) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        producer_error_ = std::current_exception();
      }
      not_empty_.notify_all();
      return;
    }
    first += b.global_batch;
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(b));
    }
    not_empty_.notify_one();
  }
}

Batch Loader::next() {
  Batch b;
  if (opt_.prefetch == 0) {
    b = make(consumed_);
  } else {
    {
      std::unique_lock<std::mutex> lock(mu_);
      not_empty_.wait(lock, [&] { return !queue_.empty() || producer_error_ != nullptr; });
      if (queue_.empty()) std::rethrow_exception(producer_error_);
      b = std::move(queue_.front());
      queue_.pop_front();
    }
    not_full_.notify_one();
  }
  consumed_ += b.global_batch;
  return b;
}

}  // namespace moetron::data
