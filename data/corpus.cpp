// Corpus inputs (see corpus.h): input expansion, text and JSONL reading, UTF-8 validation.
// Both kinds of file hand their documents to accept(), which skips and counts the empty ones.
//
// JSONL lines are parsed with nlohmann-json (header-only, Debian nlohmann-json3-dev). Each line is
// checked for valid UTF-8 before parsing so that the message can give the byte offset in the
// file, not only nlohmann's column.
#include "data/corpus.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <iterator>
#include <nlohmann/json.hpp>
#include <system_error>
#include <utility>

namespace moetron::data {

namespace fs = std::filesystem;

namespace {

bool ends_with(const std::string& s, std::string_view suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix.data(), suffix.size()) == 0;
}

bool is_jsonl(const std::string& path) { return ends_with(path, ".jsonl"); }

std::string join_inputs(const std::vector<std::string>& inputs) {
  if (inputs.empty()) return "(no inputs)";
  std::string s = inputs[0];
  for (size_t i = 1; i < inputs.size() && s.size() < 512; ++i) s += "," + inputs[i];
  if (s.size() >= 512) s += ",...";
  return s;
}

// The files one input names: itself, or a directory's .txt/.jsonl files sorted by relative path.
void expand_input(const std::string& input, std::vector<std::string>* out) {
  std::error_code ec;
  const fs::file_status st = fs::status(input, ec);
  if (ec || !fs::exists(st)) throw DataError(input + ": no such file or directory");
  if (fs::is_regular_file(st)) {
    out->push_back(input);
    return;
  }
  if (!fs::is_directory(st)) throw DataError(input + ": not a regular file or directory");
  std::vector<std::pair<std::string, std::string>> found;  // (relative path, path)
  fs::recursive_directory_iterator it(input, ec), end;
  if (ec) throw DataError(input + ": cannot list directory: " + ec.message());
  for (; it != end; it.increment(ec)) {
    if (ec) throw DataError(input + ": cannot list directory: " + ec.message());
    const std::string name = it->path().filename().string();
    std::error_code fec;
    if ((ends_with(name, ".txt") || ends_with(name, ".jsonl")) && it->is_regular_file(fec)) {
      found.emplace_back(it->path().lexically_relative(input).generic_string(),
                         it->path().string());
    }
  }
  if (ec) throw DataError(input + ": cannot list directory: " + ec.message());
  std::sort(found.begin(), found.end());
  for (auto& f : found) out->push_back(std::move(f.second));
}

std::string read_whole(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw DataError(path + ": cannot open for reading");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw DataError(path + ": read error");
  return bytes;
}

const char* json_type_name(const nlohmann::json& v) { return v.type_name(); }

}  // namespace

int64_t find_invalid_utf8(std::string_view s) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const size_t n = s.size();
  size_t i = 0;
  while (i < n) {
    // ASCII fast path, 8 bytes at a time
    if (i + 8 <= n) {
      uint64_t w;
      std::memcpy(&w, p + i, 8);
      if ((w & 0x8080808080808080ull) == 0) {
        i += 8;
        continue;
      }
    }
    const unsigned c = p[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    unsigned lo = 0x80, hi = 0xBF;  // allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      len = 2;
    } else if (c == 0xE0) {
      len = 3, lo = 0xA0;  // no overlong 3-byte forms
    } else if ((c >= 0xE1 && c <= 0xEC) || c == 0xEE || c == 0xEF) {
      len = 3;
    } else if (c == 0xED) {
      len = 3, hi = 0x9F;  // no UTF-16 surrogates
    } else if (c == 0xF0) {
      len = 4, lo = 0x90;  // no overlong 4-byte forms
    } else if (c >= 0xF1 && c <= 0xF3) {
      len = 4;
    } else if (c == 0xF4) {
      len = 4, hi = 0x8F;  // nothing above U+10FFFF
    } else {
      return static_cast<int64_t>(i);
    }
    if (i + len > n || p[i + 1] < lo || p[i + 1] > hi) return static_cast<int64_t>(i);
    for (size_t k = 2; k < len; ++k) {
      if ((p[i + k] & 0xC0) != 0x80) return static_cast<int64_t>(i);
    }
    i += len;
  }
  return -1;
}

