// Generation speed: seconds to generate N tokens (greedy, never stopping at EOS) after a short
// prompt, with the MLA latent cache (trainer/generate.h, model/decode.h) and without it (the
// training forward over the whole context at every step), per thread count. The model is a
// checkpoint's main model (--from, a run or checkpoint directory) or a config's with random
// weights (--config; the cost of a token does not depend on the weights' values). Past the
// context (model.max_seq_len) generation continues from the newest half, as `moetron generate`
// does, and that re-prefill is part of the time. Each row is the median of --repeats runs after
// one warm-up run, whose time is shown too (the first run of a process creates the oneDNN GEMM
// primitives of every shape it meets) (uncached: one run). First it checks the two paths agree: the
// greedy tokens, and the cached logits of every position against the uncached forward of the same
// prefix.
//
// Usage: bench_generate [--config configs/tiny.yaml | --from RUN_OR_CHECKPOINT] [--tokens 200]
//                       [--prompt-tokens 8] [--repeats 5] [--threads 1,2] [--no-uncached]
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "model/decode.h"
#include "trainer/config.h"
#include "trainer/generate.h"

using namespace moetron;
using Clock = std::chrono::steady_clock;

namespace {

[[noreturn]] void usage(const std::string& msg) {
  std::fprintf(stderr,
               "bench_generate: %s\nusage: bench_generate [--config FILE | --from DIR] "
               "[--tokens N] [--prompt-tokens N] [--repeats N] [--threads 1,2] [--no-uncached]\n",
               msg.c_str());
  std::exit(2);
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  std::string config = "configs/tiny.yaml", from;
  int64_t tokens = 200, prompt_tokens = 8, repeats = 5;
  std::vector<int> threads = {1, 2};
  bool uncached = true;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(a + " needs a value");
      return argv[++i];
    };
    if (a == "--config") {
      config = value();
    } else if (a == "--from") {
      from = value();
    } else if (a == "--tokens") {
      tokens = std::stoll(value());
    } else if (a == "--prompt-tokens") {
      prompt_tokens = std::stoll(value());
    } else if (a == "--repeats") {
      repeats = std::max<int64_t>(1, std::stoll(value()));
    } else if (a == "--threads") {
      threads.clear();
      std::stringstream ss(value());
      for (std::string t; std::getline(ss, t, ',');) threads.push_back(std::stoi(t));
    } else if (a == "--no-uncached") {
      uncached = false;
    } else {
      usage("unknown argument " + a);
    }
  }

  std::unique_ptr<Model<float>> model;
  std::string what;
  if (!from.empty()) {
    LoadedModel lm = load_for_generation(from, nullptr);
    model = std::move(lm.model);
    what = lm.dir + " (step " + std::to_string(lm.step) + ")";
  } else {
    ModelConfig mc = load_config(config).model;
    mc.num_nextn_predict_layers = 0;
    model = std::make_unique<Model<float>>(mc, PrecisionPolicy{});
    model->init(1234);
    what = config + " (random weights)";
  }
  const ModelConfig& mc = model->config();
  if (prompt_tokens < 1 || prompt_tokens > mc.max_seq_len) usage("--prompt-tokens out of range");
  Decoder<float> dec(*model, mc.max_seq_len);
  std::vector<int32_t> prompt(static_cast<size_t>(prompt_tokens));
  for (int64_t i = 0; i < prompt_tokens; ++i)
    prompt[i] = static_cast<int32_t>((i * 7919 + 1) % mc.vocab_size);

  std::printf("bench_generate: %s, %lld parameters in the main model, context %lld\n", what.c_str(),
              static_cast<long long>(model->params().numel()),
              static_cast<long long>(mc.max_seq_len));
  std::printf("%lld greedy tokens after a %lld-token prompt; median of %lld runs\n\n",
              static_cast<long long>(tokens), static_cast<long long>(prompt_tokens),
              static_cast<long long>(repeats));
  // agreement: greedy tokens of both paths, and the logits of every position of the cached run
  // against the uncached forward of the same prefix (within the context)
  {
    kernels::set_num_threads(threads.empty() ? 1 : threads[0]);
    GenerateOptions o;
    o.max_tokens = tokens, o.temperature = 0;
    const auto a = generate(dec, prompt, o, -1, [](int32_t) {});
    o.cache = false;
    const auto b = generate(dec, prompt, o, -1, [](int32_t) {});
    std::vector<int32_t> seq = prompt;
    seq.insert(seq.end(), a.begin(), a.end());
    const int64_t n = std::min<int64_t>(static_cast<int64_t>(seq.size()), mc.max_seq_len);
    const int64_t V = mc.vocab_size;
    Decoder<float> ref(*model, mc.max_seq_len);
    dec.reset();
    std::vector<float> x(static_cast<size_t>(n * V)), y(static_cast<size_t>(n * V));
    const float* l = dec.forward(seq.data(), prompt_tokens);
    kernels::copy_to_host(model->exec(), x.data(), l, sizeof(float) * prompt_tokens * V);
    for (int64_t t = prompt_tokens; t < n; ++t)
      kernels::copy_to_host(model->exec(), x.data() + t * V, dec.forward(&seq[t], 1),
                            sizeof(float) * V);
    kernels::copy_to_host(model->exec(), y.data(), ref.forward_uncached(seq.data(), n),
                          sizeof(float) * n * V);
    double d = 0, m = 0;
    for (int64_t i = 0; i < n * V; ++i)
      d = std::max(d, static_cast<double>(std::abs(x[i] - y[i]))),
      m = std::max(m, static_cast<double>(std::abs(y[i])));
    int64_t same = 0;
    while (same < tokens && a[same] == b[same]) ++same;
    std::printf(
        "cached vs uncached: the first %lld of %lld greedy tokens equal; logits of %lld "
        "positions: max |difference| %.3g (%.3g of the largest logit)\n\n",
        static_cast<long long>(same), static_cast<long long>(tokens), static_cast<long long>(n), d,
        d / m);
  }
  std::printf(
      "| threads | path | seconds | tokens/s | ms/token | first run, seconds |\n"
      "|---:|---|---:|---:|---:|---:|\n");
  for (int t : threads) {
    kernels::set_num_threads(t);
    for (bool cache : {true, false}) {
      if (!cache && !uncached) continue;
      GenerateOptions o;
      o.max_tokens = tokens, o.temperature = 0, o.cache = cache;
      // run 0 warms up (GEMM primitives, page faults); uncached: one timed run (it is slow)
      const int64_t runs = cache ? repeats : 1;
      std::vector<double> secs;
      double cold = 0;
      for (int64_t r = 0; r <= runs; ++r) {
        const auto t0 = Clock::now();
        const auto out = generate(dec, prompt, o, /*stop=*/-1, [](int32_t) {});
        const double s = std::chrono::duration<double>(Clock::now() - t0).count();
        if (static_cast<int64_t>(out.size()) != tokens) usage("generated a wrong token count");
        if (r > 0) secs.push_back(s);
        if (r == 0) cold = s;
      }
      const double s = median(secs);
      std::printf("| %d | %s | %.3f | %.0f | %.2f | %.3f |\n", t,
                  cache ? "latent cache" : "no cache (whole context per token)", s,
                  static_cast<double>(tokens) / s, 1e3 * s / static_cast<double>(tokens), cold);
      std::fflush(stdout);
    }
  }
  return 0;
}
