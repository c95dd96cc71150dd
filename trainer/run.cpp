// setup(): a training run's objects from a validated Config (see run.h), in the order their
// checks must happen — layout, schedule, memory (the plan, when the device memory is known), data,
// model, optimizer, resume, then (writing starts) run.dir, pipeline, loader — and the start-up
// report. Also the helpers other commands share: the layout, the EP wire, the datasets of a config
// and the intra-op thread count.
#include "trainer/run.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iomanip>
#include <ostream>
#include <set>
#include <thread>

#include "data/bpe.h"
#include "data/sources.h"
#include "kernels/flop_counter.h"
#include "kernels/ops.h"
#include "model/memory.h"
#include "parallel/comm_checked.h"
#include "parallel/comm_staged.h"
#include "parallel/comm_stream.h"
#include "trainer/plan.h"
#include "trainer/train.h"
#if MOETRON_HAVE_CUDA
#include "parallel/comm_nccl.h"
#endif

namespace moetron {

int resolve_threads(const RunConfig& run) {
  if (run.threads > 0) return static_cast<int>(run.threads);
  int cores = static_cast<int>(std::thread::hardware_concurrency());
  int local = 1;
  if (const char* s = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")) local = std::max(1, std::atoi(s));
  return std::max(1, cores / local);
}

// parallel.wait: sleeping MPI waits where this node has more ranks than cores (auto).
bool sleep_when_waiting(const ParallelConfig& p) {
  if (p.wait != WaitMode::Auto) return p.wait == WaitMode::Sleep;
  return node_ranks() > static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
}

std::unique_ptr<data::Dataset> open_dataset(const Config& cfg, const std::string& setting,
                                            const std::string& key, bool shuffle) {
  data::DatasetOptions o;
  o.seq_len = cfg.data.seq_len;
  o.seed = cfg.run.seed;
  o.shuffle = shuffle;
  o.model_vocab_size = cfg.model.vocab_size;
  // shards record their tokenizer's name ("bpe-<hash>"); the config's tokenizer.json must agree
  if (!cfg.data.tokenizer.empty()) {
    const data::BpeTokenizer tok = data::BpeTokenizer::load(cfg.data.tokenizer);
    if (tok.vocab_size() > cfg.model.vocab_size)
      throw ConfigError(cfg.source + ": model.vocab_size is " +
                        std::to_string(cfg.model.vocab_size) + " but data.tokenizer " +
                        cfg.data.tokenizer + " has " + std::to_string(tok.vocab_size()) +
                        " tokens");
    o.expected_tokenizer = tok.name();
  }
  return std::make_unique<data::Dataset>(data::parse_sources(setting, key), o);
}

pipeline::Schedule make_step_schedule(const Config& cfg, int pp, int microbatches) {
  try {
    pipeline::Schedule s =
        pipeline::make_schedule(to_word(cfg.parallel.schedule), pp, microbatches);
    pipeline::validate(s);
    return s;
  } catch (const std::invalid_argument& e) {
    throw ConfigError(cfg.source + ": parallel.schedule: " + e.what());
  }
}

namespace {

void make_run_dir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) throw std::runtime_error(dir + ": cannot create run directory: " + ec.message());
}

// Node-limited routing holds by construction when every expert group lies inside one node of
// the EP group and at most max_nodes_per_token groups are kept; anything else is refused.
void check_node_limit(const Config& cfg, const RankGrid& g) {
  const int64_t M = cfg.parallel.max_nodes_per_token;
  if (M == 0) return;
  auto fail = [&](const std::string& m) {
    throw LayoutError("parallel.max_nodes_per_token (" + std::to_string(M) + "): " + m);
  };
  if (g.ranks_per_node == 0) fail("needs parallel.ranks_per_node");
  if (g.ep % g.ranks_per_node != 0 && g.ranks_per_node % g.ep != 0)
    fail("an EP group (" + std::to_string(g.ep) + " ranks) must span whole nodes of " +
         std::to_string(g.ranks_per_node) + " ranks or fit in one");
  const int64_t nodes = std::max<int64_t>(1, g.ep / g.ranks_per_node);
  if (cfg.model.n_group % nodes != 0)
    fail("model.n_group (" + std::to_string(cfg.model.n_group) + ") must be a multiple of the " +
         std::to_string(nodes) + " nodes of an EP group, so that expert groups lie inside nodes");
  if (cfg.model.topk_group > M)
    fail("model.topk_group (" + std::to_string(cfg.model.topk_group) +
         ") must be <= the node limit: each kept group may be on another node");
}

// The layout, the batch-size schedule and a valid pipeline schedule for every batch size the
// run can take (each size of the ramp is checked).
void plan_layout(Run& r) {
  const Config& cfg = r.cfg;
  r.grid = make_grid(cfg, r.world->size(), r.world->rank());
  r.rank0 = r.world->rank() == 0;
  r.B = cfg.data.micro_batch_size, r.S = cfg.data.seq_len;
  r.flops = flops_per_token(cfg.model, r.S);
  const int64_t dp = r.grid.dp, B = r.B, S = r.S;
  r.batches = std::make_unique<data::BatchSchedule>(
      cfg.data.batch_ramp_start > 0
          ? data::BatchSchedule(cfg.data.batch_ramp_start, cfg.data.global_batch_size,
                                cfg.data.batch_ramp_tokens, S, dp, B)
          : data::BatchSchedule::constant(cfg.data.global_batch_size, S, dp, B));
  // every batch size of the ramp (each makes its own schedule; validate() checks each)
  std::set<int64_t> sizes{cfg.data.global_batch_size};
  for (int64_t tokens = 0; tokens < r.batches->ramp_tokens();) {
    const int64_t b = r.batches->batch_size_at(tokens);
    if (sizes.insert(b).second) make_step_schedule(cfg, r.grid.pp, static_cast<int>(b / (B * dp)));
    tokens += b * S;
  }
  const pipeline::Schedule s =
      make_step_schedule(cfg, r.grid.pp, static_cast<int>(cfg.data.global_batch_size / (B * dp)));
  // the model chunks of this rank: its stages of the schedule (two under DualPipe(V))
  r.n_stages = s.stages;
  for (const pipeline::Chunk& c : s.chunks_of_rank[r.grid.pp_rank]) r.stages.push_back(c.stage);
  std::sort(r.stages.begin(), r.stages.end());
  try {
    for (int st : r.stages) stage_blocks(cfg.model, StageSpec{st, s.stages});
  } catch (const std::invalid_argument& e) {
    throw ConfigError(cfg.source + ": parallel.schedule " + to_word(cfg.parallel.schedule) +
                      " cuts the model into " + std::to_string(s.stages) + " stages: " + e.what());
  }
}

// The training and validation data, every shard checked; the validation set is whole global
// batches of the validation stream (at most run.eval_batches).
void open_data(Run& r) {
  const Config& cfg = r.cfg;
  r.train_data = open_dataset(cfg, cfg.data.train_path, "data.train_path", true);
  r.tokenizer = r.train_data->tokenizer();
  // text samples: the prompt and the tokenizer are checked now, before anything is written
  r.sampler = std::make_unique<TrainingSampler>(cfg, r.tokenizer);
  if (cfg.run.eval_interval <= 0) return;
  r.valid_data = open_dataset(cfg, cfg.data.valid_path, "data.valid_path", false);
  r.eval_batches = r.valid_data->n_eval_samples() / cfg.data.global_batch_size;
  if (r.eval_batches == 0)
    throw ConfigError(cfg.source + ": data.valid_path: " + cfg.data.valid_path + " holds " +
                      std::to_string(r.valid_data->n_eval_samples()) + " samples of " +
                      std::to_string(r.S + 1) +
                      " tokens, fewer than one global batch (data.global_batch_size " +
                      std::to_string(cfg.data.global_batch_size) + ")");
  if (cfg.run.eval_batches > 0) r.eval_batches = std::min(r.eval_batches, cfg.run.eval_batches);
}

// run.dir with the effective config, and the metrics log (rank 0).
void open_run_dir(Run& r) {
  if (!r.rank0) return;
  make_run_dir(r.cfg.run.dir);
  std::ofstream f(r.cfg.run.dir + "/config.yaml");
  f << config_to_yaml(r.cfg);
  if (!f) throw std::runtime_error(r.cfg.run.dir + "/config.yaml: write failed");
  r.metrics = std::make_unique<MetricsLog>(r.cfg.run.dir);
}

// The device of the run and the communicators of its host and device data. CUDA: this process
// takes its node's GPU number (node-local rank mod the GPUs visible) before any CUDA memory
// exists, and the device world is NCCL's, bootstrapped over the MPI world, or with
// parallel.device_comm mpi the MPI world through pinned host copies (parallel/comm_staged.h).
// Guard: the world wrapped to refuse guard memory for host data and, when the parameters are on
// the guard device too (all device data is), to refuse anything else for device data; with
// set_guard_nccl_order the device data in NCCL's order (parallel/comm_stream.h), with device_comm
// mpi staged through host copies as on a GPU.
void open_device(Run& r) {
  const Config& cfg = r.cfg;
  r.world = r.device_world = &world();
  const bool staged = cfg.parallel.device_comm == DeviceComm::Mpi;
  if (cfg.run.device == Device::Guard) {
    r.own_world = checked_communicator(world(), MemoryKind::Host);
    r.world = r.own_world.get();
    if (staged)
      r.own_device_world = staged_communicator(world(), Device::Guard);
    else if (guard_nccl_order())
      r.own_device_world = nccl_ordered_communicator(world());
    if (guard_parameters())
      r.own_device_world = r.own_device_world ? checked_communicator(std::move(r.own_device_world),
                                                                     MemoryKind::Device)
                                              : checked_communicator(world(), MemoryKind::Device);
    if (r.own_device_world) r.device_world = r.own_device_world.get();
  }
  if (cfg.run.device != Device::CUDA) return;
  try {
    select_cuda_device(node_local_rank());
  } catch (const std::exception& e) {
    throw ConfigError(cfg.source + ": run.device: cuda: " + e.what());
  }
  if (staged) {
    r.own_device_world = staged_communicator(world(), Device::CUDA);
  } else {
#if MOETRON_HAVE_CUDA
    NcclOptions o;
    o.max_ctas = static_cast<int>(cfg.parallel.nccl_max_ctas);
    r.own_device_world = make_nccl_communicator(world(), o);
#endif
  }
  if (!r.own_device_world) return;
  r.own_device_world->set_name("world");
  r.device_world = r.own_device_world.get();
}

// This rank's model chunks with their experts (activations on run.device: every buffer made
// from here on is on it; parameters and optimizer state too, except on the guard device unless
// guard_parameters(): model/param.h) and its optimizer.
void build_model(Run& r) {
  const Config& cfg = r.cfg;
  // the recipe per component; FP8 weight copies are re-quantised once per optimizer step
  PrecisionPolicy policy = cfg.policy();
  policy.weight_version = std::make_shared<uint64_t>(0);
  const Device device = cfg.run.device;
  set_default_device(device);
  const Exec ex = r.ex = Exec::on(device);
  std::shared_ptr<TokenDispatcher<float>> dispatcher;
  if (r.grid.ep > 1) {
    std::vector<int> node_of_peer;
    for (int p : r.grid.ep_group())
      node_of_peer.push_back(r.grid.node_of(p) - r.grid.node_of(r.grid.ep_group()[0]));
    dispatcher = r.ep = std::make_shared<EpDispatcher<float>>(
        ex, *r.groups->device().ep, std::move(node_of_peer), dispatch_wire(cfg.precision.recipe),
        r.groups->host.ep.get());
  } else {  // one for the rank's chunks too: its pool of rows in flight serves them all, as plan
            // counts (at most one exchange a running program: trainer/plan.cpp peak_exchanges)
    dispatcher = std::make_shared<LocalDispatcher<float>>(ex);
  }
  // chunks in stage order into one store: both DualPipe twins list the same parameters in the
  // same order (their ZeRO-1 group spans both), and the last stage finds the first's embedding;
  // the second chunk shares the first's one-piece scratch
  r.params = std::make_unique<ParamStore<float>>(param_device(device));
  for (int stage : r.stages) {
    const Model<float>* sibling = r.chunks.empty() ? nullptr : r.chunks.front().get();
    r.chunks.push_back(std::make_unique<Model<float>>(
        cfg.model, policy, dispatcher, StageSpec{stage, r.n_stages}, ex, r.params.get(), sibling));
    r.chunks.back()->init(cfg.run.seed);
  }
  std::vector<Param<float>*> params;
  for (auto& p : r.params->all()) params.push_back(p.get());
  r.optimizer = std::make_unique<Optimizer>(params, *r.groups, cfg.optimizer);
  r.embed = r.params->find("model.embed_tokens.weight");
}

// resume: parameters, optimizer shards and the position in the data, on any layout
void resume_from(Run& r, const std::string& resume, std::ostream& log) {
  if (resume.empty()) return;
  std::string notes;  // `moetron train` resolved "auto" before anything was written
  const std::string dir = resolve_resume(resume, r.cfg.run.dir, &notes);
  if (r.rank0) log << notes;
  if (dir.empty()) return;
  const auto t0 = std::chrono::steady_clock::now();
  r.state = load_checkpoint(dir, r.cfg, *r.params, r.optimizer->shards(), r.tokenizer);
  r.chunks.front()->weights_updated();  // (one version counter for every chunk)
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  if (r.rank0)
    log << "moetron: resumed from " << dir << " (step " << r.state.step << ", loaded in " << secs
        << " s)\n";
}

void report_start(const Run& r, std::ostream& log) {
  if (!r.rank0) return;
  const Config& cfg = r.cfg;
  const RankGrid& g = r.grid;
  const pipeline::Schedule& sched = r.pipeline->schedule();
  log << "moetron: " << g.world << " rank(s) (pp " << g.pp << " x dp " << g.dp << ", ep " << g.ep
      << "), rank 0 holds " << r.params->numel() << " parameters, optimizer state "
      << r.optimizer->state_bytes() / 1024 << " KiB/rank; " << cfg.run.steps << " steps of "
      << cfg.data.global_batch_size << " x " << r.S << " tokens (" << sched.microbatches
      << " micro-batches of " << r.B << " per pipeline, schedule " << cfg.parallel.schedule << "), "
      << kernels::num_threads() << " threads, precision " << cfg.precision.recipe << ", "
      << (sleeping_waits() ? "sleeping" : "polling") << " MPI waits\n";
  if (r.optimizer->masters_sharded())  // (parallel/zero1.h)
    log << "moetron: fp32 master weights sharded with the optimizer state: rank 0 holds "
        << r.optimizer->value_bytes() / 1048576.0 << " MiB of fp32 values (whole: "
        << 4.0 * static_cast<double>(r.params->numel()) / 1048576.0
        << " MiB); its FP8/bf16 weight copies are remade after each step's all-gather\n";
  // what `moetron plan` says this layout holds per device (the progress line's mem: what the
  // allocator held)
  const RankPlan& p0 = r.plan.ranks.front();
  const RankPlan& peak = r.plan.peak();
  const auto gib = [](int64_t b) { return static_cast<double>(b) / 1073741824.0; };
  log << std::setprecision(3) << std::fixed << "moetron: memory on " << cfg.run.device
      << " by `moetron plan`: pipeline rank 0 " << gib(p0.bytes.total()) << " GiB (activations "
      << gib(p0.bytes.activations) << ": " << p0.slots << " micro-batch state(s) of "
      << cfg.parallel.schedule << " + " << p0.grad_sets << " gradient set(s)); the most, pipeline "
      << "rank " << peak.pp_rank << ": " << gib(peak.bytes.total()) << " GiB";
  if (r.plan.ep_imbalance_limit > 0)
    log << "; it fits while an EP rank's expert rows stay within " << r.plan.ep_imbalance_limit
        << "x the mean (metrics' ep_rows_peak)";
  log << "\n" << std::defaultfloat << std::setprecision(6);
  if (cfg.data.batch_ramp_start > 0)
    log << "moetron: global batch ramps from " << r.batches->batch_size_at(0) << " to "
        << cfg.data.global_batch_size << " sequences over " << cfg.data.batch_ramp_tokens
        << " tokens\n";
  log << "moetron: training data";
  for (int s = 0; s < r.train_data->n_sources(); ++s) {
    const data::SourceInfo& si = r.train_data->source(s);
    log << (s ? "; " : " ") << si.name << " (" << si.shards.size() << " shard(s), " << si.n_tokens
        << " tokens, weight " << si.effective_weight << ")";
  }
  log << ", tokenizer " << r.tokenizer << "\n";
  if (r.valid_data)
    log << "moetron: validation every " << cfg.run.eval_interval << " steps on " << r.eval_batches
        << " batch(es) of " << cfg.data.global_batch_size << " x " << r.S << " tokens\n";
}

}  // namespace

