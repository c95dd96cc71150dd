// Byte-level tokenizer: id = byte value (0..255), then special tokens. A stand-in until the BPE
// tokenizer (data pipeline issue) lands; every byte sequence encodes and decodes exactly.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "data/token_file.h"

namespace moetron::data {

struct ByteTokenizer {
  static constexpr uint32_t kBos = 256, kEos = 257, kPad = 258;
  static constexpr int64_t kVocabSize = 264;  // 256 bytes + 8 special slots
  static constexpr const char* kName = "bytes-v1";
  std::vector<uint32_t> encode(const std::string& text) const;
  std::string decode(const std::vector<uint32_t>& ids) const;  // specials are skipped
};

// Reads text files (or directories of .txt files, sorted by name), one document per file,
// encodes them with the byte tokenizer, and writes a token file with EOS after each document.
// Throws DataError on a missing/unreadable input or an empty corpus.
TokenFileInfo text_to_token_file(const std::vector<std::string>& inputs, const std::string& out);

}  // namespace moetron::data
