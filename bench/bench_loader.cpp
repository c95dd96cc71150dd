// Data-loader throughput: tokens/s per DP rank with random (shuffled) access over token shards,
// with and without the prefetch thread, and how long a training step waits for its batch when
// training consumes tokens at a given rate.
//
// It first writes shards from the State of the Union texts (data/cache/sotu/raw/*.txt, see
// scripts/fetch_sotu.sh) with the corpus reader, the byte tokenizer and the shard writer into a
// temporary directory, then, per sequence length, runs the Loader of DP rank 0 of --dp ranks:
//   raw:       next() in a tight loop (prefetch 0 = the loader's own cost; prefetch K = the
//              consumer drains the queue as fast as the thread fills it)
//   simulated: next() followed by a sleep of (rows * seq_len / --consume-tps) seconds (the
//              training step); reports the mean time next() blocked per step.
//
// Usage: bench_loader [--raw DIR] [--shard-tokens N] [--dp N] [--batch N] [--steps N]
//                     [--consume-tps X] [--prefetch K] [--seq-lens 128,4096]
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "data/byte_tokenizer.h"
#include "data/corpus.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "data/shard_writer.h"

namespace fs = std::filesystem;
using moetron::data::Batch;
using moetron::data::BatchSchedule;
using moetron::data::ByteTokenizer;
using moetron::data::Corpus;
using moetron::data::Dataset;
using moetron::data::DatasetOptions;
using moetron::data::Loader;
using moetron::data::ShardIndex;
using moetron::data::ShardWriter;
using Clock = std::chrono::steady_clock;

namespace {

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

struct Result {
  double tokens_per_s = 0;
  double wait_ms = 0;  // mean blocked time per step (simulated runs)
};

// steps steps of rank 0; if step_s > 0, sleeps that long after each batch (the training step).
Result run(const Dataset& d, const BatchSchedule& s, int64_t dp, int prefetch, int64_t steps,
           double step_s) {
  Loader loader(d, s, {dp, 0, prefetch});
  // a training run starts with model setup: let the queue fill as it would then
  if (prefetch > 0 && step_s > 0) std::this_thread::sleep_for(std::chrono::milliseconds(200));
  int64_t tokens = 0;
  double waited = 0;
  const auto t0 = Clock::now();
  for (int64_t k = 0; k < steps; ++k) {
    const auto w0 = Clock::now();
    const Batch b = loader.next();
    waited += seconds_since(w0);
    tokens += b.rows * b.seq_len;
    if (step_s > 0) std::this_thread::sleep_for(std::chrono::duration<double>(step_s));
  }
  Result r;
  r.tokens_per_s = static_cast<double>(tokens) / seconds_since(t0);
  r.wait_ms = 1e3 * waited / static_cast<double>(steps);
  return r;
}

}  // namespace

