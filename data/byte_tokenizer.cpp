// Byte-level tokenizer and the text -> token file converter behind `moetron prepare-text`.
//
// Every byte is its own id (0..255), so any byte sequence round-trips exactly; ids 256..263 are
// special tokens (BOS, EOS, PAD, spare) that decode() drops. text_to_token_file turns files or
// directories of .txt files into one token file: one document per file, in the order given
// (directories contribute their .txt files sorted by name, so the result does not depend on
// directory listing order), each followed by EOS. It holds the corpus in memory, which suits
// the demo corpora it is for; the BPE pipeline will stream.
#include "data/byte_tokenizer.h"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <system_error>

#include "data/token_file.h"

namespace moetron::data {

namespace fs = std::filesystem;

std::vector<uint32_t> ByteTokenizer::encode(const std::string& text) const {
  std::vector<uint32_t> ids(text.size());
  std::transform(text.begin(), text.end(), ids.begin(),
                 [](char c) { return static_cast<uint32_t>(static_cast<unsigned char>(c)); });
  return ids;
}

std::string ByteTokenizer::decode(const std::vector<uint32_t>& ids) const {
  std::string text;
  text.reserve(ids.size());
  for (uint32_t id : ids) {
    if (id < 256) text.push_back(static_cast<char>(static_cast<unsigned char>(id)));
  }
  return text;
}

namespace {

constexpr size_t kMaxSourceChars = 1024;

bool ends_with_txt(const std::string& name) {
  return name.size() >= 4 && name.compare(name.size() - 4, 4, ".txt") == 0;
}

// The documents named by one input: the file itself, or a directory's .txt files by name.
std::vector<fs::path> expand_input(const std::string& input) {
  std::error_code ec;
  const fs::file_status st = fs::status(input, ec);
  if (ec || !fs::exists(st)) throw DataError(input + ": no such file or directory");
  if (fs::is_regular_file(st)) return {fs::path(input)};
  if (!fs::is_directory(st)) throw DataError(input + ": not a regular file or directory");
  std::vector<fs::path> files;
  fs::directory_iterator it(input, ec);
  if (ec) throw DataError(input + ": cannot list directory: " + ec.message());
  for (const fs::directory_entry& entry : it) {
    const std::string name = entry.path().filename().string();
    std::error_code fec;
    if (ends_with_txt(name) && entry.is_regular_file(fec)) files.push_back(entry.path());
  }
  std::sort(files.begin(), files.end(), [](const fs::path& a, const fs::path& b) {
    return a.filename().string() < b.filename().string();
  });
  return files;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError(path.string() + ": cannot open for reading");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw DataError(path.string() + ": read error");
  return bytes;
}

std::string join_sources(const std::vector<std::string>& inputs) {
  std::string joined;
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::string& next = inputs[i];
    if (joined.size() + next.size() + 1 > kMaxSourceChars) {
      if (i == 0) return next.substr(0, kMaxSourceChars) + "...";
      return joined + ",...(" + std::to_string(inputs.size() - i) + " more)";
    }
    if (i > 0) joined += ',';
    joined += next;
  }
  return joined;
}

}  // namespace

TokenFileInfo text_to_token_file(const std::vector<std::string>& inputs, const std::string& out) {
  std::vector<fs::path> docs;
  for (const std::string& input : inputs) {
    for (fs::path& p : expand_input(input)) docs.push_back(std::move(p));
  }
  const ByteTokenizer tok;
  std::vector<uint32_t> tokens;
  std::vector<uint64_t> offsets{0};
  uint64_t text_bytes = 0;
  for (const fs::path& doc : docs) {
    const std::string bytes = read_file(doc);
    text_bytes += bytes.size();
    const std::vector<uint32_t> ids = tok.encode(bytes);
    tokens.insert(tokens.end(), ids.begin(), ids.end());
    tokens.push_back(ByteTokenizer::kEos);
    offsets.push_back(tokens.size());
  }
  if (docs.empty() || text_bytes == 0) {
    const std::string what = inputs.empty() ? std::string("(no inputs)") : join_sources(inputs);
    throw DataError(what + ": empty corpus (" + std::to_string(docs.size()) +
                    " documents, 0 bytes of text); nothing written to " + out);
  }
  TokenFileInfo info;
  info.n_tokens = static_cast<int64_t>(tokens.size());
  info.n_docs = static_cast<int64_t>(docs.size());
  info.vocab_size = ByteTokenizer::kVocabSize;
  info.tokenizer = ByteTokenizer::kName;
  info.source = join_sources(inputs);
  write_token_file(out, tokens, offsets, info.vocab_size, info.tokenizer, info.source);
  return info;
}

}  // namespace moetron::data
