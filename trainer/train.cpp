// The training loop (torchtitan style: reads like the method). One process or many: the same
// loop runs on every rank of the grid world = PP x DP (EP inside DP).
//
//   for each step:
//     the pipeline schedule runs this rank's micro-batches: forward (losses, expert loads) and
//       backward (gradients accumulate, scaled by 1 / micro-batches in the global batch)
//     the embedding's two copies (first stage, MTP on the last) sum their gradients
//     lr, gamma, lambda from their schedules at this step / token count
//     ZeRO-1: reduce-scatter gradients (dense over DP, experts over EDP), global-norm clip,
//       AdamW on this rank's shard, all-gather the parameters
//     auxiliary-loss-free bias update from the step's expert loads (summed over DP)
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

#include "data/sampler.h"
#include "data/token_file.h"
#include "kernels/ops.h"
#include "model/model.h"
#include "parallel/ep_dispatch.h"
#include "parallel/pipeline.h"
#include "parallel/process_groups.h"
#include "parallel/zero1.h"
#include "trainer/checkpoint.h"
#include "trainer/dump.h"
#include "trainer/metrics.h"

namespace moetron {

int resolve_threads(const RunConfig& run) {
  if (run.threads > 0) return static_cast<int>(run.threads);
  int cores = static_cast<int>(std::thread::hardware_concurrency());
  int local = 1;
  if (const char* s = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")) local = std::max(1, std::atoi(s));
  return std::max(1, cores / local);
}

namespace {

// Checks that need the data files; throws with a message naming the file or key. Runs before
// anything is written, identically on every rank.
void preflight(const Config& cfg, const data::TokenFile& train_file) {
  const auto& info = train_file.info();
  if (info.vocab_size > cfg.model.vocab_size)
    throw ConfigError(cfg.source + ": model.vocab_size is " + std::to_string(cfg.model.vocab_size) +
                      " but " + train_file.path() + " holds token ids up to vocab_size " +
                      std::to_string(info.vocab_size));
  if (info.n_tokens < cfg.data.seq_len + 1)
    throw ConfigError(cfg.source + ": data.seq_len " + std::to_string(cfg.data.seq_len) +
                      " needs at least seq_len+1 tokens, " + train_file.path() + " has " +
                      std::to_string(info.n_tokens));
}

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
  const PrecisionPolicy policy = PrecisionPolicy::from(cfg.precision.recipe);
  Communicator& w = world();
  const RankGrid grid = make_grid(cfg, w);
  const int64_t B = cfg.data.micro_batch_size, S = cfg.data.seq_len;
  const int64_t M = cfg.data.global_batch_size / (B * grid.dp);  // this pipeline's micro-batches
  const pipeline::Schedule schedule = make_step_schedule(cfg, grid.pp, static_cast<int>(M));
  data::TokenFile train_file(cfg.data.train_path);
  preflight(cfg, train_file);
  const bool rank0 = w.rank() == 0;

  kernels::set_num_threads(resolve_threads(cfg.run));
  ProcessGroups groups(grid, w, cfg.model.num_nextn_predict_layers > 0);
  if (rank0) {
    make_run_dir(cfg.run.dir);
    std::ofstream f(cfg.run.dir + "/config.yaml");
    f << config_to_yaml(cfg);
    if (!f) throw std::runtime_error(cfg.run.dir + "/config.yaml: write failed");
  }
  std::unique_ptr<MetricsLog> metrics = rank0 ? std::make_unique<MetricsLog>(cfg.run.dir) : nullptr;

  // this rank's stage of the model, its experts, its optimizer shards
  std::shared_ptr<TokenDispatcher<float>> dispatcher;
  std::shared_ptr<EpDispatcher<float>> ep_dispatcher;
  if (grid.ep > 1) {
    std::vector<int> node_of_peer;
    for (int r : grid.ep_group())
      node_of_peer.push_back(grid.node_of(r) - grid.node_of(grid.ep_group()[0]));
    dispatcher = ep_dispatcher =
        std::make_shared<EpDispatcher<float>>(*groups.ep, std::move(node_of_peer));
  }
  Model<float> model(cfg.model, policy, dispatcher, StageSpec{grid.pp_rank, grid.pp});
  model.init(cfg.run.seed);
  std::vector<Param<float>*> dense, experts;
  for (auto& p : model.params().all())
    if (p->trainable) (p->expert ? experts : dense).push_back(p.get());
  Zero1Options zo;
  zo.beta1 = cfg.optimizer.beta1, zo.beta2 = cfg.optimizer.beta2, zo.eps = cfg.optimizer.eps;
  zo.weight_decay = cfg.optimizer.weight_decay;
  zo.bf16_moments = cfg.optimizer.moment_dtype == "bf16";
  Zero1 opt_dense(dense, *groups.dp, zo), opt_experts(experts, *groups.edp, zo);
  Param<float>* embed = model.params().find("model.embed_tokens.weight");
  data::WindowSampler sampler(train_file, cfg.data.seq_len, cfg.run.seed);

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
      state = load_checkpoint(dir, cfg, model.params(), {&opt_dense, &opt_experts},
                              train_file.info().tokenizer);
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
                                       train_file.info().tokenizer);
    if (rank0)
      log << "moetron: checkpoint of step " << state.step << " being written; training blocked "
          << static_cast<int>(blocked * 1e3) << " ms\n";
  };
  g_stop = 0;
  std::signal(SIGINT, on_stop_signal);
  std::signal(SIGTERM, on_stop_signal);
  PipelineExecutor<float> pipeline(model, *groups.pp, schedule, grid.pp_rank);

