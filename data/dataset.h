// Dataset: blended, packed, deterministic and resumable samples from token shards. The sampler
// pieces it is built on (Blender, FeistelPermutation) are in data/sampler.h; the per-step stream
// of batches a training rank reads (Loader, step_batch) is in data/loader.h.
//
// Sources. A Dataset reads one or more sources; a source is a list of token shards (.h5 files
// and/or shard index files `*.index.json`, data/shard_writer.h) read as ONE concatenated token
// stream with 64-bit offsets, in the order given. Shards carry EOS at the end of every document
// (data/byte_tokenizer.cpp and write_corpus_shards put it there), so packing documents back to
// back with separators is just reading a contiguous window of the stream; windows freely span
// document and shard boundaries (no cross-document masking, SPEC §1.2). The positions where
// documents start inside a window can be returned too (the seam for a later document mask).
//
// Windows. Source s with N_s tokens has W_s = floor((N_s - 1) / seq_len) windows; window w is
// tokens [w*seq_len, w*seq_len + seq_len + 1): consecutive windows overlap by one token, so every
// token but the first is a target exactly once per epoch.
//
// Global order. Sample i (the run's 0-based sample counter) is a pure function of (seed, i):
//   1. Blending: i -> (source s, k = how many samples source s had before i). Each block of
//      Blender::kBlock consecutive global samples holds exactly q_s samples of source s, with
//      q_s = weight_s * kBlock rounded by largest remainder (at least 1), spread through the
//      block evenly (stride scheduling), so any prefix of the order has source counts within
//      about one sample per source of weight * length. O(1), no state.
//   2. Epochs: epoch e = k / W_s, r = k % W_s. Each source wraps on its own; a new epoch of a
//      source has a new permutation.
//   3. Shuffle: window = P_{seed,s,e}(r), P a keyed Feistel bijection over [0, W_s) with
//      cycle-walking (FeistelPermutation, keyed by epoch_key), evaluated per index, never
//      materialised.
//   shuffle = false replaces P by the identity (windows in stream order).
//
// Steps and DP ranks. The trainer consumes global_batch samples per step (the batch-size
// schedule gives it): the step's samples are first + j, j in [0, global_batch), first = samples
// consumed before the step. DP rank r takes the j with j % dp == r, in increasing j (row l of
// rank r is j = l*dp + r); its micro-batch m is rows [m*micro, (m+1)*micro). The union over ranks
// of a step's samples is therefore the same for every dp, and the sampler state is a single
// 64-bit number (samples consumed, plus the seed from the config): a run resumed from any step,
// on any DP size, continues with exactly the samples the uninterrupted run would have read (the
// per-step partition is the same too as long as the global batch sizes are; the ramp rounds them
// to multiples of dp * micro, so a different DP size can cut the same sample sequence into
// slightly different steps).
//
// Evaluation. eval_batch() walks every window of every source exactly once, source by source,
// in stream order, ignoring seed, weights and shuffle: a fixed validation set.
//
// Bad input: DataError naming the file (or source) and the problem, at construction where
// possible: missing or corrupt shards (TokenFile's checks), an index whose counts disagree with a
// shard, a tokenizer other than the expected one, differing vocab sizes, a vocab larger than the
// model's, a source shorter than one sample, a weight that is not positive and finite; token ids
// not below vocab_size are caught when read.
//
// Threads: Dataset's const methods may be called from several threads (the Loader's prefetch
// thread and the trainer); HDF5 reads are serialised by hdf5_mutex().
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "data/token_file.h"

