// The training loop (torchtitan style: reads like the method). One process or many: the same
// loop runs on every rank of the grid world = PP x DP (EP inside DP).
//
//   for each step:
//     the loader hands this DP rank its share of the step's samples (global batch from the
//       batch-size schedule; data/dataset.h)
//     the pipeline schedule runs this rank's micro-batches: forward (losses, expert loads) and
//       backward (gradients accumulate, scaled by 1 / micro-batches in the global batch)
//     the embedding's two copies (first stage, MTP on the last) sum their gradients
//     lr, gamma, lambda from their schedules at this step / token count
//     ZeRO-1: reduce-scatter gradients (dense over DP, experts over EDP), global-norm clip,
//       AdamW on this rank's shard, all-gather the parameters
//     auxiliary-loss-free bias update from the step's expert loads (summed over DP)
//     every run.eval_interval steps: the validation loss (forward passes only)
//     every run.sample_interval steps: a greedy text sample (trainer/generate.h)
//     metrics line + metrics.jsonl (rank 0)
#include "trainer/train.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <thread>

#include "data/bpe.h"
#include "data/dataset.h"
#include "data/sources.h"
#include "kernels/ops.h"
#include "model/memory.h"
#include "model/model.h"
#include "parallel/ep_dispatch.h"
#include "parallel/pipeline.h"
#include "parallel/process_groups.h"
#include "parallel/zero1.h"
#include "trainer/checkpoint.h"
#include "trainer/dump.h"
#include "trainer/generate.h"
#include "trainer/metrics.h"

