// Byte-level BPE tokenizer (see bpe.h), part 2 of 3: training a tokenizer on a corpus.
//
// Counting: the corpus is cut at the special tokens, pre-tokenized (GPT-4 split), and every
// distinct piece is counted once per occurrence. The pieces become "words": sequences of byte
// token ids, sorted by their bytes so that training never depends on hash-table order.
//
// Merging: MergeTrainer keeps, per adjacent pair, its count over the corpus (weighted by word
// frequency) and the words it occurs in; merging a pair rewrites only those words and adjusts the
// counts of their neighbouring pairs, and only pairs containing the new token are pushed to the
// heap (existing pairs can only lose counts, so their heap entries are refreshed lazily when
// popped). The most frequent pair wins; ties go to the smaller (left id, right id).
#include <algorithm>
#include <memory>
#include <queue>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "data/bpe.h"
#include "data/bpe_impl.h"
#include "data/corpus.h"

namespace moetron::data {

using bpe_internal::pair_key;
using bpe_internal::SvHash;
using bpe_internal::TokenMatcher;

namespace {

// The corpus's pieces and their counts, and what they are cut with.
struct TrainState {
  std::vector<std::string> specials;  // contents, ids 0..k-1
  TokenMatcher special_matcher;
  PreTokenizer pre = PreTokenizer::gpt4();
  std::unordered_map<std::string, int64_t, SvHash, std::equal_to<>> counts;

  void count(std::string_view text) {
    auto piece = [&](std::string_view p) {
      auto it = counts.find(p);
      if (it == counts.end())
        counts.emplace(std::string(p), 1);
      else
        ++it->second;
    };
    special_matcher.split(
        text, [&](std::string_view seg) { pre.split(seg, piece); }, [](uint32_t) {});
  }
};

TrainState make_train_state(const BpeTrainOptions& o) {
  TrainState st;
  st.specials = {BpeTokenizer::kBos, BpeTokenizer::kEos, BpeTokenizer::kPad};
  for (const auto& s : o.special_tokens) st.specials.push_back(s);
  std::unordered_set<std::string> seen;
  for (size_t i = 0; i < st.specials.size(); ++i) {
    if (st.specials[i].empty()) throw DataError("tokenizer training: empty special token");
    if (!seen.insert(st.specials[i]).second)
      throw DataError("tokenizer training: duplicate special token \"" + st.specials[i] + "\"");
    st.special_matcher.add(st.specials[i], static_cast<uint32_t>(i));
  }
  st.special_matcher.finish();
  const auto min_size = static_cast<int64_t>(st.specials.size()) + 256;
  if (o.vocab_size < min_size)
    throw DataError("tokenizer training: vocab size " + std::to_string(o.vocab_size) +
                    " is below the " + std::to_string(min_size) +
                    " special and byte tokens it must hold");
  if (o.vocab_size > (int64_t{1} << 31))
    throw DataError("tokenizer training: vocab size " + std::to_string(o.vocab_size) +
                    " is too large");
  return st;
}

struct PairStat {
  int64_t count = 0;
  std::vector<uint32_t> words;  // may hold stale entries and repeats (harmless)
  uint64_t pushed_at = 0;       // last merge step that queued it
};

struct HeapEntry {
  int64_t count;
  uint64_t key;
};
struct HeapLess {  // max count first; ties: smaller (left, right) first
  bool operator()(const HeapEntry& x, const HeapEntry& y) const {
    return x.count < y.count || (x.count == y.count && x.key > y.key);
  }
};

// The merge loop's state: the words, the vocabulary so far, the pair statistics and the heap.
class MergeTrainer {
 public:
  // Takes the counted pieces (st.counts is emptied).
  explicit MergeTrainer(TrainState& st);
  // Merges until the vocabulary has vocab_size tokens; throws DataError if the pairs run out.
  void run(int64_t vocab_size);
  // The trained tokenizer's state, finished (takes the merges).
  std::shared_ptr<BpeTokenizer::Impl> build();

 private:
  void load_words(TrainState& st);
  void count_pairs();
  uint32_t stat(uint32_t a, uint32_t b);
  uint32_t id_of(std::string merged);
  void merge(uint32_t idx, uint32_t a, uint32_t b, uint32_t id);
  void rewrite_word(uint32_t w, uint32_t a, uint32_t b, uint32_t id);
  void change(uint32_t x, uint32_t y, int64_t delta, uint32_t w);

