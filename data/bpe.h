// Byte-level BPE tokenizer (DeepSeek-V3 / GPT-4 style), compatible with Hugging Face `tokenizers`.
//
// Model. Text is first cut at added (special) tokens when they are allowed, then each segment is
// pre-tokenized (data/pretokenize.h: the GPT-4 style split by default), and every piece is
// encoded from its bytes: each byte starts as its own token (the 256 bytes are written in vocab
// strings with GPT-2's byte-to-unicode alphabet), then merges are applied lowest rank first,
// leftmost first on ties (exactly HF's BPE::merge_word). Every byte sequence encodes, and
// decode(encode(x)) == x for any bytes (invalid UTF-8 included; HF itself only takes UTF-8).
//
// Special tokens. A trained tokenizer has ids 0, 1, 2 = BOS, EOS, pad with DeepSeek-V3's names
// (kBos, kEos, kPad), then the user's special tokens, then the 256 byte tokens (id = 3 + k + byte),
// then one id per merge. Special tokens are in the model vocab and in "added_tokens"
// (special: true), so HF assigns them the same ids. encode() matches them in the text only when
// allow_special is true (HF always does; moetron's corpus encoding does not, so a document that
// happens to contain "<｜end▁of▁sentence｜>" cannot inject an EOS).
//
// Training (train()): counts the pieces of the corpus (unique pre-tokens with counts, special
// token strings cut out), then merges greedily: the most frequent adjacent pair, ties broken by
// the smaller (left id, right id); pair counts are updated incrementally per merge from the words
// that contain the pair (a lazy max-heap holds the candidates), never recounted. The result has
// exactly vocab_size tokens, or training throws if the corpus has too few distinct pairs.
//
// File format: HF tokenizer.json {"version": "1.0", "truncation": null, "padding": null,
// "added_tokens": [...], "normalizer": null, "pre_tokenizer": Sequence[Split(regex, Isolated),
// ByteLevel(add_prefix_space=false, use_regex=false)], "post_processor": ByteLevel,
// "decoder": ByteLevel, "model": {"type": "BPE", ..., "vocab": {token: id}, "merges": ["a b"]}}.
// load() also reads merges written as [a, b] pairs and any HF byte-level BPE tokenizer.json whose
// normalizer is null or an empty Sequence and whose pre_tokenizer is built from Split/ByteLevel
// (e.g. DeepSeek-V3's, GPT-2's). Added tokens not in the model vocab get HF's ids (after the
// vocab); a file whose ids disagree with those is rejected. lstrip/rstrip/single_word added
// tokens are not supported (rejected).
//
// Hash. tokenizer_hash() is FNV-1a 64 over a canonical text of everything that determines ids:
// the pre-tokenizer configuration, every id's vocab string, the merges (as id pairs), the added
// tokens (id, content, special, normalized) and ignore_merges. name() = "bpe-" + 16 hex digits is
// what shards record as their "tokenizer" (data/shard_writer.h) and what a Dataset checks.
//
// Threads: a BpeTokenizer is immutable and may be shared. encode() keeps a per-thread cache of
// piece -> ids; encode_batch() gives worker t the tokenizer's cache slot t (kept across calls, so
// streaming batch after batch stays warm; concurrent encode_batch calls on one tokenizer share
// the slots and so run one after the other). Caches are bounded (~30 MB each, then reset).
//
// Sources: bpe.cpp encodes and decodes, bpe_train.cpp trains, bpe_json.cpp reads and writes
// tokenizer.json; bpe_impl.h (private) holds the state they share.
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "data/token_file.h"

namespace moetron::data {

class Corpus;
class PreTokenizer;

struct AddedToken {
  uint32_t id = 0;
  std::string content;
  bool special = true;
  bool normalized = false;  // HF matches normalized tokens in a second pass
};

struct BpeTrainOptions {
  int64_t vocab_size = 32000;               // total, specials and the 256 bytes included
  std::vector<std::string> special_tokens;  // user-defined, ids after BOS/EOS/pad
};

class BpeTokenizer {
 public:
  static constexpr const char* kBos = "<｜begin▁of▁sentence｜>";
  static constexpr const char* kEos = "<｜end▁of▁sentence｜>";
  static constexpr const char* kPad = "<｜▁pad▁｜>";

  // Training. Throws DataError on a vocab_size below specials + 256, duplicate or empty special
  // tokens, or a corpus with too few distinct pairs to reach vocab_size.
  static BpeTokenizer train(Corpus& corpus, const BpeTrainOptions& options);
  static BpeTokenizer train(const std::vector<std::string>& texts, const BpeTrainOptions& options);

  // tokenizer.json. load() throws DataError "PATH: ..." on a missing/unreadable file, invalid
  // JSON, a model type other than BPE, or anything unsupported (see the note at the top).
  static BpeTokenizer load(const std::string& path);
  static BpeTokenizer from_json(std::string_view json, const std::string& origin);
  std::string to_json() const;
  void save(const std::string& path) const;  // atomic (tmp + rename); throws DataError

  // Appends the ids of `text` to *out.
  void encode(std::string_view text, std::vector<uint32_t>* out, bool allow_special = false) const;
  std::vector<uint32_t> encode(std::string_view text, bool allow_special = false) const;
  // Encodes texts[i] into result[i] with `threads` threads (<= 0: hardware concurrency).
  std::vector<std::vector<uint32_t>> encode_batch(const std::vector<std::string>& texts,
                                                  int threads, bool allow_special = false) const;
  // The bytes of `ids`; special tokens are dropped when skip_special. Throws DataError on an id
  // that is not in the vocabulary.
  std::string decode(std::span<const uint32_t> ids, bool skip_special = false) const;

  int64_t vocab_size() const;  // max id + 1
  int64_t n_merges() const;
  uint64_t tokenizer_hash() const;
  std::string name() const;  // "bpe-<16 hex digits of tokenizer_hash()>"
  const std::vector<AddedToken>& added_tokens() const;
  const PreTokenizer& pre_tokenizer() const;
  // The id of a vocab string (byte-level alphabet) or added token content.
  std::optional<uint32_t> token_to_id(std::string_view token) const;
  const std::string& id_to_token(uint32_t id) const;  // "" for an unused id
  // BOS / EOS / pad: the DeepSeek-V3 names, else common alternatives ("<|endoftext|>" for EOS,
  // "<s>", "</s>", "<pad>"). nullopt if the tokenizer has none.
  std::optional<uint32_t> bos_id() const;
  std::optional<uint32_t> eos_id() const;
  std::optional<uint32_t> pad_id() const;

  struct Impl;

 private:
  explicit BpeTokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}
  std::shared_ptr<const Impl> impl_;
};

}  // namespace moetron::data