namespace moetron {

int resolve_threads(const RunConfig& run) {
  if (run.threads > 0) return static_cast<int>(run.threads);
  int cores = static_cast<int>(std::thread::hardware_concurrency());
  int local = 1;
  if (const char* s = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")) local = std::max(1, std::atoi(s));
  return std::max(1, cores / local);
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

// The layout as the model and schedule see it; throws ConfigError naming the keys.
RankGrid make_grid(const Config& cfg, Communicator& w) {
  const auto& p = cfg.parallel;
  RankGrid g;
  try {
    g = RankGrid::make(w.size(), w.rank(), static_cast<int>(p.pp), static_cast<int>(p.dp),
                       static_cast<int>(p.ep), static_cast<int>(p.ranks_per_node));
    stage_blocks(cfg.model.num_hidden_layers, StageSpec{g.pp_rank, g.pp});
    check_node_limit(cfg, g);
  } catch (const std::exception& e) {
    throw ConfigError(cfg.source + ": " + e.what());
  }
  return g;
}

// How routed tokens travel between EP ranks under each recipe (SPEC §3.6): fp8 dispatches in
// E4M3 and combines in BF16, bf16 moves everything in BF16, fp32 moves fp32.
WirePrecision dispatch_wire(const std::string& recipe) {
  if (recipe == "fp8") return WirePrecision::FP8;
  if (recipe == "bf16") return WirePrecision::BF16;
  return WirePrecision::Native;
}

pipeline::Schedule make_step_schedule(const Config& cfg, int pp, int microbatches) {
  if (cfg.parallel.schedule == "dualpipe" || cfg.parallel.schedule == "dualpipev")
    throw ConfigError(cfg.source + ": parallel.schedule: " + cfg.parallel.schedule +
                      " is generated and validated (bench_schedules) but the executor runs "
                      "1f1b and zb1p only so far");
  try {
    pipeline::Schedule s = pipeline::make_schedule(cfg.parallel.schedule, pp, microbatches);
    pipeline::validate(s);
    return s;
  } catch (const std::invalid_argument& e) {
    throw ConfigError(cfg.source + ": parallel.schedule: " + e.what());
  }
}

}  // namespace

namespace {
volatile std::sig_atomic_t g_stop = 0;
extern "C" void on_stop_signal(int) { g_stop = 1; }
}  // namespace

TrainSummary train(const Config& cfg, std::ostream& log, const std::string& resume) {
  // the recipe per component; FP8 weight copies are re-quantised once per optimizer step
  PrecisionPolicy policy = cfg.policy();
  policy.weight_version = std::make_shared<uint64_t>(0);
  Communicator& w = world();
  const RankGrid grid = make_grid(cfg, w);
  const int64_t B = cfg.data.micro_batch_size, S = cfg.data.seq_len;
  // the global batch of each step: constant, or the V3 ramp over consumed tokens
  const data::BatchSchedule batches =
      cfg.data.batch_ramp_start > 0
          ? data::BatchSchedule(cfg.data.batch_ramp_start, cfg.data.global_batch_size,
                                cfg.data.batch_ramp_tokens, S, grid.dp, B)
          : data::BatchSchedule::constant(cfg.data.global_batch_size, S, grid.dp, B);
  // every batch size the run can take must have a valid schedule: check the smallest and largest
  make_step_schedule(cfg, grid.pp, static_cast<int>(batches.batch_size_at(0) / (B * grid.dp)));
  const int64_t M_max = cfg.data.global_batch_size / (B * grid.dp);
  pipeline::Schedule schedule = make_step_schedule(cfg, grid.pp, static_cast<int>(M_max));
  const auto train_data = open_dataset(cfg, cfg.data.train_path, "data.train_path", true);
  const auto valid_data = cfg.run.eval_interval > 0
                              ? open_dataset(cfg, cfg.data.valid_path, "data.valid_path", false)
                              : nullptr;
  // the validation set: whole global batches of the validation stream (at most eval_batches)
  int64_t eval_batches = 0;
  if (valid_data) {
    eval_batches = valid_data->n_eval_samples() / cfg.data.global_batch_size;
    if (eval_batches == 0)
      throw ConfigError(cfg.source + ": data.valid_path: " + cfg.data.valid_path + " holds " +
                        std::to_string(valid_data->n_eval_samples()) + " samples of " +
                        std::to_string(S + 1) +
                        " tokens, fewer than one global batch (data.global_batch_size " +
                        std::to_string(cfg.data.global_batch_size) + ")");
    if (cfg.run.eval_batches > 0) eval_batches = std::min(eval_batches, cfg.run.eval_batches);
  }
  const std::string& tokenizer = train_data->tokenizer();
  const bool rank0 = w.rank() == 0;
  // text samples: the prompt and the tokenizer are checked now, before anything is written
  TrainingSampler sampler(cfg, tokenizer);

  kernels::set_num_threads(resolve_threads(cfg.run));
  ProcessGroups groups(grid, w, cfg.model.num_nextn_predict_layers > 0);
  if (rank0) {
    make_run_dir(cfg.run.dir);
    std::ofstream f(cfg.run.dir + "/config.yaml");
    f << config_to_yaml(cfg);
    if (!f) throw std::runtime_error(cfg.run.dir + "/config.yaml: write failed");
  }
  std::unique_ptr<MetricsLog> metrics = rank0 ? std::make_unique<MetricsLog>(cfg.run.dir) : nullptr;

  // activations on run.device: every buffer made from here on (model states, the EP wire, the
  // executor's messages) is on it; parameters and optimizer state stay on the CPU
  const Device device = parse_device(cfg.run.device.c_str());
  set_default_device(device);
  const Exec model_ex = Exec::on(device);
  // this rank's stage of the model, its experts, its optimizer shards
  std::shared_ptr<TokenDispatcher<float>> dispatcher;
  std::shared_ptr<EpDispatcher<float>> ep_dispatcher;
  if (grid.ep > 1) {
    std::vector<int> node_of_peer;
    for (int r : grid.ep_group())
      node_of_peer.push_back(grid.node_of(r) - grid.node_of(grid.ep_group()[0]));
    dispatcher = ep_dispatcher = std::make_shared<EpDispatcher<float>>(
        model_ex, *groups.ep, std::move(node_of_peer), dispatch_wire(cfg.precision.recipe));
  }
  Model<float> model(cfg.model, policy, dispatcher, StageSpec{grid.pp_rank, grid.pp}, model_ex);
  model.init(cfg.run.seed);
  std::vector<Param<float>*> dense, experts;
  for (auto& p : model.params().all())
    if (p->trainable) (p->expert ? experts : dense).push_back(p.get());
  Zero1Options zo;
  zo.beta1 = cfg.optimizer.beta1, zo.beta2 = cfg.optimizer.beta2, zo.eps = cfg.optimizer.eps;
  zo.weight_decay = cfg.optimizer.weight_decay;
  zo.bf16_moments = cfg.optimizer.moment_dtype == "bf16";
  zo.grad_reduce_bf16 = cfg.optimizer.grad_reduce_dtype == "bf16";
  Zero1 opt_dense(dense, *groups.dp, zo), opt_experts(experts, *groups.edp, zo);
  Param<float>* embed = model.params().find("model.embed_tokens.weight");

  // resume: parameters, optimizer shards and the position in the data, on any layout
  TrainState state;
  if (!resume.empty()) {
    std::string warnings;
    const std::string dir = resume == "auto" ? find_checkpoint(cfg.run.dir, &warnings) : resume;
    if (rank0 && !warnings.empty()) log << "moetron: warning: " << warnings;
    if (dir.empty()) {
      if (rank0)
        log << "moetron: no complete checkpoint in " << cfg.run.dir << ", starting fresh\n";
    } else {
      const auto l0 = std::chrono::steady_clock::now();
      state = load_checkpoint(dir, cfg, model.params(), {&opt_dense, &opt_experts}, tokenizer);
      model.weights_updated();
      const double secs =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - l0).count();
      if (rank0)
        log << "moetron: resumed from " << dir << " (step " << state.step << ", loaded in " << secs
            << " s)\n";
    }
  }
  CheckpointWriter writer(w);
  auto report = [&](const std::string& dir) {
    if (rank0 && !dir.empty())
      log << "moetron: saved " << dir << " (rank 0 shard " << writer.shard_bytes() / 1e6
          << " MB in " << writer.write_seconds()
          << " s: " << writer.shard_bytes() / 1e6 / std::max(writer.write_seconds(), 1e-9)
          << " MB/s)\n";
  };
  auto checkpoint = [&] {  // asynchronous: training waits only for the copy to host buffers
    report(writer.wait());
    const double blocked = writer.save(cfg, state, model.params(), {&opt_dense, &opt_experts},
                                       /*write_unsharded=*/grid.dp_rank == 0, tokenizer);
    if (rank0)
      log << "moetron: checkpoint of step " << state.step << " being written; training blocked "
          << static_cast<int>(blocked * 1e3) << " ms\n";
  };
  g_stop = 0;
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  PipelineExecutor<float> pipeline(model, *groups.pp, schedule, grid.pp_rank);
  // this DP rank's batches, from the sample the checkpoint (if any) had consumed: the same
  // samples the uninterrupted run would read, on any DP size
  data::LoaderOptions lo;
  lo.dp = grid.dp, lo.dp_rank = grid.dp_rank, lo.prefetch = static_cast<int>(cfg.data.prefetch);
  data::Loader loader(*train_data, batches, lo, state.samples);
  const int64_t opt_bytes = opt_dense.state_bytes() + opt_experts.state_bytes();
  if (rank0)
    log << "moetron: " << grid.world << " rank(s) (pp " << grid.pp << " x dp " << grid.dp << ", ep "
        << grid.ep << "), stage 0 holds " << model.params().numel()
        << " parameters, optimizer state " << opt_bytes / 1024 << " KiB/rank; " << cfg.run.steps
        << " steps of " << cfg.data.global_batch_size << " x " << S << " tokens (" << M_max
        << " micro-batches of " << B << " per pipeline, schedule " << cfg.parallel.schedule << "), "
        << kernels::num_threads() << " threads, precision " << cfg.precision.recipe << "\n";
  if (rank0) {  // activation memory of stage 0 (model/memory.h): slots and gradient sets
    const SlotBytes slot = slot_activation_bytes(cfg.model, policy, 0, grid.pp, B, S);
    const int slots = schedule.in_flight_bound[0];
    const int sets = PipelineExecutor<float>::peak_grad_sets(schedule, 0);
    log << "moetron: activations on " << cfg.run.device << ", stage 0: " << slots << " x "
        << slot.forward / 1048576.0 << " MiB (micro-batch slots of " << cfg.parallel.schedule
        << ") + " << sets << " x " << slot.backward / 1048576.0
        << " MiB (gradient sets) = " << (slots * slot.forward + sets * slot.backward) / 1048576.0
        << " MiB\n";
  }
  if (rank0 && cfg.data.batch_ramp_start > 0)
    log << "moetron: global batch ramps from " << batches.batch_size_at(0) << " to "
        << cfg.data.global_batch_size << " sequences over " << cfg.data.batch_ramp_tokens
        << " tokens\n";
  if (rank0) {
    log << "moetron: training data";
    for (int s = 0; s < train_data->n_sources(); ++s) {
      const data::SourceInfo& si = train_data->source(s);
      log << (s ? "; " : " ") << si.name << " (" << si.shards.size() << " shard(s), " << si.n_tokens
          << " tokens, weight " << si.effective_weight << ")";
    }
    log << ", tokenizer " << tokenizer << "\n";
    if (valid_data)
      log << "moetron: validation every " << cfg.run.eval_interval << " steps on " << eval_batches
          << " batch(es) of " << cfg.data.global_batch_size << " x " << S << " tokens\n";
  }

  // the validation loss: the next-token loss of the main model over the validation batches
  // (forward passes only; every rank gets the same value)
  auto evaluate = [&]() {
    const int64_t rows = cfg.data.global_batch_size / grid.dp, Me = rows / B;
    pipeline::Schedule train_schedule = pipeline.schedule();
    pipeline.set_schedule(pipeline::make_forward_only(grid.pp, static_cast<int>(Me)));
    double lm = 0;
    for (int64_t b = 0; b < eval_batches; ++b) {
      const data::Batch eb =
          valid_data->eval_batch(b, cfg.data.global_batch_size, grid.dp, grid.dp_rank);
      Losses sum;
      pipeline.run([&](int m) { return eb.row(m * B); }, B, S, 0.0, 0.0, sum);
      lm += sum.lm;
    }
    pipeline.set_schedule(std::move(train_schedule));
    double red[1] = {lm};
    w.all_reduce(red, 1);
    if (ep_dispatcher) {  // evaluation's all-to-all is not part of the step's timing
      ep_dispatcher->take_comm_seconds();
      ep_dispatcher->take_max_nodes_per_token();
    }
    return red[0] / static_cast<double>(Me * grid.dp * eval_batches);
  };

  auto moe = model.moe_layers();
  std::vector<int64_t> load(moe.size() * cfg.model.n_routed_experts);
  TrainSummary summary;
  summary.tokens = state.tokens;
  const auto t_start = std::chrono::steady_clock::now();

  for (int64_t step = state.step; step < cfg.run.steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    // this DP rank's rows of the step: micro-batch m is rows [m*B, (m+1)*B)
    const data::Batch batch = loader.next();
    const int64_t M = batch.rows / B;
    if (M != pipeline.schedule().microbatches)
      pipeline.set_schedule(make_step_schedule(cfg, grid.pp, static_cast<int>(M)));
    const int64_t step_tokens = batch.global_batch * S;
    const double consumed = static_cast<double>(summary.tokens);
    const double x = cfg.schedule.tokens() ? consumed : static_cast<double>(step);
    const double lr = cfg.schedule.lr.at(step, consumed, cfg.schedule.tokens());
    const double gamma = cfg.schedule.bias_update_speed.at(x);
    const double lambda = cfg.schedule.mtp_weight.at(x);

    model.params().zero_grad();
    model.zero_loads();
    Losses sum;
    pipeline.run([&](int m) { return batch.row(m * B); }, B, S, lambda,
                 1.0 / static_cast<double>(M * grid.dp), sum);

    const auto t_pipe = std::chrono::steady_clock::now();
    // expert loads of the step over the whole global batch (this stage's layers)
    groups.dp->all_reduce(model.loads(), load.size());  // in place, on the model's device
    kernels::copy_to_host(model.exec(), load.data(), model.loads(), sizeof(int64_t) * load.size());

    // the embedding's copies on the first and last stage share one gradient
    if (groups.tied && embed) groups.tied->all_reduce(embed->g(), embed->numel());

    // ZeRO-1 step with the global gradient norm
    opt_dense.reduce_scatter_grads();
    opt_experts.reduce_scatter_grads();
    double sq = opt_dense.owned_grad_sq() + opt_experts.owned_grad_sq();
    w.all_reduce(&sq, 1);
    const double gnorm = std::sqrt(sq);
    const double clip = cfg.optimizer.grad_clip > 0 && gnorm > cfg.optimizer.grad_clip
                            ? cfg.optimizer.grad_clip / gnorm
                            : 1.0;
    opt_dense.step(lr, clip, step + 1);
    opt_experts.step(lr, clip, step + 1);
    model.weights_updated();

    double imbalance = 0;
    for (size_t i = 0; i < moe.size(); ++i) {
      std::vector<int64_t> l(load.begin() + i * cfg.model.n_routed_experts,
                             load.begin() + (i + 1) * cfg.model.n_routed_experts);
      moe[i]->update_bias(model.loads() + i * cfg.model.n_routed_experts, gamma);
      double mean = 0;
      for (int64_t v : l) mean += static_cast<double>(v);
      mean /= static_cast<double>(l.size());
      imbalance += mean > 0 ? static_cast<double>(*std::max_element(l.begin(), l.end())) / mean : 0;
    }
    // where this rank's step time went: compute, communication it waited for, pipeline idle
    const double ep_comm = ep_dispatcher ? ep_dispatcher->take_comm_seconds() : 0.0;
    const double dp_comm = opt_dense.take_comm_seconds() + opt_experts.take_comm_seconds();
    const double tail =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - t_pipe).count();
    std::vector<double> times(3 * grid.world, 0.0);
    times[3 * w.rank()] = pipeline.compute_seconds() - ep_comm + tail - dp_comm;
    times[3 * w.rank() + 1] = ep_comm + dp_comm;
    times[3 * w.rank() + 2] = pipeline.idle_seconds();
    w.all_reduce(times.data(), times.size());
    int64_t nodes_per_token = ep_dispatcher ? ep_dispatcher->take_max_nodes_per_token() : 1;
    w.all_reduce(&nodes_per_token, 1, ReduceOp::Max);

    // losses: sum over stages and DP ranks, mean over the global batch's micro-batches;
    // imbalance: mean over every MoE layer of the model
    double red[6] = {sum.loss,  sum.lm,
                     sum.mtp,   sum.balance,
                     imbalance, grid.dp_rank == 0 ? static_cast<double>(moe.size()) : 0.0};
    if (grid.dp_rank != 0) red[4] = 0;
    w.all_reduce(red, 6);
    const double mtot = static_cast<double>(M * grid.dp);
    summary.tokens += step_tokens;
    summary.losses.push_back(red[0] / mtot);
    state.step = step + 1, state.tokens = summary.tokens;
    state.samples = loader.samples_consumed();
    // every rank agrees whether a stop signal arrived anywhere
    int64_t stop = g_stop;
    w.all_reduce(&stop, 1, ReduceOp::Max);
    const bool last = step + 1 == cfg.run.steps || stop;
    const bool eval = valid_data && (state.step % cfg.run.eval_interval == 0 || last);
    const auto te = std::chrono::steady_clock::now();
    const double valid_loss = eval ? evaluate() : NAN;
    // a text sample: every rank hands rank 0 the main model's parameters it owns
    const bool sample = sampler.due(state.step, last);
    const std::string sample_text =
        sample ? sampler.sample(
                     model.params(),
                     [&](const Param<float>& p) {
                       return !p.replica && (p.expert ? grid.dp_rank < grid.ep : grid.dp_rank == 0);
                     },
                     w, model_ex)
               : std::string();
    const double eval_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - te).count();
    if (cfg.run.save_interval > 0 && (state.step % cfg.run.save_interval == 0 || last))
      checkpoint();

