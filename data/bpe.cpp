// Byte-level BPE tokenizer (see bpe.h): training, encoding, decoding and tokenizer.json I/O.
//
// Encoding a piece: its bytes become byte-token ids, then merges are applied in HF's order
// (lowest rank, then leftmost). Short pieces (the vast majority) use a linear scan over a small
// rank array; long ones (> kHeapThreshold symbols) a linked list plus a min-heap of (rank,
// position), as HF's Word::merge_all does; both give the same result. Pair -> (rank, new id)
// lookups go through an open-addressing hash table keyed by (left << 32 | right). Results for
// pieces up to kMaxCachedPiece bytes are cached per thread.
//
// Training keeps, per adjacent pair, its count over the corpus (weighted by word frequency) and
// the words it occurs in; merging a pair rewrites only those words and adjusts the counts of
// their neighbouring pairs, and only pairs containing the new token are pushed to the heap
// (existing pairs can only lose counts, so their heap entries are refreshed lazily when popped).
#include "data/bpe.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstdio>
#include <cstring>
#include <exception>
#include <filesystem>
#include <fstream>
#include <functional>
#include <mutex>
#include <nlohmann/json.hpp>
#include <queue>
#include <sstream>
#include <thread>
#include <unordered_map>
#include <unordered_set>

#include "data/corpus.h"
#include "data/pretokenize.h"

namespace moetron::data {

namespace {

constexpr uint32_t kNone = 0xFFFFFFFFu;
constexpr size_t kHeapThreshold = 48;    // symbols; above it, merge with the heap
constexpr size_t kMaxCachedPiece = 256;  // bytes
// per-thread cache bounds (about 30 MB at most); the cache is reset when one would be passed
constexpr size_t kMaxCacheEntries = 1 << 18, kMaxCacheIds = 1 << 20, kMaxCacheKeyBytes = 16 << 20;

std::atomic<uint64_t> g_serial{1};

uint64_t pair_key(uint32_t a, uint32_t b) { return (static_cast<uint64_t>(a) << 32) | b; }

// Open-addressing map (a, b) -> (rank, new id).
class MergeTable {
 public:
  void build(const std::vector<std::pair<uint32_t, uint32_t>>& merges,
             const std::vector<uint32_t>& new_ids) {
    size_t cap = 16;
    while (cap < merges.size() * 2 + 2) cap <<= 1;
    keys_.assign(cap, kEmpty);
    vals_.assign(cap, 0);
    mask_ = cap - 1;
    for (size_t r = 0; r < merges.size(); ++r) {  // a repeated pair keeps its last rank (as HF)
      const uint64_t k = pair_key(merges[r].first, merges[r].second);
      size_t i = slot(k);
      while (keys_[i] != kEmpty && keys_[i] != k) i = (i + 1) & mask_;
      keys_[i] = k;
      vals_[i] = (static_cast<uint64_t>(r) << 32) | new_ids[r];
    }
  }
  // false if (a, b) is not a merge
  bool find(uint32_t a, uint32_t b, uint32_t* rank, uint32_t* id) const {
    const uint64_t k = pair_key(a, b);
    for (size_t i = slot(k);; i = (i + 1) & mask_) {
      if (keys_[i] == k) {
        *rank = static_cast<uint32_t>(vals_[i] >> 32);
        *id = static_cast<uint32_t>(vals_[i]);
        return true;
      }
      if (keys_[i] == kEmpty) return false;
    }
  }
  uint32_t rank(uint32_t a, uint32_t b) const {
    uint32_t r, id;
    return find(a, b, &r, &id) ? r : kNone;
  }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  size_t slot(uint64_t k) const { return ((k * 0x9E3779B97F4A7C15ull) >> 32) & mask_; }
  std::vector<uint64_t> keys_, vals_;
  size_t mask_ = 0;
};

// Leftmost-longest matching of a set of literal strings (HF's AddedVocabulary split).
class TokenMatcher {
 public:
  void add(const std::string& s, uint32_t id) {
    toks_.push_back({s, id});
    by_first_[static_cast<unsigned char>(s[0])].push_back(toks_.size() - 1);
  }
  void finish() {
    for (auto& v : by_first_)
      std::stable_sort(v.begin(), v.end(), [&](size_t x, size_t y) {
        return toks_[x].first.size() > toks_[y].first.size();
      });
  }
  bool empty() const { return toks_.empty(); }
  // Calls on_text for the text between matches and on_token for each match, in order.
  template <class T, class K>
  void split(std::string_view s, T&& on_text, K&& on_token) const {
    size_t prev = 0;
    for (size_t p = 0; p < s.size();) {
      const auto& cands = by_first_[static_cast<unsigned char>(s[p])];
      bool hit = false;
      for (size_t c : cands) {
        const std::string& t = toks_[c].first;
        if (t.size() <= s.size() - p && std::memcmp(s.data() + p, t.data(), t.size()) == 0) {
          if (p > prev) on_text(s.substr(prev, p - prev));
          on_token(toks_[c].second);
          p += t.size();
          prev = p;
          hit = true;
          break;
        }
      }
      if (!hit) ++p;
    }
    if (prev < s.size()) on_text(s.substr(prev));
  }

