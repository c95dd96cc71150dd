// Shard writer: streams tokenized documents into a numbered set of HDF5 token files plus an index.
//
// ShardWriter(prefix, max_tokens_per_shard, ...) takes documents one at a time and writes
// `<prefix>_00000.h5`, `<prefix>_00001.h5`, ... in the token-file format (data/token_file.h:
// "tokens" uint32 chunked+deflate, "doc_offsets" uint64, attributes tokenizer / vocab_size /
// source / n_docs / n_tokens). A shard is written as soon as the next document would not fit,
// so memory stays bounded by one shard. A document is never split across shards unless it alone
// is longer than max_tokens_per_shard; then it is cut into pieces of exactly max_tokens_per_shard
// tokens (each a full shard) and a remainder that starts the next shard, and every shard that
// begins with such a continuation is marked `continues_previous` in the index (so the dataset
// does not report a document start there). Each shard is written atomically (tmp + rename, by
// write_token_file); the index `<prefix>.index.json` is written last, also atomically, and an
// index left by an earlier run under the same prefix is deleted first: a set of shards has an
// index only when it is complete. All counts are 64-bit.
//
// Index file (JSON, format "moetron-shards-v1"):
//   {"format": "moetron-shards-v1", "tokenizer": T, "vocab_size": V, "source": S,
//    "max_tokens_per_shard": M, "n_tokens": total tokens, "n_docs": documents added,
//    "split_docs": documents that were cut, "shards": [{"file": "<name>.h5" (relative to the
//    index's directory), "n_tokens": ..., "n_docs": entries in its doc_offsets,
//    "continues_previous": bool}, ...]}
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "data/token_file.h"

namespace moetron::data {

class Corpus;

struct ShardEntry {
  std::string path;  // as written (writer) or resolved against the index's directory (reader)
  int64_t n_tokens = 0;
  int64_t n_docs = 0;               // documents (or document pieces) in this shard
  bool continues_previous = false;  // its first document continues the previous shard's last
};

struct ShardIndex {
  std::string tokenizer;
  int64_t vocab_size = 0;
  std::string source;
  int64_t max_tokens_per_shard = 0;
  int64_t n_tokens = 0;    // sum over shards
  int64_t n_docs = 0;      // documents given to the writer (a split document counts once)
  int64_t split_docs = 0;  // documents longer than a shard, cut into pieces
  std::vector<ShardEntry> shards;
};

class ShardWriter {
 public:
  // Throws DataError if out_prefix is empty or its directory does not exist, max_tokens_per_shard
  // < 1, vocab_size not in [1, 2^32], or tokenizer is empty. Deletes `<prefix>.index.json` if it
  // exists (see the note at the top).
  ShardWriter(std::string out_prefix, int64_t max_tokens_per_shard, int64_t vocab_size,
              std::string tokenizer, std::string source);
  // Without finish(), shards already written stay but no index is written.
  ~ShardWriter() = default;
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // Appends one document (token ids exactly as they should appear, EOS included if wanted).
  // Throws DataError naming the prefix and document number if an id is not below vocab_size.
  void add(std::span<const uint32_t> doc);
  // Writes the last shard and then the index; returns the index (paths as written). Throws
  // DataError if no token was added. Call once.
  ShardIndex finish();

  int64_t n_tokens() const { return n_tokens_; }
  int64_t n_docs() const { return n_docs_; }
  int64_t shards_written() const { return static_cast<int64_t>(index_.shards.size()); }
  std::string shard_path(int64_t i) const;  // `<prefix>_%05d.h5`
  std::string index_path() const { return prefix_ + ".index.json"; }

 private:
  void flush();

  std::string prefix_;
  int64_t max_tokens_;
  ShardIndex index_;
  std::vector<uint32_t> buf_;      // tokens of the shard being filled (<= max_tokens_)
  std::vector<uint64_t> offsets_;  // its doc_offsets, starting at 0
  bool buf_continues_ = false;     // its first document continues the previous shard's last
  int64_t n_tokens_ = 0, n_docs_ = 0;
  bool finished_ = false;
};

// Reads `<prefix>.index.json` (as written above) and resolves shard paths against the index's
// directory. Throws DataError naming the file on a missing file, invalid JSON, a missing or
// mistyped field, or counts that do not add up.
ShardIndex read_shard_index(const std::string& path);

// Tokenizes every document of `corpus` with `encode` (text -> ids), appends `eos` to each, feeds
// them to `writer` and returns writer.finish(). The corpus throws DataError on bad input.
ShardIndex write_corpus_shards(Corpus& corpus,
                               const std::function<std::vector<uint32_t>(std::string_view)>& encode,
                               uint32_t eos, ShardWriter& writer);

}  // namespace moetron::data