RankGrid make_grid(const Config& cfg, int world, int rank) {
  const auto& p = cfg.parallel;
  RankGrid g;
  try {
    g = RankGrid::make(world, rank, static_cast<int>(p.pp), static_cast<int>(p.dp),
                       static_cast<int>(p.ep), static_cast<int>(p.ranks_per_node));
    stage_blocks(cfg.model, StageSpec{g.pp_rank, g.pp});
    check_node_limit(cfg, g);
  } catch (const std::exception& e) {
    throw ConfigError(cfg.source + ": " + e.what());
  }
  return g;
}

WirePrecision dispatch_wire(Recipe recipe) {
  if (recipe == Recipe::FP8) return WirePrecision::FP8;
  if (recipe == Recipe::BF16) return WirePrecision::BF16;
  return WirePrecision::Native;
}

std::unique_ptr<Run> setup(const Config& cfg, std::ostream& log, const std::string& resume) {
  auto r = std::make_unique<Run>();
  r->cfg = cfg;
  r->world = &world();
  plan_layout(*r);  // nothing is written before the layout, the memory and the data check out
  r->plan = make_plan(cfg, r->grid.world);  // (start-up reports it)
  check_memory(r->plan);                    // when hardware.memory_gib is known (trainer/plan.h)
  open_data(*r);
  kernels::set_num_threads(resolve_threads(cfg.run));
  set_sleeping_waits(sleep_when_waiting(cfg.parallel));
  // read per step by train_step; the op profile's TFLOP/s need it too
  kernels::flop_counter::set_counting(cfg.run.count_flops || !cfg.run.profile_steps.empty());
  // the embedding's two copies on the first and last stage sum gradients, unless one rank holds
  // both stages (DualPipe(V): one shared copy); DualPipe's twins sum everything
  const bool two_chunks = r->stages.size() > 1;
  open_device(*r);
  r->groups = std::make_unique<ProcessGroups>(
      r->grid, *r->world, cfg.model.num_nextn_predict_layers > 0 && !two_chunks,
      cfg.parallel.schedule == PipelineSchedule::DualPipe, r->device_world);
  build_model(*r);
  resume_from(*r, resume, log);
  open_run_dir(*r);  // after the resume: a refused checkpoint leaves no run directory behind
  r->writer = std::make_unique<CheckpointWriter>(*r->world);
  const int64_t M_max = cfg.data.global_batch_size / (r->B * r->grid.dp);
  ExecOptions eo;
  eo.interleave = cfg.parallel.overlap == PairOverlap::Interleave;
  // between pieces the EP exchanges and the DP reductions progress; the executor splits the EP
  // waits; the DP reduction of a layer starts when the backward has finished its gradients
  Run* run = r.get();
  eo.progress = [run] {
    if (run->ep) run->ep->progress();
    run->optimizer->progress();
  };
  if (r->ep) eo.ep_blocked = [run] { return run->ep_blocked += run->ep->take_comm_seconds(); };
  eo.layer_grads_final = [run](int layer) { run->optimizer->grads_final(layer); };
  std::vector<const Model<float>*> chunks;
  for (const auto& c : r->chunks) chunks.push_back(c.get());
  r->pipeline = std::make_unique<PipelineExecutor<float>>(
      std::move(chunks), *r->groups->device().pp,
      make_step_schedule(cfg, r->grid.pp, static_cast<int>(M_max)), r->grid.pp_rank, eo);
  // this DP rank's batches, from the sample the checkpoint (if any) had consumed: the same
  // samples the uninterrupted run would read, on any DP size
  data::LoaderOptions lo;
  lo.dp = r->grid.dp, lo.dp_rank = r->grid.dp_rank;
  lo.prefetch = static_cast<int>(cfg.data.prefetch);
  r->loader = std::make_unique<data::Loader>(*r->train_data, *r->batches, lo, r->state.samples);
  if (cfg.parallel.progress_poll_us > 0)
    r->progress_thread = std::make_unique<ProgressThread>(
        *r->world, std::chrono::microseconds(cfg.parallel.progress_poll_us));
  report_start(*r, log);
  return r;
}

}  // namespace moetron