 private:
  std::vector<std::pair<std::string, uint32_t>> toks_;
  std::array<std::vector<size_t>, 256> by_first_;
};

struct SvHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};

}  // namespace

// piece -> ids; one per thread for encode() (thread_local, tagged with the tokenizer's serial)
// and one per worker slot of encode_batch() (kept by the tokenizer, so batches stay warm).
// Open addressing (linear probing, load <= 1/2) over entries whose key bytes and ids live in two
// arenas: one hash, usually one probe and one memcmp per lookup, no allocation per entry.
struct PieceCache {
  struct Entry {
    uint64_t hash = 0;
    uint32_t key_off = 0, key_len = 0;  // key_len 0: empty slot (keys are >= 2 bytes)
    uint32_t ids_off = 0, ids_len = 0;
  };
  uint64_t serial = 0;
  std::vector<Entry> table = std::vector<Entry>(1 << 12);
  size_t used = 0;
  std::string keys;
  std::vector<uint32_t> ids;
  std::mutex mu;  // held by the encode_batch worker using the slot

  PieceCache& for_tokenizer(uint64_t s) {
    if (serial != s) reset();
    serial = s;
    return *this;
  }
  void reset() {
    table.assign(1 << 12, Entry());
    used = 0;
    keys.clear();
    ids.clear();
  }
  static uint64_t hash_of(std::string_view k) {
    uint64_t h = 0x9E3779B97F4A7C15ull ^ k.size();
    size_t i = 0;
    for (; i + 8 <= k.size(); i += 8) {
      uint64_t w;
      std::memcpy(&w, k.data() + i, 8);
      h = (h ^ w) * 0xBF58476D1CE4E5B9ull;
      h ^= h >> 29;
    }
    uint64_t w = 0;
    std::memcpy(&w, k.data() + i, k.size() - i);
    h = (h ^ w) * 0x94D049BB133111EBull;
    return h ^ (h >> 31);
  }
  // The cached ids of `k` (appended to *out), or false.
  bool get(std::string_view k, uint64_t h, std::vector<uint32_t>* out) const {
    const size_t mask = table.size() - 1;
    for (size_t i = h & mask;; i = (i + 1) & mask) {
      const Entry& e = table[i];
      if (e.key_len == 0) return false;
      if (e.hash == h && e.key_len == k.size() &&
          std::memcmp(keys.data() + e.key_off, k.data(), k.size()) == 0) {
        out->insert(out->end(), ids.begin() + e.ids_off, ids.begin() + e.ids_off + e.ids_len);
        return true;
      }
    }
  }
  void put(std::string_view k, uint64_t h, const uint32_t* v, size_t n) {
    if (used >= kMaxCacheEntries || ids.size() + n > kMaxCacheIds ||
        keys.size() + k.size() > kMaxCacheKeyBytes)
      reset();
    if ((used + 1) * 2 > table.size()) {  // grow
      std::vector<Entry> old(table.size() * 2);
      old.swap(table);
      for (const Entry& e : old)
        if (e.key_len) place(e);
    }
    Entry e;
    e.hash = h;
    e.key_off = static_cast<uint32_t>(keys.size());
    e.key_len = static_cast<uint32_t>(k.size());
    e.ids_off = static_cast<uint32_t>(ids.size());
    e.ids_len = static_cast<uint32_t>(n);
    keys.append(k);
    ids.insert(ids.end(), v, v + n);
    place(e);
    ++used;
  }
  void place(const Entry& e) {
    const size_t mask = table.size() - 1;
    size_t i = e.hash & mask;
    while (table[i].key_len) i = (i + 1) & mask;
    table[i] = e;
  }
};

namespace {

struct Fnv {
  uint64_t h = 0xcbf29ce484222325ull;
  void add(std::string_view s) {
    for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  }
  void add_u64(uint64_t v) {
    for (int i = 0; i < 8; ++i) h = (h ^ ((v >> (8 * i)) & 0xFF)) * 0x100000001b3ull;
  }
};

std::string json_str(std::string_view s) { return nlohmann::json(std::string(s)).dump(); }

}  // namespace

