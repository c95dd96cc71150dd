// Private to the BPE tokenizer (data/bpe.cpp, bpe_train.cpp, bpe_json.cpp): the tokenizer's
// state (BpeTokenizer::Impl) and the small tables it is built from.
//
// The tokenizer is split by job: bpe.cpp encodes and decodes (and builds the derived tables and
// the hash every tokenizer gets, Impl::finish), bpe_train.cpp trains one from a corpus and
// bpe_json.cpp reads and writes tokenizer.json. All three fill or read the one Impl below, so it
// lives here rather than in the public header (data/bpe.h), which keeps it opaque.
//
// MergeTable: open-addressing map (left, right) -> (rank, new id), the inner loop of encoding.
// TokenMatcher: leftmost-longest matching of literal strings (added tokens, and the special tokens
// cut out of a training corpus). PieceCache: a per-thread (or per-worker) piece -> ids cache whose
// entries live in two arenas, bounded to about 30 MB.
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "data/bpe.h"
#include "data/pretokenize.h"

namespace moetron::data {

namespace bpe_internal {

constexpr uint32_t kNone = 0xFFFFFFFFu;
// per-thread cache bounds (about 30 MB at most); the cache is reset when one would be passed
constexpr size_t kMaxCacheEntries = 1 << 18, kMaxCacheIds = 1 << 20, kMaxCacheKeyBytes = 16 << 20;

inline uint64_t pair_key(uint32_t a, uint32_t b) { return (static_cast<uint64_t>(a) << 32) | b; }

// A fresh serial for each tokenizer (tags the thread_local caches of encode()).
uint64_t next_serial();

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

}  // namespace bpe_internal

// Everything a tokenizer is: filled by training (bpe_train.cpp) or tokenizer.json (bpe_json.cpp),
// then finish() builds the derived tables; immutable after that (but for the caches).
struct BpeTokenizer::Impl {
  using MergeTable = bpe_internal::MergeTable;
  using PieceCache = bpe_internal::PieceCache;
  using SvHash = bpe_internal::SvHash;
  using TokenMatcher = bpe_internal::TokenMatcher;

  uint64_t serial = bpe_internal::next_serial();
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

}  // namespace moetron::data
