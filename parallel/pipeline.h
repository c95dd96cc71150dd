// The pipeline executor: runs one rank's list of a Schedule (schedule.h) on its model stage.
//
// It interprets the list in order and owns nothing but buffers: received activations and
// gradients per micro-batch, and the pending sends. The model stage does the math; the
// schedule decides the order. 1F1B, ZB1P and (later) DualPipe run through this one loop.
//   RecvActivation(m)  post a receive of stage input m from the previous stage's rank
//   Forward(m)         model forward on micro-batch m (last stage: the loss)
//   SendActivation(m)  post a send of the stage output to the next stage's rank
//   RecvGrad(m)        post a receive of d(output) from the next stage's rank
//   Backward(m)        input and weight gradients; BackwardInput(m): input only (weight
//                      gradients queued); BackwardWeight(m): run the queued weight gradients
//   SendGrad(m)        non-blocking send of d(input) to the previous stage's rank
#pragma once

#include <chrono>
#include <functional>
#include <stdexcept>
#include <vector>

#include "model/model.h"
#include "parallel/comm.h"
#include "parallel/schedule.h"

namespace moetron {

template <class T>
class PipelineExecutor {
 public:
  // tokens(m): micro-batch m's tokens [B, S+1] (every stage reads them).
  using TokenSource = std::function<const int32_t*(int)>;

  PipelineExecutor(const Model<T>& stage, Communicator& pp, pipeline::Schedule schedule,
                   int pp_rank)
      : model_(stage), pp_(pp), sched_(std::move(schedule)), rank_(pp_rank) {}

  // Runs this rank's ops for one optimizer step; adds this stage's losses into `sum`.
  // Message ops post non-blocking sends/receives; a compute op first waits for every receive
  // posted before it (the schedule's execution contract); sends complete by the end of the step.
  void run(const TokenSource& tokens, int64_t B, int64_t S, double mtp_weight, double grad_scale,
           Losses& sum) {
    using pipeline::OpKind;
    const int64_t N = B * S, D = model_.config().hidden_size;
    const int M = sched_.microbatches;
    if (mbs_.size() != static_cast<size_t>(M)) mbs_.resize(M);
    act_.resize(M), grad_.resize(M);
    std::vector<Request> sends, recvs;
    std::vector<Losses> losses(M);
    const size_t bytes = sizeof(T) * N * D;
    // tag: (micro-batch, producing stage, activation or gradient)
    auto tag = [&](const pipeline::Op& op, int grad) {
      return (op.mb * sched_.stages + op.stage) * 2 + grad;
    };
    using clock = std::chrono::steady_clock;
    auto ready = [&] {  // time blocked here is pipeline idle (bubble + p2p latency)
      const auto t0 = clock::now();
      for (auto& r : recvs) r.wait();
      recvs.clear();
      idle_seconds_ += std::chrono::duration<double>(clock::now() - t0).count();
    };
    idle_seconds_ = compute_seconds_ = 0;
    for (const pipeline::Op& op : sched_.per_rank[rank_]) {
      const int m = op.mb;
      if (!op.is_message()) ready();
      const auto t0 = clock::now();
      switch (op.kind) {
        case OpKind::RecvActivation:
          sized(act_[m], N * D);
          recvs.push_back(pp_.irecv(act_[m].data(), bytes, op.peer, tag(op, 0)));
          break;
        case OpKind::SendActivation:
          sends.push_back(pp_.isend(model_.output(mbs_[m]), bytes, op.peer, tag(op, 0)));
          break;
        case OpKind::RecvGrad:
          sized(grad_[m], N * D);
          recvs.push_back(pp_.irecv(grad_[m].data(), bytes, op.peer, tag(op, 1)));
          break;
        case OpKind::SendGrad:
          sends.push_back(pp_.isend(mbs_[m].dh.data(), bytes, op.peer, tag(op, 1)));
          break;
        case OpKind::Forward:
          losses[m] = model_.forward(mbs_[m], tokens(m), B, S, mtp_weight,
                                     model_.stage().first() ? nullptr : act_[m].data());
          break;
        case OpKind::Backward:
        case OpKind::BackwardInput:
          model_.backward_input(mbs_[m], grad_scale,
                                model_.stage().last() ? nullptr : grad_[m].data(),
                                op.kind == OpKind::BackwardInput);
          break;
        case OpKind::BackwardWeight:
          model_.backward_weight(mbs_[m]);
          break;
        case OpKind::ForwardBackward:
          throw std::invalid_argument("pipeline executor: schedule '" + sched_.kind +
                                      "' overlaps forward and backward chunks, which this "
                                      "executor does not run yet (use 1f1b or zb1p)");
      }
      if (!op.is_message())
        compute_seconds_ += std::chrono::duration<double>(clock::now() - t0).count();
    }
    ready();
    const auto t0 = clock::now();
    for (auto& r : sends) r.wait();
    idle_seconds_ += std::chrono::duration<double>(clock::now() - t0).count();
    for (const Losses& l : losses) {
      sum.loss += l.loss, sum.lm += l.lm, sum.mtp += l.mtp, sum.balance += l.balance;
    }
  }

  // The schedule of the next run() (the batch-size ramp changes the micro-batch count; an
  // evaluation runs a forward-only schedule). Micro-batch buffers are kept and resized.
  void set_schedule(pipeline::Schedule s) { sched_ = std::move(s); }
  const pipeline::Schedule& schedule() const { return sched_; }

  // Seconds of the last run: in compute ops (forward/backward, including any expert all-to-all
  // they wait on), and blocked on pipeline messages.
  double compute_seconds() const { return compute_seconds_; }
  double idle_seconds() const { return idle_seconds_; }

  // The micro-batch states of the last run (expert loads are read from them).
  const std::vector<typename Model<T>::MicroBatch>& microbatches() const { return mbs_; }

 private:
  const Model<T>& model_;
  Communicator& pp_;
  pipeline::Schedule sched_;
  int rank_;
  std::vector<typename Model<T>::MicroBatch> mbs_;
  std::vector<Buffer<T>> act_, grad_;
  double compute_seconds_ = 0, idle_seconds_ = 0;
};

}  // namespace moetron