struct BpeTokenizer::Impl {
  uint64_t serial = g_serial.fetch_add(1);
  PreTokenizer pre;
  std::vector<std::string> tokens;  // id -> vocab string (model) or content (added); "" unused
  std::vector<std::string> bytes;   // id -> decoded bytes
  std::vector<uint8_t> in_model;    // id is in the model vocab
  std::vector<uint8_t> special;     // id is an added token with special: true
  std::vector<uint8_t> used;
  std::unordered_map<std::string, uint32_t, SvHash, std::equal_to<>> vocab;  // model vocab
  std::unordered_map<std::string, uint32_t, SvHash, std::equal_to<>> added_ids;
  std::vector<std::pair<uint32_t, uint32_t>> merges;
  std::vector<uint32_t> merge_ids;
  MergeTable table;
  std::array<uint32_t, 256> byte_id{};
  std::vector<AddedToken> added;
  TokenMatcher match_plain, match_normalized;
  bool ignore_merges = false;
  std::string normalizer_json = "null";
  std::string post_processor_json =
      R"({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":false,"use_regex":false})";
  std::string decoder_json =
      R"({"type":"ByteLevel","add_prefix_space":false,"trim_offsets":true,"use_regex":false})";
  uint64_t hash = 0;

  // Builds the derived tables; `where` names the source for messages. Throws DataError.
  void finish(const std::string& where);
  mutable std::mutex slots_mu;
  mutable std::vector<std::unique_ptr<PieceCache>> slots;  // encode_batch workers' caches

  void bpe(std::string_view piece, std::vector<uint32_t>* out) const;
  void encode_piece(std::string_view piece, std::vector<uint32_t>* out, PieceCache& c) const;
  void encode_text(std::string_view text, std::vector<uint32_t>* out, PieceCache& c) const {
    pre.split(text, [&](std::string_view piece) { encode_piece(piece, out, c); });
  }
  void encode(std::string_view text, std::vector<uint32_t>* out, bool allow_special,
              PieceCache& c) const;
  PieceCache& slot(size_t i) const {
    std::lock_guard<std::mutex> lk(slots_mu);
    while (slots.size() <= i) slots.push_back(std::make_unique<PieceCache>());
    return *slots[i];
  }
};

void BpeTokenizer::Impl::finish(const std::string& where) {
  const size_t n = tokens.size();
  bytes.assign(n, std::string());
  for (size_t id = 0; id < n; ++id) {
    if (!used[id]) continue;
    if (!in_model[id] || !unicode_string_to_bytes(tokens[id], &bytes[id])) bytes[id] = tokens[id];
  }
  for (int b = 0; b < 256; ++b) {
    std::string s = bytes_to_unicode_string(std::string(1, static_cast<char>(b)));
    auto it = vocab.find(s);
    if (it == vocab.end()) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "0x%02X", b);
      throw DataError(where + ": vocab lacks the byte token for " + buf + " (\"" + s +
                      "\"): not a byte-level BPE vocabulary");
    }
    byte_id[b] = it->second;
  }
  table.build(merges, merge_ids);
  match_plain = TokenMatcher();
  match_normalized = TokenMatcher();
  added_ids.clear();
  for (const auto& t : added) {
    (t.normalized ? match_normalized : match_plain).add(t.content, t.id);
    added_ids.emplace(t.content, t.id);
  }
  match_plain.finish();
  match_normalized.finish();

  Fnv f;
  f.add("moetron-bpe-v1\n");
  f.add(pre.canonical());
  f.add_u64(n);
  for (size_t id = 0; id < n; ++id) {
    f.add(tokens[id]);
    f.add(std::string_view("\0", 1));
    f.add_u64(static_cast<uint64_t>(used[id]) | (static_cast<uint64_t>(in_model[id]) << 1) |
              (static_cast<uint64_t>(special[id]) << 2));
  }
  f.add_u64(merges.size());
  for (const auto& m : merges) f.add_u64(pair_key(m.first, m.second));
  f.add_u64(added.size());
  for (const auto& t : added) {
    f.add_u64(t.id);
    f.add(t.content);
    f.add_u64((t.special ? 1 : 0) | (t.normalized ? 2 : 0));
  }
  f.add_u64(ignore_merges ? 1 : 0);
  hash = f.h;
}

