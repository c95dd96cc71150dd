// A training run's objects, built once by setup(): the layout and its communicators, the data,
// this rank's stage of the model with its expert dispatcher, the optimizer, the pipeline
// executor, the loader, the checkpoint writer and the metrics log — everything train_step() uses,
// with the owner of each obvious. setup() validates everything that can be checked before it
// writes anything (config against the process count, the memory plan against the device when
// hardware.memory_gib is known, data files, a checkpoint to resume from), then creates run.dir.
#pragma once

#include <cstdint>
#include <iosfwd>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "data/dataset.h"
#include "data/loader.h"
#include "model/flops.h"
#include "model/model.h"
#include "parallel/ep_dispatch.h"
#include "parallel/pipeline.h"
#include "parallel/process_groups.h"
#include "parallel/progress_thread.h"
#include "trainer/checkpoint.h"
#include "trainer/config.h"
#include "trainer/fault_inject.h"
#include "trainer/generate.h"
#include "trainer/metrics.h"
#include "trainer/optimizer.h"
#include "trainer/plan.h"

namespace moetron {

struct Run {
  Config cfg;
  // The communicators of host and device data (process_groups.h): the MPI world for both on the
  // CPU; on a GPU NCCL's for device data; in a guard run each wrapped to refuse the other kind of
  // memory (parallel/comm_checked.h). world is the host one.
  std::unique_ptr<Communicator> own_world, own_device_world;
  Communicator* world = nullptr;
  Communicator* device_world = nullptr;
  RankGrid grid;
  Plan plan;  // `moetron plan`'s: what each pipeline rank holds (checked, and reported at start)
  double ep_rows_warned = 0;  // the highest ep_rows_peak beyond plan's limit train warned of
  bool rank0 = false;
  int64_t B = 0, S = 0;                          // micro-batch rows, sequence length
  FlopsPerToken flops;                           // of the model at S (model/flops.h)
  std::unique_ptr<data::BatchSchedule> batches;  // the global batch of each step
  std::unique_ptr<ProcessGroups> groups;
  std::unique_ptr<data::Dataset> train_data, valid_data;
  int64_t eval_batches = 0;  // validation: whole global batches of the validation stream
  std::string tokenizer;     // the name every shard and checkpoint carries
  std::unique_ptr<TrainingSampler> sampler;  // run.sample_interval's text samples
  std::unique_ptr<MetricsLog> metrics;       // rank 0
  std::shared_ptr<EpDispatcher<float>> ep;   // EP > 1
  double ep_blocked = 0;                     // seconds blocked in EP waits since setup
  // This rank's model chunks in stage order (one; two under DualPipe and DualPipeV) and the one
  // store of their parameters (a shared embedding is in it once).
  std::vector<int> stages;  // the stages this rank holds, ascending
  int n_stages = 1;         // stages on a micro-batch's path
  std::unique_ptr<ParamStore<float>> params;
  std::vector<std::unique_ptr<Model<float>>> chunks;
  Exec ex;                        // the model's device
  Param<float>* embed = nullptr;  // tied with the MTP module's copy on the last stage
  std::unique_ptr<Optimizer> optimizer;
  TrainState state;  // steps, tokens and samples consumed (restored on resume)
  std::unique_ptr<CheckpointWriter> writer;
  std::unique_ptr<PipelineExecutor<float>> pipeline;
  std::unique_ptr<data::Loader> loader;
  std::optional<NanFault> nan_fault;                // MOETRON_FAULT_NAN (tests only)
  std::unique_ptr<ProgressThread> progress_thread;  // parallel.progress_poll_us > 0

  std::vector<Model<float>*> chunk_list() const {
    std::vector<Model<float>*> out;
    for (const auto& c : chunks) out.push_back(c.get());
    return out;
  }
};

// Builds the run of `cfg` on the world communicator; resume: "" (fresh), "auto" (the newest
// complete checkpoint in run.dir, fresh if none) or a checkpoint directory. Start-up lines go to
// `log` (rank 0). Throws ConfigError, LayoutError, data::DataError or CheckpointError naming
// the file or key.
std::unique_ptr<Run> setup(const Config& cfg, std::ostream& log, const std::string& resume);

// The layout of rank `rank` of `world` as the model and schedule see it (pipeline stages cut,
// node-limited routing possible); throws ConfigError naming the keys.
RankGrid make_grid(const Config& cfg, int world, int rank);

// How routed tokens travel between EP ranks under each recipe (SPEC §3.6): fp8 dispatches in
// E4M3 and combines in BF16, bf16 moves everything in BF16, fp32 moves fp32.
WirePrecision dispatch_wire(Recipe recipe);

// The pipeline schedule of a step with `microbatches` micro-batches per pipeline; throws
// ConfigError when the executor cannot run parallel.schedule or the layout does not fit it.
pipeline::Schedule make_step_schedule(const Config& cfg, int pp, int microbatches);

}  // namespace moetron