    const auto t1 = std::chrono::steady_clock::now();
    if (!rank0) {
      if (stop) break;
      continue;
    }
    StepMetrics sm;
    sm.step = step + 1, sm.total_steps = cfg.run.steps;
    sm.loss = red[0] / mtot, sm.lm_loss = red[1] / mtot, sm.mtp_loss = red[2] / mtot;
    sm.balance_loss = red[3] / mtot;
    sm.lr = lr, sm.grad_norm = gnorm, sm.tokens = summary.tokens;
    sm.global_batch = batch.global_batch, sm.valid_loss = valid_loss;
    sm.step_seconds = std::chrono::duration<double>(t1 - t0).count() - eval_seconds;
    sm.tokens_per_s = static_cast<double>(step_tokens) / sm.step_seconds;
    sm.expert_imbalance = red[5] > 0 ? red[4] / red[5] : 0.0;
    sm.bias_update_speed = gamma, sm.mtp_weight = lambda;
    sm.rank_times = times;
    sm.max_nodes_per_token = nodes_per_token;
    const double elapsed = std::chrono::duration<double>(t1 - t_start).count();
    sm.eta_seconds =
        elapsed / static_cast<double>(step + 1) * static_cast<double>(cfg.run.steps - step - 1);
    metrics->write(sm);
    if ((step + 1) % cfg.run.log_interval == 0 || last)
      log << MetricsLog::progress_line(sm) << std::endl;
    if (sample) {
      const std::string text = sampler.prompt() + sample_text;
      std::ofstream f(cfg.run.dir + "/samples.txt", std::ios::app);
      f << "== step " << state.step << " (greedy, " << cfg.run.sample_tokens << " tokens) ==\n"
        << text << "\n\n";
      if (!f) throw std::runtime_error(cfg.run.dir + "/samples.txt: write failed");
      std::string indented = "  ";
      for (char ch : text) indented += ch == '\n' ? std::string("\n  ") : std::string(1, ch);
      log << "moetron: sample at step " << state.step << " (greedy, " << cfg.run.sample_tokens
          << " tokens; " << cfg.run.dir << "/samples.txt):\n"
          << indented << std::endl;
    }
    if (stop) {
      log << "moetron: stopped by signal after step " << state.step << "\n";
      break;
    }
  }
  report(writer.wait());  // the last save completes before train() returns
  if (rank0 && ep_dispatcher) {
    auto mb = [&](EpPhase ph) { return static_cast<double>(ep_dispatcher->bytes_sent(ph)) / 1e6; };
    log << "moetron: expert-parallel payload sent by rank 0 (" << cfg.precision.recipe
        << "): dispatch " << mb(EpPhase::Dispatch) << " MB, combine " << mb(EpPhase::Combine)
        << " MB, combine backward " << mb(EpPhase::CombineBackward) << " MB, dispatch backward "
        << mb(EpPhase::DispatchBackward) << " MB\n";
  }
  summary.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  if (!cfg.run.save_params.empty())
    save_params(model.params(), cfg.run.save_params + ".rank" + std::to_string(w.rank()) + ".h5");
  return summary;
}

}  // namespace moetron