void BpeTokenizer::Impl::bpe(std::string_view piece, std::vector<uint32_t>* out) const {
  if (ignore_merges) {
    auto it = vocab.find(bytes_to_unicode_string(piece));
    if (it != vocab.end()) {
      out->push_back(it->second);
      return;
    }
  }
  thread_local std::vector<uint32_t> sym, rank;
  sym.clear();
  for (unsigned char b : piece) sym.push_back(byte_id[b]);
  size_t n = sym.size();
  if (n <= kHeapThreshold) {
    rank.resize(n);
    for (size_t i = 0; i + 1 < n; ++i) rank[i] = table.rank(sym[i], sym[i + 1]);
    while (n > 1) {
      uint32_t best = kNone;
      size_t bi = 0;
      for (size_t i = 0; i + 1 < n; ++i)
        if (rank[i] < best) best = rank[i], bi = i;
      if (best == kNone) break;
      uint32_t r = 0, id = 0;
      table.find(sym[bi], sym[bi + 1], &r, &id);
      sym[bi] = id;
      std::memmove(sym.data() + bi + 1, sym.data() + bi + 2, (n - bi - 2) * sizeof(uint32_t));
      std::memmove(rank.data() + bi + 1, rank.data() + bi + 2, (n - bi - 2) * sizeof(uint32_t));
      --n;
      if (bi + 1 < n) rank[bi] = table.rank(sym[bi], sym[bi + 1]);
      if (bi > 0) rank[bi - 1] = table.rank(sym[bi - 1], sym[bi]);
    }
    out->insert(out->end(), sym.begin(), sym.begin() + static_cast<std::ptrdiff_t>(n));
    return;
  }
  // long piece: linked list + min-heap of (rank << 32 | position)
  std::vector<int64_t> prev(n), next(n);
  for (size_t i = 0; i < n; ++i) {
    prev[i] = static_cast<int64_t>(i) - 1;
    next[i] = i + 1 < n ? static_cast<int64_t>(i + 1) : -1;
  }
  std::priority_queue<uint64_t, std::vector<uint64_t>, std::greater<>> heap;
  auto push = [&](int64_t pos) {
    if (pos < 0 || next[pos] < 0) return;
    const uint32_t r = table.rank(sym[pos], sym[next[pos]]);
    if (r != kNone) heap.push((static_cast<uint64_t>(r) << 32) | static_cast<uint64_t>(pos));
  };
  for (size_t i = 0; i + 1 < n; ++i) push(static_cast<int64_t>(i));
  std::vector<uint8_t> alive(n, 1);
  while (!heap.empty()) {
    const uint64_t top = heap.top();
    heap.pop();
    const auto pos = static_cast<int64_t>(top & 0xFFFFFFFFu);
    if (!alive[pos] || next[pos] < 0) continue;
    uint32_t r, id;
    if (!table.find(sym[pos], sym[next[pos]], &r, &id) || r != (top >> 32)) continue;
    const int64_t nx = next[pos];
    sym[pos] = id;
    alive[nx] = 0;
    next[pos] = next[nx];
    if (next[nx] >= 0) prev[next[nx]] = pos;
    push(prev[pos]);
    push(pos);
  }
  for (int64_t i = 0; i >= 0; i = next[i]) out->push_back(sym[i]);
}

void BpeTokenizer::Impl::encode_piece(std::string_view piece, std::vector<uint32_t>* out,
                                      PieceCache& c) const {
  if (piece.size() == 1) {
    out->push_back(byte_id[static_cast<unsigned char>(piece[0])]);
    return;
  }
  if (piece.size() > kMaxCachedPiece) {
    bpe(piece, out);
    return;
  }
  const uint64_t h = PieceCache::hash_of(piece);
  if (c.get(piece, h, out)) return;
  const size_t start = out->size();
  bpe(piece, out);
  c.put(piece, h, out->data() + start, out->size() - start);
}

// ---------------------------------------------------------------- encode / decode / accessors

void BpeTokenizer::Impl::encode(std::string_view text, std::vector<uint32_t>* out,
                                bool allow_special, PieceCache& c) const {
  if (!allow_special || added.empty()) {
    encode_text(text, out, c);
    return;
  }
  auto push = [&](uint32_t id) { out->push_back(id); };
  match_plain.split(
      text,
      [&](std::string_view seg) {
        match_normalized.split(
            seg, [&](std::string_view s) { encode_text(s, out, c); }, push);
      },
      push);
}

void BpeTokenizer::encode(std::string_view text, std::vector<uint32_t>* out,
                          bool allow_special) const {
  thread_local PieceCache cache;
  impl_->encode(text, out, allow_special, cache.for_tokenizer(impl_->serial));
}

std::vector<uint32_t> BpeTokenizer::encode(std::string_view text, bool allow_special) const {
  std::vector<uint32_t> ids;
  encode(text, &ids, allow_special);
  return ids;
}

std::vector<std::vector<uint32_t>> BpeTokenizer::encode_batch(const std::vector<std::string>& texts,
                                                              int threads,
                                                              bool allow_special) const {
  std::vector<std::vector<uint32_t>> res(texts.size());
  if (threads <= 0) threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  threads = static_cast<int>(std::min<size_t>(static_cast<size_t>(threads), texts.size()));
  if (threads <= 1) {
    for (size_t i = 0; i < texts.size(); ++i) encode(texts[i], &res[i], allow_special);
    return res;
  }
  std::atomic<size_t> next{0};
  std::exception_ptr err;
  std::mutex mu;
  const Impl& m = *impl_;
  auto work = [&](size_t slot) {
    try {
      PieceCache& c = m.slot(slot);
      std::lock_guard<std::mutex> lk(c.mu);
      c.for_tokenizer(m.serial);
      for (size_t i; (i = next.fetch_add(1)) < texts.size();)
        m.encode(texts[i], &res[i], allow_special, c);
    } catch (...) {
      std::lock_guard<std::mutex> lk(mu);
      if (!err) err = std::current_exception();
      next = texts.size();
    }
  };
  std::vector<std::thread> pool;
  for (int t = 0; t < threads; ++t) pool.emplace_back(work, static_cast<size_t>(t));
  for (auto& t : pool) t.join();
  if (err) std::rethrow_exception(err);
  return res;
}

