// Byte-level BPE tokenizer (see bpe.h), part 1 of 3: encoding and decoding, the accessors, and
// Impl::finish, which turns a filled Impl (from bpe_train.cpp or bpe_json.cpp) into a usable one.
//
// Encoding a piece: its bytes become byte-token ids, then merges are applied in HF's order
// (lowest rank, then leftmost). Short pieces (the vast majority) use a linear scan over a small
// rank array; long ones (> kHeapThreshold symbols) a linked list plus a min-heap of (rank,
// position), as HF's Word::merge_all does; both give the same result. Pair -> (rank, new id)
// lookups go through an open-addressing hash table keyed by (left << 32 | right). Results for
// pieces up to kMaxCachedPiece bytes are cached per thread.
#include "data/bpe.h"

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <exception>
#include <functional>
#include <mutex>
#include <queue>
#include <thread>

#include "data/bpe_impl.h"

namespace moetron::data {

using bpe_internal::kNone;
using bpe_internal::MergeTable;
using bpe_internal::pair_key;
using bpe_internal::PieceCache;

namespace {

constexpr size_t kHeapThreshold = 48;    // symbols; above it, merge with the heap
constexpr size_t kMaxCachedPiece = 256;  // bytes

std::atomic<uint64_t> g_serial{1};

struct Fnv {
  uint64_t h = 0xcbf29ce484222325ull;
  void add(std::string_view s) {
    for (unsigned char c : s) h = (h ^ c) * 0x100000001b3ull;
  }
  void add_u64(uint64_t v) {
    for (int i = 0; i < 8; ++i) h = (h ^ ((v >> (8 * i)) & 0xFF)) * 0x100000001b3ull;
  }
};

// FNV-1a 64 over a canonical text of everything that determines ids (see bpe.h).
uint64_t canonical_hash(const BpeTokenizer::Impl& m) {
  const size_t n = m.tokens.size();
  Fnv f;
  f.add("moetron-bpe-v1\n");
  f.add(m.pre.canonical());
  f.add_u64(n);
  for (size_t id = 0; id < n; ++id) {
    f.add(m.tokens[id]);
    f.add(std::string_view("\0", 1));
    f.add_u64(static_cast<uint64_t>(m.used[id]) | (static_cast<uint64_t>(m.in_model[id]) << 1) |
              (static_cast<uint64_t>(m.special[id]) << 2));
  }
  f.add_u64(m.merges.size());
  for (const auto& mg : m.merges) f.add_u64(pair_key(mg.first, mg.second));
  f.add_u64(m.added.size());
  for (const auto& t : m.added) {
    f.add_u64(t.id);
    f.add(t.content);
    f.add_u64((t.special ? 1 : 0) | (t.normalized ? 2 : 0));
  }
  f.add_u64(m.ignore_merges ? 1 : 0);
  return f.h;
}

// Merges a short piece's symbols in place, lowest rank first, leftmost on ties, by scanning a
// rank array; returns how many symbols are left (the first ones of *symbols).
size_t merge_by_scan(const MergeTable& table, std::vector<uint32_t>* symbols) {
  thread_local std::vector<uint32_t> rank;
  std::vector<uint32_t>& sym = *symbols;
  size_t n = sym.size();
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
  return n;
}

// The same merges for a long piece: a linked list plus a min-heap of (rank << 32 | position);
// appends the merged symbols to *out.
void merge_by_heap(const MergeTable& table, std::vector<uint32_t>* symbols,
                   std::vector<uint32_t>* out) {
  std::vector<uint32_t>& sym = *symbols;
  const size_t n = sym.size();
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

std::optional<uint32_t> first_of(const BpeTokenizer& t, std::initializer_list<const char*> names) {
  for (const char* n : names)
    if (auto id = t.token_to_id(n)) return id;
  return std::nullopt;
}

}  // namespace

namespace bpe_internal {
uint64_t next_serial() { return g_serial.fetch_add(1); }
}  // namespace bpe_internal

// ---------------------------------------------------------------- building the derived tables

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
  hash = canonical_hash(*this);
}

// ---------------------------------------------------------------- encoding one piece

void BpeTokenizer::Impl::bpe(std::string_view piece, std::vector<uint32_t>* out) const {
  if (ignore_merges) {
    auto it = vocab.find(bytes_to_unicode_string(piece));
    if (it != vocab.end()) {
      out->push_back(it->second);
      return;
    }
  }
  thread_local std::vector<uint32_t> sym;
  sym.clear();
  for (unsigned char b : piece) sym.push_back(byte_id[b]);
  if (sym.size() <= kHeapThreshold) {
    const size_t n = merge_by_scan(table, &sym);
    out->insert(out->end(), sym.begin(), sym.begin() + static_cast<std::ptrdiff_t>(n));
    return;
  }
  merge_by_heap(table, &sym, out);
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

std::optional<uint32_t> BpeTokenizer::bos_id() const {
  return first_of(*this, {kBos, "<|begin_of_text|>", "<s>", "<|startoftext|>"});
}
std::optional<uint32_t> BpeTokenizer::eos_id() const {
  return first_of(*this, {kEos, "<|endoftext|>", "<|end_of_text|>", "</s>"});
}
std::optional<uint32_t> BpeTokenizer::pad_id() const {
  return first_of(*this, {kPad, "<pad>", "<|pad|>"});
}

}  // namespace moetron::data
