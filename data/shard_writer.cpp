// Shard writer and index reader (see shard_writer.h).
//
// The writer keeps one shard's tokens and doc_offsets in memory and hands them to
// write_token_file when the next document would overflow the shard; write_token_file does the
// tmp + rename and takes hdf5_mutex(). The index is JSON (nlohmann-json), written to
// `<index>.tmp`, fsynced and renamed after the last shard.
#include "data/shard_writer.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cinttypes>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <utility>

#include "data/corpus.h"

namespace moetron::data {

namespace fs = std::filesystem;

namespace {

constexpr const char* kIndexFormat = "moetron-shards-v1";
constexpr int64_t kMaxVocab = int64_t{1} << 32;

std::string dir_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

std::string base_of(const std::string& path) {
  const size_t slash = path.find_last_of('/');
  return slash == std::string::npos ? path : path.substr(slash + 1);
}

void fsync_path(const std::string& p, int flags) {
  const int fd = ::open(p.c_str(), flags);
  if (fd < 0) return;
  ::fsync(fd);
  ::close(fd);
}

// Writes `text` to path atomically (tmp, fsync, rename, fsync of the directory).
void write_atomically(const std::string& path, const std::string& text) {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    if (!out) throw DataError(path + ": cannot create " + tmp);
    out << text;
    out.flush();
    if (!out) {
      std::remove(tmp.c_str());
      throw DataError(path + ": write to " + tmp + " failed");
    }
  }
  fsync_path(tmp, O_RDONLY);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    std::remove(tmp.c_str());
    throw DataError(path + ": cannot rename " + tmp + " to it: " + why);
  }
  fsync_path(dir_of(path), O_RDONLY | O_DIRECTORY);
}

}  // namespace

ShardWriter::ShardWriter(std::string out_prefix, int64_t max_tokens_per_shard, int64_t vocab_size,
                         std::string tokenizer, std::string source)
    : prefix_(std::move(out_prefix)), max_tokens_(max_tokens_per_shard) {
  if (prefix_.empty()) throw DataError("ShardWriter: empty output prefix");
  if (max_tokens_ < 1) {
    throw DataError(prefix_ + ": max_tokens_per_shard must be >= 1, got " +
                    std::to_string(max_tokens_));
  }
  if (vocab_size < 1 || vocab_size > kMaxVocab) {
    throw DataError(prefix_ + ": vocab_size must be in [1, 2^32], got " +
                    std::to_string(vocab_size));
  }
  if (tokenizer.empty()) throw DataError(prefix_ + ": tokenizer name/hash must not be empty");
  const std::string dir = dir_of(prefix_);
  struct stat st {};
  if (::stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    throw DataError(prefix_ + ": cannot write shards: directory " + dir + " does not exist");
  }
  index_.tokenizer = std::move(tokenizer);
  index_.vocab_size = vocab_size;
  index_.source = std::move(source);
  index_.max_tokens_per_shard = max_tokens_;
  // An index from an earlier run would describe shards this run overwrites: drop it first.
  if (std::remove(index_path().c_str()) != 0 && errno != ENOENT) {
    throw DataError(index_path() + ": cannot remove the old index: " + std::strerror(errno));
  }
  offsets_.push_back(0);
}

std::string ShardWriter::shard_path(int64_t i) const {
  char num[32];
  std::snprintf(num, sizeof(num), "_%05" PRId64 ".h5", i);
  return prefix_ + num;
}

void ShardWriter::flush() {
  const std::string path = shard_path(shards_written());
  write_token_file(path, buf_, offsets_, index_.vocab_size, index_.tokenizer, index_.source);
  ShardEntry e;
  e.path = path;
  e.n_tokens = static_cast<int64_t>(buf_.size());
  e.n_docs = static_cast<int64_t>(offsets_.size()) - 1;
  e.continues_previous = buf_continues_;
  index_.shards.push_back(std::move(e));
  buf_.clear();
  offsets_.assign(1, 0);
  buf_continues_ = false;
}

void ShardWriter::add(std::span<const uint32_t> doc) {
  if (finished_) throw DataError(prefix_ + ": add() after finish()");
  const uint64_t vocab = static_cast<uint64_t>(index_.vocab_size);
  for (size_t i = 0; i < doc.size(); ++i) {
    if (doc[i] >= vocab) {
      throw DataError(prefix_ + ": document " + std::to_string(n_docs_) + ": token id " +
                      std::to_string(doc[i]) + " at position " + std::to_string(i) +
                      " is not below vocab_size " + std::to_string(index_.vocab_size));
    }
  }
  const int64_t len = static_cast<int64_t>(doc.size());
  size_t pos = 0;
  if (len > max_tokens_) {
    // Longer than a shard: full shards of max_tokens_, the remainder starts the next shard.
    if (!buf_.empty() || offsets_.size() > 1) flush();
    ++index_.split_docs;
    int64_t left = len;
    bool first = true;
    while (left > max_tokens_) {
      buf_.assign(doc.begin() + static_cast<std::ptrdiff_t>(pos),
                  doc.begin() + static_cast<std::ptrdiff_t>(pos) + max_tokens_);
      offsets_.push_back(static_cast<uint64_t>(max_tokens_));
      buf_continues_ = !first;
      flush();
      first = false;
      pos += static_cast<size_t>(max_tokens_);
      left -= max_tokens_;
    }
    buf_continues_ = true;
  } else if (static_cast<int64_t>(buf_.size()) + len > max_tokens_) {
    flush();
  }
  buf_.insert(buf_.end(), doc.begin() + static_cast<std::ptrdiff_t>(pos), doc.end());
  offsets_.push_back(buf_.size());
  n_tokens_ += len;
  ++n_docs_;
}