std::string BpeTokenizer::decode(std::span<const uint32_t> ids, bool skip_special) const {
  const Impl& m = *impl_;
  std::string s;
  for (uint32_t id : ids) {
    if (id >= m.tokens.size() || !m.used[id])
      throw DataError("decode: token id " + std::to_string(id) + " is not in the vocabulary (" +
                      std::to_string(m.tokens.size()) + " ids)");
    if (skip_special && m.special[id]) continue;
    s += m.bytes[id];
  }
  return s;
}

int64_t BpeTokenizer::vocab_size() const { return static_cast<int64_t>(impl_->tokens.size()); }
int64_t BpeTokenizer::n_merges() const { return static_cast<int64_t>(impl_->merges.size()); }
uint64_t BpeTokenizer::tokenizer_hash() const { return impl_->hash; }
std::string BpeTokenizer::name() const {
  char buf[32];
  std::snprintf(buf, sizeof buf, "bpe-%016llx", static_cast<unsigned long long>(impl_->hash));
  return buf;
}
const std::vector<AddedToken>& BpeTokenizer::added_tokens() const { return impl_->added; }
const PreTokenizer& BpeTokenizer::pre_tokenizer() const { return impl_->pre; }

std::optional<uint32_t> BpeTokenizer::token_to_id(std::string_view token) const {
  if (auto it = impl_->added_ids.find(token); it != impl_->added_ids.end()) return it->second;
  if (auto it = impl_->vocab.find(token); it != impl_->vocab.end()) return it->second;
  return std::nullopt;
}

const std::string& BpeTokenizer::id_to_token(uint32_t id) const {
  static const std::string empty;
  return id < impl_->tokens.size() ? impl_->tokens[id] : empty;
}

namespace {
std::optional<uint32_t> first_of(const BpeTokenizer& t, std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (auto id = t.token_to_id(n)) return id;
  return std::nullopt;
}
}  // namespace

std::optional<uint32_t> BpeTokenizer::bos_id() const {
  return first_of(*this, {kBos, "<|begin_of_text|>", "<s>", "<|startoftext|>"});
}
std::optional<uint32_t> BpeTokenizer::eos_id() const {
  return first_of(*this, {kEos, "<|endoftext|>", "<|end_of_text|>", "</s>"});
}
std::optional<uint32_t> BpeTokenizer::pad_id() const {
  return first_of(*this, {kPad, "<pad>", "<|pad|>"});
}

// ---------------------------------------------------------------- training

