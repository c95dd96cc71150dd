// Token files: HDF5 files holding a 1-D dataset of token ids, read with random access.
//
// Layout (ARCHITECTURE "Data formats"): dataset "tokens" (uint32, 1-D, chunked, deflate),
// dataset "doc_offsets" (uint64, n_docs+1 entries: document d is tokens[off[d], off[d+1])),
// root attributes "vocab_size" (int64), "tokenizer" (string: name or hash of the tokenizer),
// "source" (string). All indexing is 64-bit. A reader never loads the whole dataset.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

namespace moetron::data {

// Any problem with a data file; what() names the file and what was expected.
struct DataError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct TokenFileInfo {
  int64_t n_tokens = 0;
  int64_t n_docs = 0;
  int64_t vocab_size = 0;
  std::string tokenizer;
  std::string source;
};

class TokenFile {
 public:
  // Opens and validates (exists, is HDF5, has a 1-D unsigned 32-bit "tokens" dataset, a
  // consistent "doc_offsets", a positive vocab_size). Throws DataError.
  explicit TokenFile(const std::string& path);
  ~TokenFile();
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;

  const TokenFileInfo& info() const { return info_; }
  const std::string& path() const { return path_; }
  // Reads tokens [start, start+n) into out. Throws DataError if out of range, or if any id is
  // not below vocab_size (a corrupt or foreign file).
  void read(int64_t start, int64_t n, uint32_t* out) const;
  // Document offsets [d, d+n+1) (n documents need n+1 offsets).
  std::vector<uint64_t> doc_offsets(int64_t d, int64_t n) const;

 private:
  std::string path_;
  TokenFileInfo info_;
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Writes a token file (atomically: to path + ".tmp", then renamed). Throws DataError.
void write_token_file(const std::string& path, const std::vector<uint32_t>& tokens,
                      const std::vector<uint64_t>& doc_offsets, int64_t vocab_size,
                      const std::string& tokenizer, const std::string& source);

// HDF5 as packaged by Debian (serial build) is not thread-safe: every HDF5 call in the process
// must hold this one mutex. TokenFile and write_token_file take it themselves; other code that
// calls HDF5 (checkpoints) should take it too so that it can run beside a data prefetch thread.
std::mutex& hdf5_mutex();

}  // namespace moetron::data
