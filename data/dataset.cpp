// The dataset (see dataset.h): opening and validating the sources' shards, locating a global
// sample, reading windows across shard boundaries, and cutting training and evaluation batches.
//
// Construction checks everything it can up front: each source's shards (index files expanded)
// are opened once to validate their layout, index counts, tokenizer and vocab size, then closed.
// Afterwards shards are opened lazily through a small LRU; document starts are read from a
// shard's doc_offsets the first time a window in it asks for them and kept while it is open.
#include "data/dataset.h"

#include <algorithm>
#include <limits>
#include <stdexcept>
#include <utility>

#include "data/sampler.h"
#include "data/shard_writer.h"

namespace moetron::data {

namespace {

bool ends_with(const std::string& s, const char* suffix) {
  const size_t n = std::char_traits<char>::length(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

void need(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

void need_dp_rank(int64_t dp, int64_t dp_rank) {
  need(dp >= 1 && dp_rank >= 0 && dp_rank < dp,
       "dataset: bad DP rank " + std::to_string(dp_rank) + " of " + std::to_string(dp));
}

void check_options(const DatasetOptions& o, const std::vector<SourceSpec>& specs) {
  if (o.seq_len < 1) {
    throw DataError("dataset: seq_len must be >= 1, got " + std::to_string(o.seq_len));
  }
  if (o.max_open_shards < 1) {
    throw DataError("dataset: max_open_shards must be >= 1, got " +
                    std::to_string(o.max_open_shards));
  }
  if (specs.empty()) throw DataError("dataset: no sources");
}

// Names the unnamed sources (their first path, else "source s") and blends them by weight.
std::unique_ptr<Blender> name_and_blend(std::vector<SourceSpec>* specs) {
  std::vector<double> weights;
  std::vector<std::string> names;
  for (size_t s = 0; s < specs->size(); ++s) {
    SourceSpec& sp = (*specs)[s];
    if (sp.name.empty()) {
      sp.name = sp.paths.empty() ? "source " + std::to_string(s) : sp.paths.front();
    }
    weights.push_back(sp.weight);
    names.push_back(sp.name);
  }
  return std::make_unique<Blender>(weights, names);  // checks the weights
}

// A shard as its source lists it: directly, or through an index file.
struct Listed {
  ShardEntry entry;
  std::string index;  // empty if listed directly
};

// A source's shards in stream order, index files expanded.
std::vector<Listed> list_shards(const SourceSpec& sp) {
  std::vector<Listed> listed;
  for (const std::string& p : sp.paths) {
    if (ends_with(p, ".json")) {
      for (ShardEntry& e : read_shard_index(p).shards) listed.push_back({std::move(e), p});
    } else {
      ShardEntry e;
      e.path = p;
      listed.push_back({std::move(e), ""});
    }
  }
  return listed;
}

// A shard listed by an index must have the counts the index gives.
void check_index_counts(const Listed& l, const TokenFileInfo& info) {
  if (!l.index.empty() && (info.n_tokens != l.entry.n_tokens || info.n_docs != l.entry.n_docs)) {
    throw DataError(l.entry.path + ": has " + std::to_string(info.n_tokens) + " tokens and " +
                    std::to_string(info.n_docs) + " documents but index " + l.index + " lists " +
                    std::to_string(l.entry.n_tokens) + " and " + std::to_string(l.entry.n_docs) +
                    " (stale or corrupt shard set)");
  }
}

// A batch of `rows` rows for the samples [first, first + global_batch), sized, rows zeroed.
Batch sized_batch(const DatasetOptions& o, int64_t first, int64_t global_batch, int64_t rows) {
  Batch b;
  b.seq_len = o.seq_len;
  b.first_sample = first;
  b.global_batch = global_batch;
  b.rows = rows;
  b.tokens.resize(static_cast<size_t>(b.rows * (o.seq_len + 1)));
  b.sample_index.resize(static_cast<size_t>(b.rows));
  b.source.resize(static_cast<size_t>(b.rows));
  if (o.doc_starts) b.doc_start_off.assign(static_cast<size_t>(b.rows) + 1, 0);
  return b;
}

}  // namespace

struct Dataset::Shard {
  std::string path;
  int64_t begin = 0;  // offset of its first token in its source's stream
  int64_t n_tokens = 0;
  bool continues = false;  // its first document continues the previous shard's last
};

struct Dataset::Source {
  SourceInfo info;
  size_t first_shard = 0;       // in shards_
  std::vector<int64_t> begins;  // stream offset of each of its shards
};

struct Dataset::OpenShard {
  explicit OpenShard(const std::string& path, bool continues) : file(path), continues(continues) {}
  // Local offsets of the documents that start in this shard, increasing, loaded on first use.
  const std::vector<uint64_t>& doc_starts() {
    std::lock_guard<std::mutex> lock(mu);
    if (!loaded) {
      std::vector<uint64_t> off = file.doc_offsets(0, file.info().n_docs);
      off.pop_back();  // the end of the last document
      if (continues && !off.empty()) off.erase(off.begin());
      off.erase(std::unique(off.begin(), off.end()), off.end());  // empty documents
      starts = std::move(off);
      loaded = true;
    }
    return starts;
  }

  TokenFile file;
  bool continues;
  std::mutex mu;
  bool loaded = false;
  std::vector<uint64_t> starts;
};

Dataset::Dataset(std::vector<SourceSpec> specs, DatasetOptions options) : opt_(std::move(options)) {
  check_options(opt_, specs);
  blender_ = name_and_blend(&specs);  // checks the weights before any file is opened
  std::string first_shard;            // where tokenizer_ / vocab_size_ came from
  for (size_t s = 0; s < specs.size(); ++s) add_source(specs[s], static_cast<int>(s), &first_shard);
  eval_begin_.assign(1, 0);
  for (const Source& src : sources_) eval_begin_.push_back(eval_begin_.back() + src.info.n_windows);
  open_.assign(shards_.size(), nullptr);
  last_used_.assign(shards_.size(), 0);
}

// Opens and checks source s's shards (each once) and appends it to sources_ / shards_.
void Dataset::add_source(const SourceSpec& sp, int s, std::string* first_shard) {
  if (sp.paths.empty()) throw DataError(sp.name + ": source has no shard files");
  Source src;
  src.info.name = sp.name;
  src.info.weight = sp.weight;
  src.info.effective_weight = blender_->effective_weight(s);
  src.first_shard = shards_.size();
  int64_t offset = 0;
  for (const Listed& l : list_shards(sp)) {
    TokenFile f(l.entry.path);  // validates the layout; DataError names the file
    const TokenFileInfo& info = f.info();
    check_index_counts(l, info);
    check_header(l.entry.path, info, first_shard);
    Shard sh;
    sh.path = l.entry.path;
    sh.begin = offset;
    sh.n_tokens = info.n_tokens;
    sh.continues = l.entry.continues_previous;
    if (info.n_tokens > std::numeric_limits<int64_t>::max() - offset) {
      throw DataError(sp.name + ": more than 2^63 tokens");
    }
    offset += info.n_tokens;
    src.begins.push_back(sh.begin);
    src.info.shards.push_back(sh.path);
    shards_.push_back(std::move(sh));
  }
  src.info.n_tokens = offset;
  if (offset < opt_.seq_len + 1) {
    throw DataError(
        sp.name + ": has " + std::to_string(offset) +
        " tokens, fewer than one sample of seq_len+1 = " + std::to_string(opt_.seq_len + 1));
  }
  src.info.n_windows = (offset - 1) / opt_.seq_len;
  sources_.push_back(std::move(src));
}

// The shard's tokenizer and vocab size: the expected ones, and the same as every other shard's
// (the first shard sets tokenizer_ and vocab_size_, and must fit the model and int32 ids).
void Dataset::check_header(const std::string& path, const TokenFileInfo& info,
                           std::string* first_shard) {
  if (!opt_.expected_tokenizer.empty() && info.tokenizer != opt_.expected_tokenizer) {
    throw DataError(path + ": made with tokenizer '" + info.tokenizer + "', expected '" +
                    opt_.expected_tokenizer + "'");
  }
  if (first_shard->empty()) {
    *first_shard = path;
    tokenizer_ = info.tokenizer;
    vocab_size_ = info.vocab_size;
    if (opt_.model_vocab_size > 0 && vocab_size_ > opt_.model_vocab_size) {
      throw DataError(path + ": vocab_size " + std::to_string(vocab_size_) +
                      " is larger than the model's " + std::to_string(opt_.model_vocab_size));
    }
    if (vocab_size_ > int64_t{std::numeric_limits<int32_t>::max()} + 1) {
      throw DataError(path + ": vocab_size " + std::to_string(vocab_size_) +
                      " does not fit int32 token ids");
    }
  } else if (info.tokenizer != tokenizer_) {
    throw DataError(path + ": made with tokenizer '" + info.tokenizer + "' but " + *first_shard +
                    " with '" + tokenizer_ + "'");
  } else if (info.vocab_size != vocab_size_) {
    throw DataError(path + ": vocab_size " + std::to_string(info.vocab_size) + " differs from " +
                    *first_shard + "'s " + std::to_string(vocab_size_));
  }
}

Dataset::~Dataset() {
  std::lock_guard<std::mutex> lock(cache_mu_);
  open_.clear();  // TokenFile's destructor takes hdf5_mutex()
}

int Dataset::n_sources() const { return static_cast<int>(sources_.size()); }

const SourceInfo& Dataset::source(int s) const {
  need(s >= 0 && s < n_sources(), "dataset: no source " + std::to_string(s));
  return sources_[static_cast<size_t>(s)].info;
}

std::shared_ptr<Dataset::OpenShard> Dataset::open(size_t i) const {
  std::lock_guard<std::mutex> lock(cache_mu_);
  last_used_[i] = ++clock_;
  if (open_[i] != nullptr) return open_[i];
  if (n_open_ >= opt_.max_open_shards) {
    size_t victim = i;
    uint64_t oldest = std::numeric_limits<uint64_t>::max();
    for (size_t j = 0; j < open_.size(); ++j) {
      if (open_[j] != nullptr && last_used_[j] < oldest) oldest = last_used_[j], victim = j;
    }
    open_[victim].reset();  // a reader still holding it keeps it alive
    --n_open_;
  }
  open_[i] = std::make_shared<OpenShard>(shards_[i].path, shards_[i].continues);
  ++n_open_;
  return open_[i];
}

SampleLocation Dataset::locate(int64_t i) const {
  if (i < 0) {
    throw std::invalid_argument("dataset: sample index must be >= 0, got " + std::to_string(i));
  }
  const auto [s, k] = blender_->locate(i);
  const int64_t w = sources_[static_cast<size_t>(s)].info.n_windows;
  SampleLocation loc;
  loc.source = s;
  loc.epoch = k / w;
  const int64_t r = k % w;
  loc.window = opt_.shuffle ? static_cast<int64_t>(FeistelPermutation(
                                  static_cast<uint64_t>(w),
                                  epoch_key(opt_.seed, s, loc.epoch))(static_cast<uint64_t>(r)))
                            : r;
  loc.offset = loc.window * opt_.seq_len;
  return loc;
}

void Dataset::read_window(const Source& src, int64_t offset, int32_t* out,
                          std::vector<int32_t>* doc_starts) const {
  const int64_t n = opt_.seq_len + 1;
  size_t k = static_cast<size_t>(std::upper_bound(src.begins.begin(), src.begins.end(), offset) -
                                 src.begins.begin() - 1);
  int64_t done = 0;
  while (done < n) {
    const size_t idx = src.first_shard + k;
    const Shard& sh = shards_[idx];
    const int64_t local = offset + done - sh.begin;
    const int64_t m = std::min(n - done, sh.n_tokens - local);
    if (m > 0) {
      const std::shared_ptr<OpenShard> f = open(idx);
      // int32 and uint32 may alias; ids are below vocab_size <= 2^31
      f->file.read(local, m, reinterpret_cast<uint32_t*>(out + done));
      if (doc_starts != nullptr) {
        const std::vector<uint64_t>& st = f->doc_starts();
        auto it = std::lower_bound(st.begin(), st.end(), static_cast<uint64_t>(local));
        for (; it != st.end() && *it < static_cast<uint64_t>(local + m); ++it) {
          doc_starts->push_back(static_cast<int32_t>(done + static_cast<int64_t>(*it) - local));
        }
      }
      done += m;
    }
    ++k;
  }
}

void Dataset::read_sample(int64_t i, int32_t* out, std::vector<int32_t>* doc_starts) const {
  const SampleLocation loc = locate(i);
  read_window(sources_[static_cast<size_t>(loc.source)], loc.offset, out, doc_starts);
}

void Dataset::fill_row(Batch* b, int64_t r, int source, int64_t offset) const {
  b->source[static_cast<size_t>(r)] = source;
  std::vector<int32_t>* starts = opt_.doc_starts ? &b->doc_start_pos : nullptr;
  read_window(sources_[static_cast<size_t>(source)], offset, b->row(r), starts);
  if (opt_.doc_starts) {
    b->doc_start_off[static_cast<size_t>(r) + 1] = static_cast<int64_t>(b->doc_start_pos.size());
  }
}

Batch Dataset::batch(int64_t first, int64_t global_batch, int64_t dp, int64_t dp_rank) const {
  need(first >= 0, "dataset: first sample must be >= 0, got " + std::to_string(first));
  need(global_batch >= 1,
       "dataset: global batch must be >= 1, got " + std::to_string(global_batch));
  need_dp_rank(dp, dp_rank);
  need(global_batch % dp == 0, "dataset: global batch " + std::to_string(global_batch) +
                                   " is not a multiple of dp " + std::to_string(dp));
  need(first <= std::numeric_limits<int64_t>::max() - global_batch,
       "dataset: sample index overflows int64");
  Batch b = sized_batch(opt_, first, global_batch, global_batch / dp);
  for (int64_t r = 0; r < b.rows; ++r) {
    const int64_t idx = first + r * dp + dp_rank;
    const SampleLocation loc = locate(idx);
    b.sample_index[static_cast<size_t>(r)] = idx;
    fill_row(&b, r, loc.source, loc.offset);
  }
  return b;
}

int64_t Dataset::n_eval_batches(int64_t global_batch) const {
  need(global_batch >= 1,
       "dataset: global batch must be >= 1, got " + std::to_string(global_batch));
  return (n_eval_samples() + global_batch - 1) / global_batch;
}

Batch Dataset::eval_batch(int64_t bi, int64_t global_batch, int64_t dp, int64_t dp_rank) const {
  const int64_t nb = n_eval_batches(global_batch);
  need(bi >= 0 && bi < nb, "dataset: eval batch " + std::to_string(bi) + " out of range [0, " +
                               std::to_string(nb) + ")");
  need_dp_rank(dp, dp_rank);
  const int64_t begin = bi * global_batch;
  const int64_t end = std::min(begin + global_batch, n_eval_samples());
  const int64_t rows = end - begin > dp_rank ? (end - begin - dp_rank + dp - 1) / dp : 0;
  Batch b = sized_batch(opt_, begin, end - begin, rows);
  for (int64_t r = 0; r < b.rows; ++r) {
    const int64_t e = begin + r * dp + dp_rank;
    const int s = static_cast<int>(std::upper_bound(eval_begin_.begin(), eval_begin_.end(), e) -
                                   eval_begin_.begin() - 1);
    b.sample_index[static_cast<size_t>(r)] = e;
    fill_row(&b, r, s, (e - eval_begin_[static_cast<size_t>(s)]) * opt_.seq_len);
  }
  return b;
}

}  // namespace moetron::data