  const int64_t step_tokens = cfg.data.global_batch_size * S;
  const int64_t opt_bytes = opt_dense.state_bytes() + opt_experts.state_bytes();
  if (rank0)
    log << "moetron: " << grid.world << " rank(s) (pp " << grid.pp << " x dp " << grid.dp << ", ep "
        << grid.ep << "), stage 0 holds " << model.params().numel()
        << " parameters, optimizer state " << opt_bytes / 1024 << " KiB/rank; " << cfg.run.steps
        << " steps of " << cfg.data.global_batch_size << " x " << S << " tokens (" << M
        << " micro-batches of " << B << " per pipeline, schedule " << cfg.parallel.schedule << "), "
        << kernels::num_threads() << " threads, precision " << cfg.precision.recipe << "\n";

  // micro-batch m of this DP rank = global samples [dp_rank*M*B + m*B, +B) of the step
  std::vector<std::vector<int32_t>> tokens(M, std::vector<int32_t>(B * (S + 1)));
  auto moe = model.moe_layers();
  std::vector<int64_t> load(moe.size() * cfg.model.n_routed_experts);
  TrainSummary summary;
  summary.tokens = state.tokens;
  const auto t_start = std::chrono::steady_clock::now();

  for (int64_t step = state.step; step < cfg.run.steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    const double consumed = static_cast<double>(summary.tokens);
    const double x = cfg.schedule.tokens() ? consumed : static_cast<double>(step);
    const double lr = cfg.schedule.lr.at(step, consumed, cfg.schedule.tokens());
    const double gamma = cfg.schedule.bias_update_speed.at(x);
    const double lambda = cfg.schedule.mtp_weight.at(x);

    for (int64_t m = 0; m < M; ++m)
      for (int64_t b = 0; b < B; ++b)
        sampler.sample(step * cfg.data.global_batch_size + (grid.dp_rank * M + m) * B + b,
                       tokens[m].data() + b * (S + 1));
    model.params().zero_grad();
    Losses sum;
    pipeline.run([&](int m) { return tokens[m].data(); }, B, S, lambda,
                 1.0 / static_cast<double>(M * grid.dp), sum);

    const auto t_pipe = std::chrono::steady_clock::now();
    // expert loads of the step over the whole global batch (this stage's layers)
    std::fill(load.begin(), load.end(), 0);
    for (const auto& mb : pipeline.microbatches()) {
      const auto states = model.moe_states(mb);
      for (size_t i = 0; i < states.size(); ++i)
        for (int64_t e = 0; e < cfg.model.n_routed_experts; ++e)
          load[i * cfg.model.n_routed_experts + e] += states[i]->load[e];
    }
    groups.dp->all_reduce(load.data(), load.size());

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

    double imbalance = 0;
    for (size_t i = 0; i < moe.size(); ++i) {
      std::vector<int64_t> l(load.begin() + i * cfg.model.n_routed_experts,
                             load.begin() + (i + 1) * cfg.model.n_routed_experts);
      moe[i]->update_bias(l, gamma);
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
    state.samples = state.step * cfg.data.global_batch_size;
    // every rank agrees whether a stop signal arrived anywhere
    int64_t stop = g_stop;
    w.all_reduce(&stop, 1, ReduceOp::Max);
    const bool last = step + 1 == cfg.run.steps || stop;
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
    sm.step_seconds = std::chrono::duration<double>(t1 - t0).count();
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
    if (stop) {
      log << "moetron: stopped by signal after step " << state.step << "\n";
      break;
    }
  }
  report(writer.wait());  // the last save completes before train() returns
  summary.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  if (!cfg.run.save_params.empty())
    save_params(model.params(), cfg.run.save_params + ".rank" + std::to_string(w.rank()) + ".h5");
  return summary;
}

}  // namespace moetron