namespace {

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

std::shared_ptr<BpeTokenizer::Impl> train_impl(TrainState& st, const BpeTrainOptions& o) {
  const auto k = static_cast<uint32_t>(st.specials.size());
  // words, sorted by bytes (deterministic)
  std::vector<std::pair<std::string_view, int64_t>> uniq;
  uniq.reserve(st.counts.size());
  for (const auto& [w, c] : st.counts) uniq.emplace_back(w, c);
  std::sort(uniq.begin(), uniq.end());
  std::vector<std::vector<uint32_t>> words(uniq.size());
  std::vector<int64_t> wcount(uniq.size());
  for (size_t i = 0; i < uniq.size(); ++i) {
    for (unsigned char b : uniq[i].first) words[i].push_back(k + b);
    wcount[i] = uniq[i].second;
  }
  st.counts.clear();

  std::vector<std::string> tb;  // id -> bytes
  std::unordered_map<std::string, uint32_t> by_bytes;
  std::unordered_set<std::string> special_bytes(st.specials.begin(), st.specials.end());
  for (uint32_t i = 0; i < k; ++i) tb.push_back(st.specials[i]);
  for (int b = 0; b < 256; ++b) {
    tb.emplace_back(1, static_cast<char>(b));
    by_bytes.emplace(tb.back(), k + b);
  }

  std::unordered_map<uint64_t, uint32_t> pair_index;
  std::vector<PairStat> stats;
  std::vector<uint64_t> stat_key;  // stats[j]'s pair
  auto stat = [&](uint32_t a, uint32_t b) -> uint32_t {
    auto [it, fresh] = pair_index.try_emplace(pair_key(a, b), static_cast<uint32_t>(stats.size()));
    if (fresh) {
      stats.emplace_back();
      stat_key.push_back(pair_key(a, b));
    }
    return it->second;
  };
  for (size_t w = 0; w < words.size(); ++w) {
    const auto& s = words[w];
    for (size_t i = 0; i + 1 < s.size(); ++i) {
      PairStat& p = stats[stat(s[i], s[i + 1])];
      p.count += wcount[w];
      if (p.words.empty() || p.words.back() != w) p.words.push_back(static_cast<uint32_t>(w));
    }
  }
  std::priority_queue<HeapEntry, std::vector<HeapEntry>, HeapLess> heap;
  for (const auto& [key, idx] : pair_index)
    if (stats[idx].count > 0) heap.push({stats[idx].count, key});

  std::vector<std::pair<uint32_t, uint32_t>> merges;
  std::vector<uint32_t> merge_ids;
  std::unordered_set<uint64_t> banned;
  std::vector<uint32_t> touched;
  auto next_id = static_cast<uint32_t>(tb.size());
  uint64_t step = 0;
  while (static_cast<int64_t>(next_id) < o.vocab_size && !heap.empty()) {
    const HeapEntry top = heap.top();
    heap.pop();
    const uint32_t idx = pair_index.at(top.key);
    if (top.count != stats[idx].count) {
      if (stats[idx].count > 0) heap.push({stats[idx].count, top.key});
      continue;
    }
    if (banned.count(top.key)) continue;
    const auto a = static_cast<uint32_t>(top.key >> 32), b = static_cast<uint32_t>(top.key);
    std::string merged = tb[a] + tb[b];
    if (special_bytes.count(merged)) {  // would collide with a special token's vocab string
      banned.insert(top.key);
      continue;
    }
    uint32_t id;
    if (auto it = by_bytes.find(merged); it != by_bytes.end()) {
      id = it->second;  // the same bytes reached by another merge: reuse the id (as HF does)
    } else {
      id = next_id++;
      by_bytes.emplace(merged, id);
      tb.push_back(std::move(merged));
    }
    merges.emplace_back(a, b);
    merge_ids.push_back(id);
    ++step;
    touched.clear();
    std::vector<uint32_t> ws = std::move(stats[idx].words);
    stats[idx].words.clear();
    auto change = [&](uint32_t x, uint32_t y, int64_t delta, uint32_t w) {
      const uint32_t j = stat(x, y);
      PairStat& p = stats[j];
      p.count += delta;
      if (delta > 0) {
        if (p.words.empty() || p.words.back() != w) p.words.push_back(w);
        if (p.pushed_at != step) {
          p.pushed_at = step;
          touched.push_back(j);
        }
      }
    };
    for (uint32_t w : ws) {
      auto& s = words[w];
      const int64_t c = wcount[w];
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
    stats[idx].count = 0;
    for (uint32_t j : touched)
      if (stats[j].count > 0) heap.push({stats[j].count, stat_key[j]});
  }
  if (static_cast<int64_t>(next_id) < o.vocab_size)
    throw DataError("tokenizer training: the corpus has too few distinct pairs for vocab size " +
                    std::to_string(o.vocab_size) + " (reached " + std::to_string(next_id) + ")");

  auto m = std::make_shared<BpeTokenizer::Impl>();
  const size_t n = tb.size();
  m->tokens.resize(n);
  m->in_model.assign(n, 1);
  m->special.assign(n, 0);
  m->used.assign(n, 1);
  for (uint32_t i = 0; i < n; ++i) {
    m->tokens[i] = i < k ? tb[i] : bytes_to_unicode_string(tb[i]);
    m->vocab.emplace(m->tokens[i], i);
  }
  for (uint32_t i = 0; i < k; ++i) {
    m->special[i] = 1;
    m->added.push_back({i, tb[i], true, false});
  }
  m->merges = std::move(merges);
  m->merge_ids = std::move(merge_ids);
  m->pre = PreTokenizer::gpt4();
  m->finish("trained tokenizer");
  return m;
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

// ---------------------------------------------------------------- tokenizer.json

std::string BpeTokenizer::to_json() const {
  const Impl& m = *impl_;
  std::string s;
  s.reserve(m.tokens.size() * 40 + m.merges.size() * 40 + 4096);
  s += "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n";
  s += "  \"added_tokens\": [";
  for (size_t i = 0; i < m.added.size(); ++i) {
    const auto& t = m.added[i];
    s += i ? ",\n    " : "\n    ";
    s += "{\"id\": " + std::to_string(t.id) + ", \"content\": " + json_str(t.content) +
         ", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": " +
         (t.normalized ? "true" : "false") + ", \"special\": " + (t.special ? "true" : "false") +
         "}";
  }
  s += m.added.empty() ? "],\n" : "\n  ],\n";
  s += "  \"normalizer\": " + m.normalizer_json + ",\n";
  s += "  \"pre_tokenizer\": " + m.pre.to_json().dump() + ",\n";
  s += "  \"post_processor\": " + m.post_processor_json + ",\n";
  s += "  \"decoder\": " + m.decoder_json + ",\n";
  s += "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": null,\n";
  s += "    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n";
  s += "    \"fuse_unk\": false,\n    \"byte_fallback\": false,\n    \"ignore_merges\": ";
  s += m.ignore_merges ? "true" : "false";
  s += ",\n    \"vocab\": {";
  bool first = true;
  for (size_t id = 0; id < m.tokens.size(); ++id) {
    if (!m.in_model[id]) continue;
    s += first ? "\n      " : ",\n      ";
    first = false;
    s += json_str(m.tokens[id]) + ": " + std::to_string(id);
  }
  s += "\n    },\n    \"merges\": [";
  for (size_t r = 0; r < m.merges.size(); ++r) {
    s += r ? ",\n      " : "\n      ";
    const std::string& a = m.tokens[m.merges[r].first];
    const std::string& b = m.tokens[m.merges[r].second];
    if (a.find(' ') == std::string::npos && b.find(' ') == std::string::npos)
      s += json_str(a + " " + b);
    else {
      s += '[';
      s += json_str(a);
      s += ", ";
      s += json_str(b);
      s += ']';
    }
  }
  s += "\n    ]\n  }\n}\n";
  return s;
}

void BpeTokenizer::save(const std::string& path) const {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw DataError(path + ": cannot write tokenizer (" + std::strerror(errno) + ")");
    const std::string s = to_json();
    f.write(s.data(), static_cast<std::streamsize>(s.size()));
    f.close();
    if (!f) throw DataError(path + ": write failed");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw DataError(path + ": cannot rename " + tmp + ": " + ec.message());
}

BpeTokenizer BpeTokenizer::load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw DataError(path + ": cannot open tokenizer (" + std::strerror(errno) + ")");
  std::stringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw DataError(path + ": read failed");
  return from_json(ss.str(), path);
}

BpeTokenizer BpeTokenizer::from_json(std::string_view text, const std::string& origin) {
  using nlohmann::json;
  json j;
  try {
    j = json::parse(text);
  } catch (const json::exception& e) {
    throw DataError(origin + ": not valid JSON: " + e.what());
  }
  auto fail = [&](const std::string& msg) -> DataError { return DataError(origin + ": " + msg); };
  if (!j.is_object()) throw fail("not a JSON object (expected a Hugging Face tokenizer.json)");
  if (!j.contains("model") || !j["model"].is_object()) throw fail("missing \"model\" object");
  const json& model = j["model"];
  if (!model.contains("type") || !model["type"].is_string())
    throw fail("model has no \"type\" (only \"BPE\" is supported)");
  if (model["type"] != "BPE")
    throw fail("model type \"" + model["type"].get<std::string>() +
               "\" is not supported (only byte-level \"BPE\")");

  auto m = std::make_shared<Impl>();
  // normalizer: none (null or an empty Sequence)
  if (j.contains("normalizer") && !j["normalizer"].is_null()) {
    const json& n = j["normalizer"];
    if (!(n.is_object() && n.value("type", "") == "Sequence" && n.contains("normalizers") &&
          n["normalizers"].is_array() && n["normalizers"].empty()))
      throw fail("normalizer " + n.dump().substr(0, 200) + " is not supported (only none)");
    m->normalizer_json = n.dump();
  }
  if (!j.contains("pre_tokenizer") || j["pre_tokenizer"].is_null())
    throw fail("no pre_tokenizer: only byte-level BPE (a ByteLevel pre-tokenizer) is supported");
  try {
    m->pre = PreTokenizer::from_json(j["pre_tokenizer"]);
  } catch (const std::invalid_argument& e) {
    throw fail(e.what());
  }
  if (j.contains("decoder") && !j["decoder"].is_null()) {
    const json& d = j["decoder"];
    if (!d.is_object() || d.value("type", "") != "ByteLevel")
      throw fail("decoder " + d.dump().substr(0, 200) + " is not supported (only ByteLevel)");
    m->decoder_json = d.dump();
  }
  if (j.contains("post_processor")) m->post_processor_json = j["post_processor"].dump();

  auto null_or = [&](const char* key, auto ok) {
    return !model.contains(key) || model[key].is_null() || ok(model[key]);
  };
  if (!null_or("dropout", [](const json& v) { return v.is_number() && v.get<double>() == 0; }))
    throw fail("model.dropout is not supported");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (!null_or(key, [](const json& v) { return v.is_string() && v.get<std::string>().empty(); }))
      throw fail(std::string("model.") + key + " is not supported");
  if (!null_or("byte_fallback", [](const json& v) { return v.is_boolean() && !v.get<bool>(); }))
    throw fail("model.byte_fallback is not supported");
  if (model.contains("ignore_merges") && model["ignore_merges"].is_boolean())
    m->ignore_merges = model["ignore_merges"].get<bool>();

  if (!model.contains("vocab") || !model["vocab"].is_object())
    throw fail("model.vocab is missing or not an object");
  uint32_t max_id = 0;
  std::vector<std::pair<uint32_t, std::string>> entries;
  for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it) {
    if (!it.value().is_number_unsigned() || it.value().get<uint64_t>() >= (uint64_t{1} << 31))
      throw fail("model.vocab[" + json(it.key()).dump() + "] is not a valid id");
    const auto id = it.value().get<uint32_t>();
    entries.emplace_back(id, it.key());
    max_id = std::max(max_id, id);
  }
  if (entries.empty()) throw fail("model.vocab is empty");
  const size_t model_size = entries.size();
  m->tokens.assign(max_id + 1, std::string());
  m->in_model.assign(max_id + 1, 0);
  m->used.assign(max_id + 1, 0);
  for (auto& [id, tok] : entries) {
    if (m->used[id])
      throw fail("model.vocab: id " + std::to_string(id) + " is given to both " +
                 json(m->tokens[id]).dump() + " and " + json(tok).dump());
    m->used[id] = m->in_model[id] = 1;
    m->vocab.emplace(tok, id);
    m->tokens[id] = std::move(tok);
  }

  // merges: "a b" or ["a", "b"]
  if (!model.contains("merges") || !model["merges"].is_array())
    throw fail("model.merges is missing or not an array");
  const json& merges = model["merges"];
  m->merges.reserve(merges.size());
  m->merge_ids.reserve(merges.size());
  for (size_t r = 0; r < merges.size(); ++r) {
    const json& e = merges[r];
    std::string a, b;
    if (e.is_string()) {
      const std::string s = e.get<std::string>();
      const size_t sp = s.find(' ');
      if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
        throw fail("model.merges[" + std::to_string(r) + "] " + e.dump() +
                   " is not two tokens separated by one space");
      a = s.substr(0, sp);
      b = s.substr(sp + 1);
    } else if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string()) {
      a = e[0].get<std::string>();
      b = e[1].get<std::string>();
    } else {
      throw fail("model.merges[" + std::to_string(r) + "] is neither \"a b\" nor [a, b]");
    }
    auto ia = m->vocab.find(a), ib = m->vocab.find(b), iab = m->vocab.find(a + b);
    if (ia == m->vocab.end() || ib == m->vocab.end() || iab == m->vocab.end())
      throw fail("model.merges[" + std::to_string(r) + "] " + e.dump() + ": " +
                 json(ia == m->vocab.end()   ? a
                      : ib == m->vocab.end() ? b
                                             : a + b)
                     .dump() +
                 " is not in the vocab");
    m->merges.emplace_back(ia->second, ib->second);
    m->merge_ids.push_back(iab->second);
  }

