// Parameter initialisation: seconds for Model::init of a config's model (the main model and its
// MTP layers) per host thread count. Model::init draws every parameter from its own seeded
// generator, in parallel over the parameters (model/param.h ParallelInit); one thread is how it
// drew before, one parameter after the other. Each row also prints a hash of every parameter's
// bytes: the rows must agree (the bench exits 1 otherwise), since the thread count may change
// only the time.
//
// Usage: bench_init [--config configs/deepseek-v3-mid.yaml] [--layers N] [--threads 1,2]
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "kernels/ops.h"
#include "model/model.h"
#include "trainer/config.h"

using namespace moetron;

namespace {

[[noreturn]] void usage(const std::string& msg) {
  std::fprintf(stderr,
               "bench_init: %s\nusage: bench_init [--config FILE] [--layers N] [--threads 1,2]\n",
               msg.c_str());
  std::exit(2);
}

// FNV-1a over every parameter's value bytes, in registration order.
uint64_t params_hash(const Model<float>& m) {
  uint64_t h = 1469598103934665603ull;
  std::vector<float> v;
  for (const auto& p : m.params().all()) {
    v.resize(static_cast<size_t>(p->numel()));
    values_to_host(*p, 0, p->numel(), v.data(), false);
    const auto* b = reinterpret_cast<const unsigned char*>(v.data());
    for (size_t i = 0; i < v.size() * sizeof(float); ++i) h = (h ^ b[i]) * 1099511628211ull;
  }
  return h;
}

}  // namespace

int main(int argc, char** argv) {
  std::string config = "configs/deepseek-v3-mid.yaml";
  int64_t layers = 3;
  std::vector<int> threads = {1, 2};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    auto value = [&]() -> std::string {
      if (i + 1 >= argc) usage(a + " needs a value");
      return argv[++i];
    };
    if (a == "--config") {
      config = value();
    } else if (a == "--layers") {
      layers = std::stoll(value());
    } else if (a == "--threads") {
      threads.clear();
      std::stringstream ss(value());
      for (std::string t; std::getline(ss, t, ',');) threads.push_back(std::stoi(t));
    } else {
      usage("unknown argument " + a);
    }
  }
  ModelConfig mc = load_config(config).model;
  if (layers > 0) mc.num_hidden_layers = layers;
  auto model = std::make_unique<Model<float>>(mc, PrecisionPolicy{});
  const double n = static_cast<double>(model->params().numel());
  std::printf("bench_init: %s with %lld layers (+%lld MTP): %.3fG parameters in %zu tensors\n\n",
              config.c_str(), static_cast<long long>(mc.num_hidden_layers),
              static_cast<long long>(mc.num_nextn_predict_layers), n / 1e9,
              model->params().all().size());
  std::printf("| host threads | seconds | M values/s | parameter hash |\n|---:|---:|---:|---|\n");
  uint64_t first = 0;
  bool same = true;
  for (size_t i = 0; i < threads.size(); ++i) {
    kernels::set_num_threads(threads[i]);
    const auto t0 = std::chrono::steady_clock::now();
    model->init(1234);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const uint64_t h = params_hash(*model);
    if (i == 0) first = h;
    same &= h == first;
    std::printf("| %d | %.2f | %.1f | %016llx |\n", threads[i], s, n / s / 1e6,
                static_cast<unsigned long long>(h));
    std::fflush(stdout);
  }
  std::printf("\nthe same bits at every thread count: %s\n", same ? "yes" : "NO");
  return same ? 0 : 1;
}