Corpus::Corpus(const std::vector<std::string>& inputs, CorpusOptions options)
    : inputs_(inputs), options_(std::move(options)) {
  if (options_.jsonl_field.empty()) throw DataError("corpus: jsonl_field must not be empty");
  for (const std::string& input : inputs_) expand_input(input, &files_);
  if (files_.empty()) {
    throw DataError(join_inputs(inputs_) + ": empty corpus (no .txt or .jsonl files)");
  }
}

Corpus::~Corpus() = default;

void Corpus::rewind() {
  file_ = 0;
  jsonl_.reset();
  line_ = 0, line_offset_ = 0;
  documents_ = 0, skipped_empty_ = 0, bytes_ = 0;
}

bool Corpus::next(Document* doc) {
  while (true) {
    if (jsonl_ != nullptr) {
      if (next_in_jsonl(doc)) return true;
      jsonl_.reset();
      ++file_;
      continue;
    }
    if (file_ >= files_.size()) {
      if (documents_ == 0) {
        throw DataError(join_inputs(inputs_) + ": empty corpus (" + std::to_string(files_.size()) +
                        " files, " + std::to_string(skipped_empty_) + " empty documents)");
      }
      return false;
    }
    const std::string& path = files_[file_];
    if (is_jsonl(path)) {
      jsonl_ = std::make_unique<std::ifstream>(path, std::ios::binary);
      if (!*jsonl_) {
        jsonl_.reset();
        throw DataError(path + ": cannot open for reading");
      }
      line_ = 0, line_offset_ = 0;
      continue;
    }
    std::string text = read_whole(path);
    ++file_;
    const int64_t bad = find_invalid_utf8(text);
    if (bad >= 0) {
      throw DataError(path + ": invalid UTF-8 at byte offset " + std::to_string(bad));
    }
    if (accept(std::move(text), path, doc)) return true;
  }
}

bool Corpus::accept(std::string text, const std::string& origin, Document* doc) {
  if (text.empty()) {
    ++skipped_empty_;
    return false;
  }
  bytes_ += static_cast<int64_t>(text.size());
  ++documents_;
  doc->text = std::move(text);
  doc->origin = origin;
  return true;
}

bool Corpus::next_in_jsonl(Document* doc) {
  const std::string& path = files_[file_];
  std::string line;
  while (std::getline(*jsonl_, line)) {
    ++line_;
    const int64_t start = line_offset_;
    line_offset_ += static_cast<int64_t>(line.size()) + 1;
    const std::string where = path + ":" + std::to_string(line_);
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;  // blank line
    const int64_t bad = find_invalid_utf8(line);
    if (bad >= 0) {
      throw DataError(where + ": invalid UTF-8 at byte offset " + std::to_string(start + bad) +
                      " of the file (column " + std::to_string(bad + 1) + ")");
    }
    nlohmann::json value;
    try {
      value = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw DataError(where + ": not valid JSON (" + e.what() + ")");
    }
    if (!value.is_object()) {
      throw DataError(where + ": expected a JSON object, found " + json_type_name(value));
    }
    const auto it = value.find(options_.jsonl_field);
    if (it == value.end()) throw DataError(where + ": no field '" + options_.jsonl_field + "'");
    if (!it->is_string()) {
      throw DataError(where + ": field '" + options_.jsonl_field + "' is " + json_type_name(*it) +
                      ", not a string");
    }
    if (accept(it->get<std::string>(), where, doc)) return true;
  }
  if (jsonl_->bad()) throw DataError(path + ": read error after line " + std::to_string(line_));
  return false;
}

}  // namespace moetron::data
