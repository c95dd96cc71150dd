// Helpers shared by the data-pipeline tests (tests/test_data_pipeline_*.cpp): TempDir and
// expect_data_error (tests/test_data_util.h), and small shard sets whose token at
// stream offset t is a known function of t, so any window can be checked without a reference
// copy of the data.
#pragma once

#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "data/shard_writer.h"
#include "data/token_file.h"
#include "tests/test_data_util.h"

namespace moetron::data::pipeline_test {

namespace fs = std::filesystem;

using test_util::expect_data_error;
using test_util::TempDir;

inline void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
}

constexpr int64_t kVocab = 1000;
constexpr const char* kTok = "test-tok-v1";

// Token at stream offset t of test source `tag`: distinct per (tag, t mod 997).
inline uint32_t token_at(int tag, int64_t t) {
  return static_cast<uint32_t>((t * 7 + tag * 101) % 997);
}

// Writes a source of n_tokens tokens (token_at(tag, t)) as shards of `per_shard` tokens, cut
// into documents of `doc_len` tokens (last one shorter), via ShardWriter; returns the index path.
inline std::string make_source(const TempDir& dir, const std::string& name, int tag,
                               int64_t n_tokens, int64_t per_shard, int64_t doc_len) {
  ShardWriter w(dir.file(name), per_shard, kVocab, kTok, name);
  for (int64_t t = 0; t < n_tokens; t += doc_len) {
    std::vector<uint32_t> doc;
    for (int64_t u = t; u < std::min(n_tokens, t + doc_len); ++u) doc.push_back(token_at(tag, u));
    w.add(doc);
  }
  w.finish();
  return w.index_path();
}

}  // namespace moetron::data::pipeline_test