  uint32_t k_;                                // special tokens (ids 0..k-1)
  std::vector<std::vector<uint32_t>> words_;  // distinct pieces as token ids, sorted by bytes
  std::vector<int64_t> wcount_;               // their counts
  std::vector<std::string> tb_;               // id -> bytes
  std::unordered_map<std::string, uint32_t> by_bytes_;
  std::unordered_set<std::string> special_bytes_;
  std::unordered_map<uint64_t, uint32_t> pair_index_;  // pair -> index in stats_
  std::vector<PairStat> stats_;
  std::vector<uint64_t> stat_key_;  // stats_[j]'s pair
  std::priority_queue<HeapEntry, std::vector<HeapEntry>, HeapLess> heap_;
  std::vector<std::pair<uint32_t, uint32_t>> merges_;
  std::vector<uint32_t> merge_ids_;
  std::unordered_set<uint64_t> banned_;
  std::vector<uint32_t> touched_;  // stats changed upwards by the current merge
  uint64_t step_ = 0;
};

MergeTrainer::MergeTrainer(TrainState& st) : k_(static_cast<uint32_t>(st.specials.size())) {
  load_words(st);
  special_bytes_.insert(st.specials.begin(), st.specials.end());
  for (uint32_t i = 0; i < k_; ++i) tb_.push_back(st.specials[i]);
  for (int b = 0; b < 256; ++b) {
    tb_.emplace_back(1, static_cast<char>(b));
    by_bytes_.emplace(tb_.back(), k_ + b);
  }
  count_pairs();
}

// words, sorted by bytes (deterministic)
void MergeTrainer::load_words(TrainState& st) {
  std::vector<std::pair<std::string_view, int64_t>> uniq;
  uniq.reserve(st.counts.size());
  for (const auto& [w, c] : st.counts) uniq.emplace_back(w, c);
  std::sort(uniq.begin(), uniq.end());
  words_.resize(uniq.size());
  wcount_.resize(uniq.size());
  for (size_t i = 0; i < uniq.size(); ++i) {
    for (unsigned char b : uniq[i].first) words_[i].push_back(k_ + b);
    wcount_[i] = uniq[i].second;
  }
  st.counts.clear();
}

// The index of pair (a, b)'s statistics, created on first use.
uint32_t MergeTrainer::stat(uint32_t a, uint32_t b) {
  auto [it, fresh] = pair_index_.try_emplace(pair_key(a, b), static_cast<uint32_t>(stats_.size()));
  if (fresh) {
    stats_.emplace_back();
    stat_key_.push_back(pair_key(a, b));
  }
  return it->second;
}

// Every adjacent pair of every word, counted; all of them queued.
void MergeTrainer::count_pairs() {
  for (size_t w = 0; w < words_.size(); ++w) {
    const auto& s = words_[w];
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      PairStat& p = stats_[stat(s[i], s[i + 1])];
      p.count += wcount_[w];
      if (p.words.empty() || p.words.back() != w) p.words.push_back(static_cast<uint32_t>(w));
    }
  }
  for (const auto& [key, idx] : pair_index_)
    if (stats_[idx].count > 0) heap_.push({stats_[idx].count, key});
}

void MergeTrainer::run(int64_t vocab_size) {
  while (static_cast<int64_t>(tb_.size()) < vocab_size && !heap_.empty()) {
    const HeapEntry top = heap_.top();
    heap_.pop();
    const uint32_t idx = pair_index_.at(top.key);
    if (top.count != stats_[idx].count) {  // stale: queue it again with its current count
      if (stats_[idx].count > 0) heap_.push({stats_[idx].count, top.key});
      continue;
    }
    if (banned_.count(top.key)) continue;
    const auto a = static_cast<uint32_t>(top.key >> 32), b = static_cast<uint32_t>(top.key);
    std::string merged = tb_[a] + tb_[b];
    if (special_bytes_.count(merged)) {  // would collide with a special token's vocab string
      banned_.insert(top.key);
      continue;
    }
    const uint32_t id = id_of(std::move(merged));
    merges_.emplace_back(a, b);
    merge_ids_.push_back(id);
    merge(idx, a, b, id);
  }
  if (static_cast<int64_t>(tb_.size()) < vocab_size)
    throw DataError("tokenizer training: the corpus has too few distinct pairs for vocab size " +
                    std::to_string(vocab_size) + " (reached " + std::to_string(tb_.size()) + ")");
}

// The id of a merge's bytes: a new one, or the existing one when the same bytes were reached by
// another merge (as HF does).
uint32_t MergeTrainer::id_of(std::string merged) {
  if (auto it = by_bytes_.find(merged); it != by_bytes_.end()) return it->second;
  const auto id = static_cast<uint32_t>(tb_.size());
  by_bytes_.emplace(merged, id);
  tb_.push_back(std::move(merged));
  return id;
}

// Applies merge (a, b) -> id (stats_[idx]) to every word holding the pair, then queues the
// pairs whose counts went up.
void MergeTrainer::merge(uint32_t idx, uint32_t a, uint32_t b, uint32_t id) {
  ++step_;
  touched_.clear();
  std::vector<uint32_t> ws = std::move(stats_[idx].words);
  stats_[idx].words.clear();
  for (uint32_t w : ws) rewrite_word(w, a, b, id);
  stats_[idx].count = 0;
  for (uint32_t j : touched_)
    if (stats_[j].count > 0) heap_.push({stats_[j].count, stat_key_[j]});
}

// Replaces every (a, b) in word w by id, moving the counts of the neighbouring pairs.
void MergeTrainer::rewrite_word(uint32_t w, uint32_t a, uint32_t b, uint32_t id) {
  auto& s = words_[w];
  const int64_t c = wcount_[w];
  size_t o2 = 0;
  for (size_t i = 0; i < s.size();) {
    if (i + 1 < s.size() && s[i] == a && s[i + 1] == b) {
      if (o2 > 0) {
        change(s[o2 - 1], a, -c, w);
        change(s[o2 - 1], id, c, w);
      }
      if (i + 2 < s.size()) {
        change(b, s[i + 2], -c, w);
        change(id, s[i + 2], c, w);
      }
      s[o2++] = id;
      i += 2;
    } else {
      s[o2++] = s[i++];
    }
  }
  s.resize(o2);
}

// Pair (x, y) gains delta occurrences in word w (loses them when delta < 0).
void MergeTrainer::change(uint32_t x, uint32_t y, int64_t delta, uint32_t w) {
  const uint32_t j = stat(x, y);
  PairStat& p = stats_[j];
  p.count += delta;
  if (delta > 0) {
    if (p.words.empty() || p.words.back() != w) p.words.push_back(w);
    if (p.pushed_at != step_) {
      p.pushed_at = step_;
      touched_.push_back(j);
    }
  }
}

std::shared_ptr<BpeTokenizer::Impl> MergeTrainer::build() {
  auto m = std::make_shared<BpeTokenizer::Impl>();
  const size_t n = tb_.size();
  m->tokens.resize(n);
  m->in_model.assign(n, 1);
  m->special.assign(n, 0);
  m->used.assign(n, 1);
  for (uint32_t i = 0; i < n; ++i) {
    m->tokens[i] = i < k_ ? tb_[i] : bytes_to_unicode_string(tb_[i]);
    m->vocab.emplace(m->tokens[i], i);
  }
  for (uint32_t i = 0; i < k_; ++i) {
    m->special[i] = 1;
    m->added.push_back({i, tb_[i], true, false});
  }
  m->merges = std::move(merges_);
  m->merge_ids = std::move(merge_ids_);
  m->pre = PreTokenizer::gpt4();
  m->finish("trained tokenizer");
  return m;
}

std::shared_ptr<BpeTokenizer::Impl> train_impl(TrainState& st, const BpeTrainOptions& o) {
  MergeTrainer trainer(st);
  trainer.run(o.vocab_size);
  return trainer.build();
}

}  // namespace

BpeTokenizer BpeTokenizer::train(Corpus& corpus, const BpeTrainOptions& options) {
  TrainState st = make_train_state(options);
  Document doc;
  while (corpus.next(&doc)) st.count(doc.text);
  return BpeTokenizer(train_impl(st, options));
}

BpeTokenizer BpeTokenizer::train(const std::vector<std::string>& texts,
                                 const BpeTrainOptions& options) {
  TrainState st = make_train_state(options);
  for (const auto& t : texts) st.count(t);
  return BpeTokenizer(train_impl(st, options));
}

}  // namespace moetron::data