  // added tokens, with HF's id assignment (AddedVocabulary::add_tokens)
  std::optional<uint32_t> max_added;
  if (j.contains("added_tokens") && !j["added_tokens"].is_null()) {
    if (!j["added_tokens"].is_array()) throw fail("added_tokens is not an array");
    for (const json& t : j["added_tokens"]) {
      if (!t.is_object() || !t.contains("content") || !t["content"].is_string() ||
          !t.contains("id") || !t["id"].is_number_unsigned())
        throw fail("added_tokens: entry " + t.dump().substr(0, 200) + " lacks id or content");
      AddedToken a;
      a.content = t["content"].get<std::string>();
      a.special = t.value("special", false);
      a.normalized = t.value("normalized", !a.special);
      if (a.content.empty()) throw fail("added_tokens: empty content");
      for (const char* key : {"lstrip", "rstrip", "single_word"})
        if (t.value(key, false))
          throw fail("added token " + json(a.content).dump() + ": " + key + " is not supported");
      const auto file_id = t["id"].get<uint64_t>();
      uint32_t id;
      if (auto it = m->vocab.find(a.content); it != m->vocab.end()) {
        id = it->second;
      } else if (auto it2 =
                     std::find_if(m->added.begin(), m->added.end(),
                                  [&](const AddedToken& x) { return x.content == a.content; });
                 it2 != m->added.end()) {
        continue;  // a repeated added token: HF keeps the first
      } else {
        id = max_added && *max_added >= model_size ? *max_added + 1
                                                   : static_cast<uint32_t>(model_size);
      }
      if (file_id != id)
        throw fail("added token " + json(a.content).dump() + " has id " + std::to_string(file_id) +
                   " but Hugging Face would give it id " + std::to_string(id));
      a.id = id;
      max_added = max_added ? std::max(*max_added, id) : id;
      if (id >= m->tokens.size()) {
        m->tokens.resize(id + 1);
        m->in_model.resize(id + 1, 0);
        m->used.resize(id + 1, 0);
      }
      if (!m->in_model[id]) m->tokens[id] = a.content;
      m->used[id] = 1;
      m->added.push_back(std::move(a));
    }
  }
  m->special.assign(m->tokens.size(), 0);
  for (const auto& a : m->added)
    if (a.special) m->special[a.id] = 1;
  m->finish(origin);
  return BpeTokenizer(m);
}

}  // namespace moetron::data