ShardIndex ShardWriter::finish() {
  if (finished_) throw DataError(prefix_ + ": finish() called twice");
  if (n_tokens_ == 0) {
    throw DataError(prefix_ + ": no tokens written (" + std::to_string(n_docs_) +
                    " documents): empty corpus, no shards or index written");
  }
  if (!buf_.empty() || offsets_.size() > 1) flush();
  finished_ = true;
  index_.n_tokens = n_tokens_;
  index_.n_docs = n_docs_;

  nlohmann::json j;
  j["format"] = kIndexFormat;
  j["tokenizer"] = index_.tokenizer;
  j["vocab_size"] = index_.vocab_size;
  j["source"] = index_.source;
  j["max_tokens_per_shard"] = index_.max_tokens_per_shard;
  j["n_tokens"] = index_.n_tokens;
  j["n_docs"] = index_.n_docs;
  j["split_docs"] = index_.split_docs;
  nlohmann::json shards = nlohmann::json::array();
  for (const ShardEntry& e : index_.shards) {
    shards.push_back({{"file", base_of(e.path)},
                      {"n_tokens", e.n_tokens},
                      {"n_docs", e.n_docs},
                      {"continues_previous", e.continues_previous}});
  }
  j["shards"] = std::move(shards);
  write_atomically(index_path(), j.dump(1) + "\n");
  buf_.shrink_to_fit();
  return index_;
}

ShardIndex read_shard_index(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    std::error_code ec;
    if (!fs::exists(path, ec)) throw DataError(path + ": no such shard index file");
    throw DataError(path + ": cannot open shard index for reading");
  }
  const std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw DataError(path + ": shard index is not valid JSON (" + e.what() + ")");
  }
  auto field = [&](const nlohmann::json& obj, const char* name, const std::string& where) {
    if (!obj.is_object() || !obj.contains(name)) {
      throw DataError(path + ": shard index: " + where + "missing field '" + name + "'");
    }
    return obj.at(name);
  };
  auto integer = [&](const nlohmann::json& obj, const char* name, const std::string& where) {
    const nlohmann::json v = field(obj, name, where);
    if (!v.is_number_integer() || v.get<int64_t>() < 0) {
      throw DataError(path + ": shard index: " + where + "field '" + name +
                      "' must be a non-negative integer");
    }
    return v.get<int64_t>();
  };
  auto string = [&](const nlohmann::json& obj, const char* name, const std::string& where) {
    const nlohmann::json v = field(obj, name, where);
    if (!v.is_string()) {
      throw DataError(path + ": shard index: " + where + "field '" + name + "' must be a string");
    }
    return v.get<std::string>();
  };
  if (!j.is_object()) throw DataError(path + ": shard index must be a JSON object");
  const std::string format = string(j, "format", "");
  if (format != kIndexFormat) {
    throw DataError(path + ": shard index format is '" + format + "', expected '" + kIndexFormat +
                    "'");
  }
  ShardIndex idx;
  idx.tokenizer = string(j, "tokenizer", "");
  idx.vocab_size = integer(j, "vocab_size", "");
  idx.source = string(j, "source", "");
  idx.max_tokens_per_shard = integer(j, "max_tokens_per_shard", "");
  idx.n_tokens = integer(j, "n_tokens", "");
  idx.n_docs = integer(j, "n_docs", "");
  idx.split_docs = integer(j, "split_docs", "");
  const nlohmann::json shards = field(j, "shards", "");
  if (!shards.is_array() || shards.empty()) {
    throw DataError(path + ": shard index: 'shards' must be a non-empty array");
  }
  const std::string dir = dir_of(path);
  int64_t total = 0;
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string where = "shards[" + std::to_string(i) + "]: ";
    ShardEntry e;
    const std::string file = string(shards[i], "file", where);
    if (file.empty()) throw DataError(path + ": shard index: " + where + "empty file name");
    e.path = file[0] == '/' ? file : dir + "/" + file;
    e.n_tokens = integer(shards[i], "n_tokens", where);
    e.n_docs = integer(shards[i], "n_docs", where);
    const nlohmann::json c = field(shards[i], "continues_previous", where);
    if (!c.is_boolean()) {
      throw DataError(path + ": shard index: " + where +
                      "field 'continues_previous' must be true or false");
    }
    e.continues_previous = c.get<bool>();
    total += e.n_tokens;
    idx.shards.push_back(std::move(e));
  }
  if (total != idx.n_tokens) {
    throw DataError(path + ": shard index: n_tokens is " + std::to_string(idx.n_tokens) +
                    " but its shards add up to " + std::to_string(total));
  }
  return idx;
}

ShardIndex write_corpus_shards(Corpus& corpus,
                               const std::function<std::vector<uint32_t>(std::string_view)>& encode,
                               uint32_t eos, ShardWriter& writer) {
  Document doc;
  while (corpus.next(&doc)) {
    std::vector<uint32_t> ids = encode(doc.text);
    ids.push_back(eos);
    try {
      writer.add(ids);
    } catch (const DataError& e) {
      throw DataError(doc.origin + ": " + e.what());
    }
  }
  return writer.finish();
}

}  // namespace moetron::data
