// Byte-level BPE benchmark (data/bpe.h): training time and encode throughput on a text corpus.
//
//   bench_tokenizer [--vocab N]... [CORPUS...]   (default: vocab 8192 and 32768; corpus
//                                 data/cache/sotu/raw from the repo root, see
//                                 scripts/fetch_sotu.sh)
//
// For each vocab size: trains on the whole corpus (pre-token counting included),
// then encodes every document with encode_batch at 1 and 2 threads, each on cold caches (a
// fresh tokenizer instance, loaded from the saved JSON), and reports MB/s in total and per
// thread, plus bytes per token. Prints one line per measurement.
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <string>
#include <vector>

#include "data/bpe.h"
#include "data/corpus.h"

namespace {

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

int main(int argc, char** argv) {
  using namespace moetron::data;
  std::vector<std::string> inputs;
  std::vector<int64_t> vocabs;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--vocab" && i + 1 < argc)
      vocabs.push_back(std::stoll(argv[++i]));
    else
      inputs.push_back(a);
  }
  if (vocabs.empty()) vocabs = {8192, 32768};
  if (inputs.empty()) inputs.push_back("data/cache/sotu/raw");  // run from the repo root
  try {
    Corpus corpus(inputs);
    std::vector<std::string> docs;
    Document d;
    size_t bytes = 0;
    while (corpus.next(&d)) {
      bytes += d.text.size();
      docs.push_back(std::move(d.text));
    }
    std::printf("corpus: %zu documents, %.2f MB (%s)\n", docs.size(), bytes / 1e6,
                inputs[0].c_str());
    const std::string tmp =
        (std::filesystem::temp_directory_path() / "bench_tokenizer.json").string();
    for (int64_t vocab : vocabs) {
      BpeTrainOptions o;
      o.vocab_size = vocab;
      const double t0 = now_s();
      const BpeTokenizer tok = BpeTokenizer::train(docs, o);
      const double train_s = now_s() - t0;
      std::printf("vocab %6lld: train %.2f s (%lld merges)\n", static_cast<long long>(vocab),
                  train_s, static_cast<long long>(tok.n_merges()));
      tok.save(tmp);
      for (int threads : {1, 2}) {
        const BpeTokenizer fresh = BpeTokenizer::load(tmp);  // cold caches
        const double t1 = now_s();
        const auto ids = fresh.encode_batch(docs, threads);
        const double enc_s = now_s() - t1;
        size_t n = 0;
        for (const auto& v : ids) n += v.size();
        std::printf(
            "vocab %6lld: encode %d thread%s %.1f MB/s total, %.1f MB/s per thread, "
            "%.3f bytes/token\n",
            static_cast<long long>(vocab), threads, threads > 1 ? "s" : "", bytes / 1e6 / enc_s,
            bytes / 1e6 / enc_s / threads, static_cast<double>(bytes) / static_cast<double>(n));
      }
    }
    std::filesystem::remove(tmp);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "bench_tokenizer: %s\n", e.what());
    return 1;
  }
  return 0;
}