namespace moetron::data {

class Blender;  // data/sampler.h

struct SourceSpec {
  std::string name;                // for messages; empty: the first path
  std::vector<std::string> paths;  // .h5 shards and/or *.index.json files, in stream order
  double weight = 1.0;             // blending weight, > 0 (normalised over the sources)
};

struct DatasetOptions {
  int64_t seq_len = 0;  // a sample is seq_len + 1 tokens (inputs [0, L), targets [1, L])
  uint64_t seed = 0;
  bool shuffle = true;             // false: windows in stream order (e.g. a validation set)
  std::string expected_tokenizer;  // every shard's "tokenizer" must equal it; empty: all agree
  int64_t model_vocab_size = 0;    // > 0: every shard's vocab_size must be <= it
  bool doc_starts = false;         // fill Batch::doc_start_* (loads shards' doc_offsets)
  int max_open_shards = 64;        // HDF5 files kept open (LRU); all are validated up front
};

// Where a global sample comes from.
struct SampleLocation {
  int source = 0;
  int64_t epoch = 0;   // of that source
  int64_t window = 0;  // window index in the source's stream
  int64_t offset = 0;  // = window * seq_len: first token in the source's stream
};

// One step's samples for one DP rank (or one evaluation batch for one rank).
struct Batch {
  int64_t seq_len = 0;
  int64_t first_sample = 0;     // global index of the step's first sample (samples consumed before)
  int64_t global_batch = 0;     // samples in the step over all ranks
  int64_t rows = 0;             // samples for this rank
  std::vector<int32_t> tokens;  // [rows, seq_len + 1], row-major
  std::vector<int64_t> sample_index;  // [rows]: global (or eval) sample index of each row
  std::vector<int32_t> source;        // [rows]: source of each row
  // Only with DatasetOptions::doc_starts: row r's document starts (positions p in
  // [0, seq_len] where a document begins at token p; 0 only if the window starts on a document
  // start) are doc_start_pos[doc_start_off[r] .. doc_start_off[r + 1]).
  std::vector<int64_t> doc_start_off;  // [rows + 1]
  std::vector<int32_t> doc_start_pos;

  const int32_t* row(int64_t r) const { return tokens.data() + r * (seq_len + 1); }
  int32_t* row(int64_t r) { return tokens.data() + r * (seq_len + 1); }
};

struct SourceInfo {
  std::string name;
  double weight = 0;            // as given
  double effective_weight = 0;  // q_s / kBlock
  int64_t n_tokens = 0;
  int64_t n_windows = 0;
  std::vector<std::string> shards;
};

class Dataset {
 public:
  Dataset(std::vector<SourceSpec> sources, DatasetOptions options);
  ~Dataset();
  Dataset(const Dataset&) = delete;
  Dataset& operator=(const Dataset&) = delete;

  int64_t seq_len() const { return opt_.seq_len; }
  uint64_t seed() const { return opt_.seed; }
  int n_sources() const;
  const SourceInfo& source(int s) const;
  const std::string& tokenizer() const { return tokenizer_; }
  int64_t vocab_size() const { return vocab_size_; }

  SampleLocation locate(int64_t global_index) const;
  // The seq_len + 1 tokens of global sample i into out; document starts appended to
  // *doc_starts if it is not null.
  void read_sample(int64_t global_index, int32_t* out, std::vector<int32_t>* doc_starts) const;
  // The step starting at global sample `first_sample` with `global_batch` samples, DP rank
  // `dp_rank` of `dp` (global_batch % dp == 0). Throws std::invalid_argument on bad arguments.
  Batch batch(int64_t first_sample, int64_t global_batch, int64_t dp, int64_t dp_rank) const;

  // Evaluation: every window of every source once, in order (see the note at the top).
  int64_t n_eval_samples() const { return eval_begin_.back(); }
  int64_t n_eval_batches(int64_t global_batch) const;
  // Batch b of n_eval_batches(): eval samples [b*G, min((b+1)*G, n)), this rank's j % dp == r.
  // The last batch may be short and ranks may get different row counts (even 0): weight the
  // loss by rows when reducing over ranks.
  Batch eval_batch(int64_t b, int64_t global_batch, int64_t dp, int64_t dp_rank) const;

 private:
  struct Shard;
  struct Source;
  struct OpenShard;
  void add_source(const SourceSpec& spec, int s, std::string* first_shard);
  void check_header(const std::string& path, const TokenFileInfo& info, std::string* first_shard);
  std::shared_ptr<OpenShard> open(size_t shard) const;
  void read_window(const Source& src, int64_t offset, int32_t* out,
                   std::vector<int32_t>* doc_starts) const;
  void fill_row(Batch* b, int64_t r, int source, int64_t offset) const;

  DatasetOptions opt_;
  std::vector<Source> sources_;
  std::vector<Shard> shards_;  // all sources' shards
  std::unique_ptr<Blender> blender_;
  std::vector<int64_t> eval_begin_;  // [n_sources + 1]: first eval index of each source
  std::string tokenizer_;
  int64_t vocab_size_ = 0;

  mutable std::mutex cache_mu_;                           // guards the LRU of open shards below
  mutable std::vector<std::shared_ptr<OpenShard>> open_;  // [shards], null if closed
  mutable std::vector<uint64_t> last_used_;
  mutable uint64_t clock_ = 0;
  mutable int n_open_ = 0;
};

}  // namespace moetron::data