int main(int argc, char** argv) {
  std::string raw = "data/cache/sotu/raw";
  int64_t shard_tokens = 1'000'000, dp = 1, batch = 16, steps = 100, prefetch = 4;
  double consume_tps = 4300;
  std::vector<int64_t> seq_lens = {128, 4096};
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string a = argv[i], v = argv[i + 1];
    if (a == "--raw") {
      raw = v;
    } else if (a == "--shard-tokens") {
      shard_tokens = std::stoll(v);
    } else if (a == "--dp") {
      dp = std::stoll(v);
    } else if (a == "--batch") {
      batch = std::stoll(v);
    } else if (a == "--steps") {
      steps = std::stoll(v);
    } else if (a == "--prefetch") {
      prefetch = std::stoll(v);
    } else if (a == "--consume-tps") {
      consume_tps = std::stod(v);
    } else if (a == "--seq-lens") {
      seq_lens.clear();
      size_t p = 0;
      while (p < v.size()) {
        const size_t c = v.find(',', p);
        seq_lens.push_back(std::stoll(v.substr(p, c - p)));
        p = c == std::string::npos ? v.size() : c + 1;
      }
    } else {
      std::fprintf(stderr, "bench_loader: unknown option %s\n", a.c_str());
      return 2;
    }
  }
  try {
    const fs::path tmp = fs::temp_directory_path() / ("bench_loader_" + std::to_string(::getpid()));
    fs::create_directories(tmp);
    // 1. shards from the raw texts
    auto t0 = Clock::now();
    Corpus corpus({raw});
    ShardWriter writer((tmp / "sotu").string(), shard_tokens, ByteTokenizer::kVocabSize,
                       ByteTokenizer::kName, raw);
    const ByteTokenizer tok;
    const ShardIndex idx = moetron::data::write_corpus_shards(
        corpus, [&](std::string_view t) { return tok.encode(std::string(t)); }, ByteTokenizer::kEos,
        writer);
    const double write_s = seconds_since(t0);
    std::printf(
        "shards: %lld documents, %lld tokens, %zu shards of <= %lld tokens, written in "
        "%.2f s (%.1f M tokens/s)\n",
        static_cast<long long>(idx.n_docs), static_cast<long long>(idx.n_tokens), idx.shards.size(),
        static_cast<long long>(shard_tokens), write_s,
        static_cast<double>(idx.n_tokens) / write_s / 1e6);
    std::printf(
        "dp %lld, rank 0, global batch %lld sequences (%lld per rank), %lld steps, "
        "prefetch %lld, simulated training at %.0f tokens/s per rank\n\n",
        static_cast<long long>(dp), static_cast<long long>(batch),
        static_cast<long long>(batch / dp), static_cast<long long>(steps),
        static_cast<long long>(prefetch), consume_tps);
    std::printf(
        "| seq_len | rows/rank | no prefetch, every read decompresses | no prefetch | "
        "prefetch %lld (drained) | wait/step, no prefetch | wait/step, prefetch %lld | "
        "simulated step |\n",
        static_cast<long long>(prefetch), static_cast<long long>(prefetch));
    std::printf("|---:|---:|---:|---:|---:|---:|---:|---:|\n");
    for (int64_t L : seq_lens) {
      // a fresh dataset per run: every run starts with cold HDF5 chunk caches
      auto dataset = [&](int max_open) {
        DatasetOptions o;
        o.seq_len = L;
        o.seed = 1234;
        o.expected_tokenizer = ByteTokenizer::kName;
        o.max_open_shards = max_open;
        return std::make_unique<Dataset>(
            std::vector<moetron::data::SourceSpec>{{"sotu", {writer.index_path()}, 1.0}}, o);
      };
      const BatchSchedule s = BatchSchedule::constant(batch, L, dp, 1);
      const int64_t rows = batch / dp;
      const double step_s = static_cast<double>(rows * L) / consume_tps;
      // max_open_shards 1 over 12 shards: nearly every window reopens its file, so every read
      // decompresses a 64K-token chunk (what a corpus far larger than the caches costs)
      const Result cold = run(*dataset(1), s, dp, 0, steps, 0);
      const Result sync = run(*dataset(64), s, dp, 0, steps, 0);
      const Result pre = run(*dataset(64), s, dp, static_cast<int>(prefetch), steps, 0);
      std::printf("| %lld | %lld | %.0f | %.0f | %.0f |", static_cast<long long>(L),
                  static_cast<long long>(rows), cold.tokens_per_s, sync.tokens_per_s,
                  pre.tokens_per_s);
      if (step_s <= 2.0) {  // the simulated training run: at most ~10 s per variant
        const int64_t sim_steps =
            std::max<int64_t>(3, std::min<int64_t>(steps, static_cast<int64_t>(10.0 / step_s)));
        const Result sim0 = run(*dataset(1), s, dp, 0, sim_steps, step_s);
        const Result simk = run(*dataset(1), s, dp, static_cast<int>(prefetch), sim_steps, step_s);
        std::printf(" %.2f ms | %.3f ms | %.0f ms |\n", sim0.wait_ms, simk.wait_ms, step_s * 1e3);
      } else {
        std::printf(" - | - | %.0f ms (not run) |\n", step_s * 1e3);
      }
    }
    fs::remove_all(tmp);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_loader: %s\n", e.what());
    return 1;
  }
  return 0;
}
