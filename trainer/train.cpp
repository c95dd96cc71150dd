// The training loop (torchtitan style: reads like the method).
//
//   for each step:
//     for each micro-batch: forward (losses, expert loads), backward (grads accumulate, 1/M each)
//     lr, gamma, lambda from their schedules at this step / token count
//     clip by global norm, AdamW
//     auxiliary-loss-free bias update from the step's expert loads
//     metrics line + metrics.jsonl
#include "trainer/train.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <ostream>
#include <thread>

#include "data/sampler.h"
#include "data/token_file.h"
#include "kernels/ops.h"
#include "model/model.h"
#include "trainer/metrics.h"
#include "trainer/optimizer.h"

namespace moetron {

int resolve_threads(const RunConfig& run) {
  if (run.threads > 0) return static_cast<int>(run.threads);
  int cores = static_cast<int>(std::thread::hardware_concurrency());
  int local = 1;
  if (const char* s = std::getenv("OMPI_COMM_WORLD_LOCAL_SIZE")) local = std::max(1, std::atoi(s));
  return std::max(1, cores / local);
}

namespace {

// Checks that need the data files and the process layout; throws with a message naming the
// file or key. Runs before anything is written.
void preflight(const Config& cfg, const data::TokenFile& train_file) {
  const int64_t world = 1;  // multi-process training arrives with the parallel layer
  if (cfg.parallel.pp * cfg.parallel.dp != world)
    throw ConfigError(cfg.source + ": parallel.pp x parallel.dp = " +
                      std::to_string(cfg.parallel.pp * cfg.parallel.dp) +
                      " ranks, but this run has " + std::to_string(world) + " process");
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

}  // namespace

TrainSummary train(const Config& cfg, std::ostream& log) {
  const PrecisionPolicy policy = PrecisionPolicy::from(cfg.precision.recipe);
  data::TokenFile train_file(cfg.data.train_path);
  preflight(cfg, train_file);

  kernels::set_num_threads(resolve_threads(cfg.run));
  make_run_dir(cfg.run.dir);
  {
    std::ofstream f(cfg.run.dir + "/config.yaml");
    f << config_to_yaml(cfg);
    if (!f) throw std::runtime_error(cfg.run.dir + "/config.yaml: write failed");
  }
  MetricsLog metrics(cfg.run.dir);

  Model<float> model(cfg.model, policy);
  model.init(cfg.run.seed);
  AdamW opt(model.params(), cfg.optimizer);
  data::WindowSampler sampler(train_file, cfg.data.seq_len, cfg.run.seed);

  const int64_t B = cfg.data.micro_batch_size, S = cfg.data.seq_len;
  const int64_t M = cfg.data.global_batch_size / B;  // micro-batches per step (one process)
  const int64_t step_tokens = cfg.data.global_batch_size * S;
  log << "moetron: " << model.params().numel() << " parameters, " << cfg.run.steps << " steps of "
      << cfg.data.global_batch_size << " x " << S << " tokens (" << M << " micro-batches of " << B
      << "), " << kernels::num_threads() << " threads, precision " << cfg.precision.recipe << "\n";

  std::vector<typename Model<float>::MicroBatch> mbs(1);  // reused every micro-batch
  std::vector<int32_t> tokens(B * (S + 1));
  auto moe = model.moe_layers();
  std::vector<std::vector<int64_t>> load(moe.size());
  TrainSummary summary;
  const auto t_start = std::chrono::steady_clock::now();

  for (int64_t step = 0; step < cfg.run.steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    const double consumed = static_cast<double>(summary.tokens);
    const double x = cfg.schedule.tokens() ? consumed : static_cast<double>(step);
    const double lr = cfg.schedule.lr.at(step, consumed, cfg.schedule.tokens());
    const double gamma = cfg.schedule.bias_update_speed.at(x);
    const double lambda = cfg.schedule.mtp_weight.at(x);

    model.params().zero_grad();
    for (auto& l : load) l.assign(cfg.model.n_routed_experts, 0);
    Losses sum;
    for (int64_t m = 0; m < M; ++m) {
      for (int64_t b = 0; b < B; ++b)
        sampler.sample(step * cfg.data.global_batch_size + m * B + b, tokens.data() + b * (S + 1));
      auto& mb = mbs[0];
      const Losses& l = model.forward(mb, tokens.data(), B, S, lambda);
      sum.loss += l.loss / M, sum.lm += l.lm / M, sum.mtp += l.mtp / M, sum.balance += l.balance / M;
      const auto states = model.moe_states(mb);
      for (size_t i = 0; i < moe.size(); ++i)
        for (int64_t e = 0; e < cfg.model.n_routed_experts; ++e) load[i][e] += states[i]->load[e];
      model.backward(mb, 1.0 / static_cast<double>(M));
    }
    const double gnorm = opt.step(lr);
    double imbalance = 0;
    for (size_t i = 0; i < moe.size(); ++i) {
      moe[i]->update_bias(load[i], gamma);
      const int64_t mx = *std::max_element(load[i].begin(), load[i].end());
      double mean = 0;
      for (int64_t v : load[i]) mean += static_cast<double>(v);
      mean /= static_cast<double>(load[i].size());
      imbalance += mean > 0 ? static_cast<double>(mx) / mean : 0.0;
    }
    if (!moe.empty()) imbalance /= static_cast<double>(moe.size());
    summary.tokens += step_tokens;
    summary.losses.push_back(sum.loss);

    const auto t1 = std::chrono::steady_clock::now();
    StepMetrics sm;
    sm.step = step + 1, sm.total_steps = cfg.run.steps;
    sm.loss = sum.loss, sm.lm_loss = sum.lm, sm.mtp_loss = sum.mtp, sm.balance_loss = sum.balance;
    sm.lr = lr, sm.grad_norm = gnorm, sm.tokens = summary.tokens;
    sm.step_seconds = std::chrono::duration<double>(t1 - t0).count();
    sm.tokens_per_s = static_cast<double>(step_tokens) / sm.step_seconds;
    sm.expert_imbalance = imbalance, sm.bias_update_speed = gamma, sm.mtp_weight = lambda;
    const double elapsed = std::chrono::duration<double>(t1 - t_start).count();
    sm.eta_seconds = elapsed / static_cast<double>(step + 1) *
                     static_cast<double>(cfg.run.steps - step - 1);
    metrics.write(sm);
    if ((step + 1) % cfg.run.log_interval == 0 || step + 1 == cfg.run.steps)
      log << MetricsLog::progress_line(sm) << std::endl;
  }
  summary.seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
  return summary;
}

}  // namespace moetron
