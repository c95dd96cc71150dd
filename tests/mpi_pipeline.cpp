// mpi-ranks: 2 4
// The pipeline executor's memory: with 8 micro-batches per step it holds at most the schedule's
// in-flight bound of micro-batch states (P - r for 1F1B, P for ZB1P) — the pool reaches the bound
// and no more — whatever the micro-batch count; the backward's buffers come from a smaller pool
// (one set for 1F1B); a stage's states keep no output once it is sent (the last stage's keep
// theirs: its backward reads them); and the losses of 1F1B and ZB1P agree with each other to
// round-off (both run the same micro-batches through the same stages). A forward-only pass keeps
// no more sends in flight than its window when the next stage is slower.
#include <gtest/gtest.h>

#include <chrono>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "model/model.h"
#include "parallel/comm.h"
#include "parallel/pipeline.h"
#include "parallel/schedule.h"
#include "tests/mpi_small_model.h"

namespace moetron {
namespace {

ModelConfig small(int64_t layers) { return small_pipeline_model(layers); }

// M micro-batches of B sequences of S + 1 token ids, drawn from `seed`
std::vector<int32_t> random_tokens(const ModelConfig& c, int64_t M, int64_t B, int64_t S,
                                   unsigned seed) {
  std::mt19937 g(seed);
  std::vector<int32_t> tok(M * B * (S + 1));
  for (auto& t : tok) t = static_cast<int32_t>(g() % c.vocab_size);
  return tok;
}

TEST(pipeline, SlotsStayWithinTheInFlightBound) {
  Communicator& w = world();
  const int P = w.size();
  const ModelConfig c = small(P);
  const int64_t B = 2, S = 8, M = 8;
  const std::vector<int32_t> tok = random_tokens(c, M, B, S, 5);
  double loss[2] = {0, 0};
  int i = 0;
  for (const char* kind : {"1f1b", "zb1p"}) {
    Model<float> m(c, PrecisionPolicy::from(Recipe::FP32), nullptr, StageSpec{w.rank(), P});
    m.init(3);
    const pipeline::Schedule s = pipeline::make_schedule(kind, P, static_cast<int>(M));
    PipelineExecutor<float> ex(m, w, s, w.rank());
    for (int step = 0; step < 2; ++step) {
      Losses sum;
      ex.run([&](int mb) { return tok.data() + mb * B * (S + 1); }, B, S, 0.3, 1.0 / M, sum);
      double l = sum.loss;
      w.all_reduce(&l, 1);
      loss[i] = l;
    }
    EXPECT_EQ(ex.slots(), s.in_flight_bound[w.rank()]) << kind << " rank " << w.rank();
    EXPECT_LT(ex.slots(), M) << kind;
    // the backward's buffers are lent only from a micro-batch's backward to its last op
    EXPECT_EQ(ex.grad_sets(), PipelineExecutor<float>::peak_grad_sets(s, w.rank())) << kind;
    if (std::string(kind) == "1f1b") {
      EXPECT_EQ(ex.grad_sets(), 1) << "rank " << w.rank();
    }
    EXPECT_LE(ex.grad_sets(), ex.slots()) << kind;
    // a stage's output moves into its send (no copy): only the last stage's states keep theirs
    if (w.rank() < P - 1) {
      EXPECT_EQ(ex.output_bytes_held(), 0) << kind;
    } else {
      EXPECT_GT(ex.output_bytes_held(), 0) << kind;
    }
    ++i;
  }
  EXPECT_NEAR(loss[0], loss[1], 1e-6 * loss[0]);
}

// A forward-only pass (validation) whose last stage starts late: without the schedule's send window
// the stage before it posts every micro-batch's send while the last stage has received only the
// first — one [N, D] buffer a micro-batch (these messages are rendezvous-sized: 128 KiB); with it,
// each stage holds what pipeline::send_release says (peak_message_buffers: plan counts it), and
// the losses are the same.
TEST(pipeline, ForwardOnlySendsWaitForASlowerNextStage) {
  Communicator& w = world();
  const int P = w.size();
  const ModelConfig c = small(P);
  const int64_t B = 64, S = 16, M = 8;
  const std::vector<int32_t> tok = random_tokens(c, M, B, S, 7);
  Model<float> m(c, PrecisionPolicy::from(Recipe::FP32), nullptr, StageSpec{w.rank(), P});
  m.init(3);
  double lm[2] = {0, 0};
  int held[2] = {0, 0};
  for (int window : {1, 0}) {
    pipeline::Schedule s = pipeline::make_forward_only(P, static_cast<int>(M));
    ASSERT_EQ(s.send_window, 1);
    s.send_window = window;
    PipelineExecutor<float> ex(m, w, s, w.rank());
    Losses sum;
    ex.run(
        [&](int mb) {
          // (long enough for the others' eight forwards even on a loaded machine)
          if (w.rank() == P - 1 && mb == 0) std::this_thread::sleep_for(std::chrono::seconds(1));
          return tok.data() + mb * B * (S + 1);
        },
        B, S, 0.0, 0.0, sum);
    lm[window] = sum.lm;
    held[window] = ex.message_buffers();
    w.barrier();
  }
  const pipeline::Schedule s = pipeline::make_forward_only(P, static_cast<int>(M));
  EXPECT_LE(held[1], PipelineExecutor<float>::peak_message_buffers(s, w.rank()));
  if (w.rank() == P - 2) {
    EXPECT_EQ(PipelineExecutor<float>::peak_message_buffers(s, w.rank()), P > 2 ? 2 : 1);
    EXPECT_GT(held[0], PipelineExecutor<float>::peak_message_buffers(s, w.rank()))
        << "no pile-up without the window: the test proves nothing";
  }
  EXPECT_EQ(lm[0], lm[1]);
}

}  // namespace
}  // namespace moetron
