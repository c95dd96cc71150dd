// ZeRO-1's gradient reduction, overlapped with the backward (see zero1.h): buckets start their
// non-blocking reduce-scatter as the trainer marks their parameters final, in one fixed order on
// every rank of the group (last bucket first); reduce_scatter_grads starts the rest and waits.
//
//   mark_final(i)        params_[i] final -> its bucket's count of non-final parameters drops;
//                        start_final_buckets() posts, in the start order, every bucket from the
//                        next unstarted one on while it is final (never out of order)
//   progress()           tests each reduction in flight (MPI moves a non-blocking collective
//                        only inside MPI calls); completed bf16 buckets are widened
//   reduce_scatter_grads starts the buckets left, waits for every one, resets the marks
//
// fp32 reduces each bucket of the gradient arena in place: the sums of the elements this rank
// owns land in its part of the bucket (NCCL's in-place convention; Communicator::
// ireduce_scatter), where the optimizer reads them. grad_reduce_bf16 narrows the bucket into a
// staging buffer first and widens the received part into this rank's part on completion;
// `staging` buffers bound the bf16 buckets in flight (a start waits for the oldest when none is
// free). Either way a start first counts the bucket's non-finite local gradients
// (local_grads_finite), which the reduction overwrites. With one rank there is nothing to
// reduce: the arena is the shard (bf16: rounded in place).
#include <chrono>

#include "parallel/zero1.h"

namespace moetron {

namespace {
double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

void Zero1::mark_final(int64_t i) {
  if (final_.at(static_cast<size_t>(i))) return;
  final_[static_cast<size_t>(i)] = 1;
  --not_final_[static_cast<size_t>(bucket_of_[static_cast<size_t>(i)])];
  if (opt_.overlap && !G1()) started_early_ += start_final_buckets();
}

int64_t Zero1::start_final_buckets() {
  const size_t nb = buckets_.size();
  int64_t elements = 0;
  while (started_ < nb && not_final_[nb - 1 - started_] == 0) {
    start(static_cast<int64_t>(nb - 1 - started_));
    elements += buckets_[nb - 1 - started_].padded;
    ++started_;
  }
  return elements;
}

void Zero1::start(int64_t bucket) {
  const Bucket& b = buckets_[static_cast<size_t>(bucket)];
  const int64_t part = b.padded / comm_.size();
  float* in = grad_arena_.data<float>() + b.begin;
  float* out = owned_part(static_cast<size_t>(bucket));  // in place
  kernels::count_nonfinite(ex_, in, b.padded, bad_.data() + bucket);
  trace::Event tr =
      trace::pending(trace::Track::Dp, "reduce-scatter", "bucket,elements", bucket, b.padded);
  if (!opt_.grad_reduce_bf16) {
    in_flight_.push_back({bucket, comm_.ireduce_scatter(in, out, part, CommDType::F32), -1, tr});
    return;
  }
  if (free16_.empty()) {  // every staging buffer in flight: the oldest completes first
    const auto t0 = std::chrono::steady_clock::now();
    size_t oldest = 0;
    while (in_flight_[oldest].staging < 0) ++oldest;
    in_flight_[oldest].req.wait();
    comm_seconds_ += seconds_since(t0);
    finish(oldest);
  }
  const int k = free16_.back();
  free16_.pop_back();
  uint16_t* send = stage16_[static_cast<size_t>(k)].data();
  kernels::narrow_to_bf16(ex_, in, b.padded, send);
  in_flight_.push_back(
      {bucket, comm_.ireduce_scatter(send, send + b.padded, part, CommDType::BF16), k, tr});
}

void Zero1::finish(size_t flight) {
  InFlight& f = in_flight_[flight];
  trace::complete(f.tr);
  if (f.staging >= 0) {
    const Bucket& b = buckets_[static_cast<size_t>(f.bucket)];
    const uint16_t* recv = stage16_[static_cast<size_t>(f.staging)].data() + b.padded;
    kernels::widen_from_bf16(ex_, recv, b.padded / comm_.size(),
                             owned_part(static_cast<size_t>(f.bucket)));
    free16_.push_back(f.staging);
  }
  in_flight_.erase(in_flight_.begin() + static_cast<std::ptrdiff_t>(flight));
}

void Zero1::progress() {
  for (size_t i = 0; i < in_flight_.size();)
    if (in_flight_[i].req.test())
      finish(i);
    else
      ++i;
}

void Zero1::reduce_scatter_grads() {
  gathered_.clear();  // (the gradient arena holds this step's gradients now, not values)
  float* grads = grad_arena_.data<float>();
  if (G1()) {  // the gradient arena is the shard
    if (opt_.grad_reduce_bf16) kernels::round_bf16_inplace(ex_, grads, grad_arena_.numel());
  } else {
    for (int64_t& n : not_final_) n = 0;  // whatever was not marked is final now
    start_final_buckets();
    const auto t0 = std::chrono::steady_clock::now();
    while (!in_flight_.empty()) in_flight_.front().req.wait(), finish(0);
    comm_seconds_ += seconds_since(t0);
  }
  // the next step's marks
  for (size_t b = 0; b < buckets_.size(); ++b)
    not_final_[b] = static_cast<int64_t>(buckets_[b].params.size());
  std::fill(final_.begin(), final_.end(), 0);
  last_started_early_ = started_early_;
  started_early_ = 0, started_ = 0;
}

}  // namespace moetron
