// Dataset, Feistel permutation, blender and prefetching loader (see dataset.h).
//
// Determinism: every number that decides which tokens a sample holds is integer arithmetic with
// fixed widths (splitmix64 mixing, Feistel rounds, block positions), except the blend quotas,
// which come from the weights through one division and a multiplication by kBlock = 2^16 (exact,
// so FMA contraction cannot change them). Shards are opened lazily through a small LRU (the
// whole set is opened once at construction to validate it); document starts are read from a
// shard's doc_offsets the first time a window in it asks for them and kept while the shard is
// open.
#include "data/dataset.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>
#include <stdexcept>

#include "data/shard_writer.h"

namespace moetron::data {

namespace {

constexpr uint64_t kGolden = 0x9E3779B97F4A7C15ull;

uint64_t splitmix64(uint64_t x) {
  x += kGolden;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// The permutation key of (seed, source, epoch).
uint64_t epoch_key(uint64_t seed, int source, int64_t epoch) {
  uint64_t k = splitmix64(seed);
  k = splitmix64(k ^ static_cast<uint64_t>(source));
  return splitmix64(k ^ static_cast<uint64_t>(epoch));
}

bool ends_with(const std::string& s, const char* suffix) {
  const size_t n = std::char_traits<char>::length(suffix);
  return s.size() >= n && s.compare(s.size() - n, n, suffix) == 0;
}

void need(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

}  // namespace

// ---------------------------------------------------------------- FeistelPermutation

FeistelPermutation::FeistelPermutation(uint64_t n, uint64_t key) : n_(n) {
  if (n_ <= 1) return;
  unsigned bits = 64 - static_cast<unsigned>(__builtin_clzll(n_ - 1));  // bits of n-1
  bits = std::max(bits, 2u);
  bits += bits & 1u;
  half_bits_ = bits / 2;
  mask_ = (uint64_t{1} << half_bits_) - 1;
  for (int r = 0; r < kRounds; ++r) {
    keys_[r] = splitmix64(key ^ (static_cast<uint64_t>(r + 1) * 0xD1B54A32D192ED03ull));
  }
}

uint64_t FeistelPermutation::encrypt(uint64_t x) const {
  uint64_t l = x >> half_bits_, r = x & mask_;
  for (int i = 0; i < kRounds; ++i) {
    const uint64_t f = splitmix64(r ^ keys_[i]) & mask_;
    const uint64_t nl = r;
    r = l ^ f;
    l = nl;
  }
  return (l << half_bits_) | r;
}

uint64_t FeistelPermutation::operator()(uint64_t i) const {
  // (outside [0, n) the walk could cycle among values >= n forever)
  if (i >= n_ && n_ > 0) {
    throw std::invalid_argument("FeistelPermutation: index " + std::to_string(i) + " not below " +
                                std::to_string(n_));
  }
  if (n_ <= 1) return i;
  uint64_t y = encrypt(i);
  while (y >= n_) y = encrypt(y);  // cycle-walking: stays a bijection of [0, n)
  return y;
}

// ---------------------------------------------------------------- Blender

Blender::Blender(const std::vector<double>& weights, const std::vector<std::string>& names) {
  auto name = [&](size_t s) {
    return s < names.size() && !names[s].empty() ? names[s] : "source " + std::to_string(s);
  };
  if (weights.empty()) throw DataError("dataset: no sources");
  if (weights.size() > static_cast<size_t>(kBlock)) {
    throw DataError("dataset: more than " + std::to_string(kBlock) + " sources");
  }
  double sum = 0;
  for (size_t s = 0; s < weights.size(); ++s) {
    if (!(weights[s] > 0) || !std::isfinite(weights[s])) {
      throw DataError(name(s) + ": blending weight must be positive and finite, got " +
                      std::to_string(weights[s]));
    }
    sum += weights[s];
  }
  if (!std::isfinite(sum)) throw DataError("dataset: blending weights sum to infinity");
  // Largest remainder: q_s = floor(w_s * B) plus one for the largest remainders (ties: lower s).
  const size_t n = weights.size();
  quota_.assign(n, 0);
  std::vector<double> rem(n);
  int64_t total = 0;
  for (size_t s = 0; s < n; ++s) {
    const double ideal = weights[s] / sum * static_cast<double>(kBlock);  // exact * 2^16
    quota_[s] = std::min<int64_t>(kBlock, static_cast<int64_t>(std::floor(ideal)));
    rem[s] = ideal - static_cast<double>(quota_[s]);
    total += quota_[s];
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return rem[a] > rem[b]; });
  // (the floors never add up to more than kBlock: their sum is an integer <= kBlock * (1 + eps))
  for (size_t i = 0; total < kBlock; i = (i + 1) % n, ++total) ++quota_[order[i]];
  // Every source at least once per block (taken from the largest quota, lowest index first).
  for (size_t s = 0; s < n; ++s) {
    if (quota_[s] == 0) {
      --*std::max_element(quota_.begin(), quota_.end());
      quota_[s] = 1;
    }
  }
  // Stride scheduling: the j-th item of source s sits at (j + 1/2) / q_s of the block.
  struct Item {
    uint32_t s, j;
  };
  std::vector<Item> items;
  items.reserve(kBlock);
  for (size_t s = 0; s < n; ++s) {
    for (int64_t j = 0; j < quota_[s]; ++j) {
      items.push_back({static_cast<uint32_t>(s), static_cast<uint32_t>(j)});
    }
  }
  std::sort(items.begin(), items.end(), [&](const Item& a, const Item& b) {
    // (2 a.j + 1) / q_a  <  (2 b.j + 1) / q_b, exactly (values < 2^17 * 2^16)
    const uint64_t lhs = (2 * uint64_t{a.j} + 1) * static_cast<uint64_t>(quota_[b.s]);
    const uint64_t rhs = (2 * uint64_t{b.j} + 1) * static_cast<uint64_t>(quota_[a.s]);
    return lhs != rhs ? lhs < rhs : a.s < b.s;
  });
  src_.resize(kBlock);
  rank_.resize(kBlock);
  pos_.assign(n, {});
  for (size_t p = 0; p < items.size(); ++p) {
    src_[p] = static_cast<uint16_t>(items[p].s);
    rank_[p] = items[p].j;
    pos_[items[p].s].push_back(static_cast<uint32_t>(p));
  }
}

std::pair<int, int64_t> Blender::locate(int64_t i) const {
  if (i < 0) {
    throw std::invalid_argument("Blender: sample index must be >= 0, got " + std::to_string(i));
  }
  const int64_t block = i / kBlock, p = i % kBlock;
  const int s = src_[static_cast<size_t>(p)];
  return {s, block * quota_[s] + rank_[static_cast<size_t>(p)]};
}

int64_t Blender::count_before(int s, int64_t i) const {
  if (i < 0 || s < 0 || s >= n_sources()) {
    throw std::invalid_argument("Blender: bad count_before(" + std::to_string(s) + ", " +
                                std::to_string(i) + ")");
  }
  const int64_t block = i / kBlock, p = i % kBlock;
  const auto& pos = pos_[static_cast<size_t>(s)];
  const int64_t in_block =
      std::lower_bound(pos.begin(), pos.end(), static_cast<uint32_t>(p)) - pos.begin();
  return block * quota_[static_cast<size_t>(s)] + in_block;
}

// ---------------------------------------------------------------- Dataset

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
  if (opt_.seq_len < 1) {
    throw DataError("dataset: seq_len must be >= 1, got " + std::to_string(opt_.seq_len));
  }
  if (opt_.max_open_shards < 1) {
    throw DataError("dataset: max_open_shards must be >= 1, got " +
                    std::to_string(opt_.max_open_shards));
  }
  if (specs.empty()) throw DataError("dataset: no sources");
  std::vector<double> weights;
  std::vector<std::string> names;
  for (size_t s = 0; s < specs.size(); ++s) {
    SourceSpec& sp = specs[s];
    if (sp.name.empty()) {
      sp.name = sp.paths.empty() ? "source " + std::to_string(s) : sp.paths.front();
    }
    weights.push_back(sp.weight);
    names.push_back(sp.name);
  }
  blender_ = std::make_unique<Blender>(weights, names);  // checks the weights first

  std::string first_shard;  // where tokenizer_ / vocab_size_ came from
  for (size_t s = 0; s < specs.size(); ++s) {
    const SourceSpec& sp = specs[s];
    if (sp.paths.empty()) throw DataError(sp.name + ": source has no shard files");
    Source src;
    src.info.name = sp.name;
    src.info.weight = sp.weight;
    src.info.effective_weight = blender_->effective_weight(static_cast<int>(s));
    src.first_shard = shards_.size();
    // expand index files into their shards
    struct Listed {
      ShardEntry entry;
      std::string index;  // empty if listed directly
    };
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
    int64_t offset = 0;
    for (const Listed& l : listed) {
      TokenFile f(l.entry.path);  // validates the layout; DataError names the file
      const TokenFileInfo& info = f.info();
      if (!l.index.empty() &&
          (info.n_tokens != l.entry.n_tokens || info.n_docs != l.entry.n_docs)) {
        throw DataError(l.entry.path + ": has " + std::to_string(info.n_tokens) + " tokens and " +
                        std::to_string(info.n_docs) + " documents but index " + l.index +
                        " lists " + std::to_string(l.entry.n_tokens) + " and " +
                        std::to_string(l.entry.n_docs) + " (stale or corrupt shard set)");
      }
      if (!opt_.expected_tokenizer.empty() && info.tokenizer != opt_.expected_tokenizer) {
        throw DataError(l.entry.path + ": made with tokenizer '" + info.tokenizer +
                        "', expected '" + opt_.expected_tokenizer + "'");
      }
      if (first_shard.empty()) {
        first_shard = l.entry.path;
        tokenizer_ = info.tokenizer;
        vocab_size_ = info.vocab_size;
        if (opt_.model_vocab_size > 0 && vocab_size_ > opt_.model_vocab_size) {
          throw DataError(l.entry.path + ": vocab_size " + std::to_string(vocab_size_) +
                          " is larger than the model's " + std::to_string(opt_.model_vocab_size));
        }
        if (vocab_size_ > int64_t{std::numeric_limits<int32_t>::max()} + 1) {
          throw DataError(l.entry.path + ": vocab_size " + std::to_string(vocab_size_) +
                          " does not fit int32 token ids");
        }
      } else if (info.tokenizer != tokenizer_) {
        throw DataError(l.entry.path + ": made with tokenizer '" + info.tokenizer + "' but " +
                        first_shard + " with '" + tokenizer_ + "'");
      } else if (info.vocab_size != vocab_size_) {
        throw DataError(l.entry.path + ": vocab_size " + std::to_string(info.vocab_size) +
                        " differs from " + first_shard + "'s " + std::to_string(vocab_size_));
      }
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
  eval_begin_.assign(1, 0);
  for (const Source& src : sources_) eval_begin_.push_back(eval_begin_.back() + src.info.n_windows);
  open_.assign(shards_.size(), nullptr);
  last_used_.assign(shards_.size(), 0);
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
  need(dp >= 1 && dp_rank >= 0 && dp_rank < dp,
       "dataset: bad DP rank " + std::to_string(dp_rank) + " of " + std::to_string(dp));
  need(global_batch % dp == 0, "dataset: global batch " + std::to_string(global_batch) +
                                   " is not a multiple of dp " + std::to_string(dp));
  need(first <= std::numeric_limits<int64_t>::max() - global_batch,
       "dataset: sample index overflows int64");
  Batch b;
  b.seq_len = opt_.seq_len;
  b.first_sample = first;
  b.global_batch = global_batch;
  b.rows = global_batch / dp;
  b.tokens.resize(static_cast<size_t>(b.rows * (opt_.seq_len + 1)));
  b.sample_index.resize(static_cast<size_t>(b.rows));
  b.source.resize(static_cast<size_t>(b.rows));
  if (opt_.doc_starts) b.doc_start_off.assign(static_cast<size_t>(b.rows) + 1, 0);
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
  need(dp >= 1 && dp_rank >= 0 && dp_rank < dp,
       "dataset: bad DP rank " + std::to_string(dp_rank) + " of " + std::to_string(dp));
  const int64_t begin = bi * global_batch;
  const int64_t end = std::min(begin + global_batch, n_eval_samples());
  Batch b;
  b.seq_len = opt_.seq_len;
  b.first_sample = begin;
  b.global_batch = end - begin;
  b.rows = end - begin > dp_rank ? (end - begin - dp_rank + dp - 1) / dp : 0;
  b.tokens.resize(static_cast<size_t>(b.rows * (opt_.seq_len + 1)));
  b.sample_index.resize(static_cast<size_t>(b.rows));
  b.source.resize(static_cast<size_t>(b.rows));
  if (opt_.doc_starts) b.doc_start_off.assign(static_cast<size_t>(b.rows) + 1, 0);
  for (int64_t r = 0; r < b.rows; ++r) {
    const int64_t e = begin + r * dp + dp_rank;
    const int s = static_cast<int>(std::upper_bound(eval_begin_.begin(), eval_begin_.end(), e) -
                                   eval_begin_.begin() - 1);
    b.sample_index[static_cast<size_t>(r)] = e;
    fill_row(&b, r, s, (e - eval_begin_[static_cast<size_t>(s)]) * opt_.seq_len);
  }
  return b;
}

Batch step_batch(const Dataset& data, const BatchSchedule& schedule, int64_t step,
                 int64_t dp_rank) {
  need(schedule.seq_len() == data.seq_len(),
       "step_batch: batch schedule seq_len " + std::to_string(schedule.seq_len()) +
           " differs from the dataset's " + std::to_string(data.seq_len()));
  const BatchSchedule::Consumed c = schedule.consumed_before(step);
  return data.batch(c.samples, schedule.batch_size_at(c.tokens), schedule.dp(), dp_rank);
}

// ---------------------------------------------------------------- Loader

Loader::Loader(const Dataset& data, BatchSchedule schedule, LoaderOptions options,
               int64_t samples_consumed)
    : data_(data), schedule_(schedule), opt_(options), consumed_(samples_consumed) {
  need(schedule_.seq_len() == data_.seq_len(),
       "loader: batch schedule seq_len " + std::to_string(schedule_.seq_len()) +
           " differs from the dataset's " + std::to_string(data_.seq_len()));
  need(schedule_.dp() == opt_.dp, "loader: batch schedule dp " + std::to_string(schedule_.dp()) +
                                      " differs from the loader's " + std::to_string(opt_.dp));
  need(opt_.dp_rank >= 0 && opt_.dp_rank < opt_.dp,
       "loader: bad DP rank " + std::to_string(opt_.dp_rank) + " of " + std::to_string(opt_.dp));
  need(opt_.prefetch >= 0, "loader: prefetch must be >= 0");
  need(samples_consumed >= 0,
       "loader: samples consumed must be >= 0, got " + std::to_string(samples_consumed));
  if (opt_.prefetch > 0) thread_ = std::thread(&Loader::produce, this, consumed_);
}

Loader::~Loader() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  not_full_.notify_all();
  if (thread_.joinable()) thread_.join();
}

Batch Loader::make(int64_t first) const {
  need(first <= std::numeric_limits<int64_t>::max() / data_.seq_len(),
       "loader: token count overflows int64");
  return data_.batch(first, schedule_.batch_size_at(first * data_.seq_len()), opt_.dp,
                     opt_.dp_rank);
}

void Loader::produce(int64_t first) {
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mu_);
      not_full_.wait(lock,
                     [&] { return stop_ || queue_.size() < static_cast<size_t>(opt_.prefetch); });
      if (stop_) return;
    }
    Batch b;
    try {
      b = make(first);
    } catch (...) {
      {
        std::lock_guard<std::mutex> lock(mu_);
        producer_error_ = std::current_exception();
      }
      not_empty_.notify_all();
      return;
    }
    first += b.global_batch;
    {
      std::lock_guard<std::mutex> lock(mu_);
      queue_.push_back(std::move(b));
    }
    not_empty_.notify_one();
  }
}

Batch Loader::next() {
  Batch b;
  if (opt_.prefetch == 0) {
    b = make(consumed_);
  } else {
    {
      std::unique_lock<std::mutex> lock(mu_);
      not_empty_.wait(lock, [&] { return !queue_.empty() || producer_error_ != nullptr; });
      if (queue_.empty()) std::rethrow_exception(producer_error_);
      b = std::move(queue_.front());
      queue_.pop_front();
    }
    not_full_.notify_one();
  }
  consumed_ += b.global_batch;
  return b;
}

}  // namespace moetron::data
