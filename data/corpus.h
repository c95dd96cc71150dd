// Corpus inputs: iterates raw text documents from text files, directories and JSONL files.
//
// Inputs are expanded once, up front, in the order given: a regular file whose name ends in
// ".jsonl" is read as JSONL (one JSON object per line, the document being the string in
// `CorpusOptions::jsonl_field`; blank lines are skipped); any other regular file is one text
// document; a directory contributes its ".txt" and ".jsonl" files, recursively, sorted by their
// path relative to the directory (byte order), so the order never depends on the file system.
// Files are read lazily: a text file is held in memory while it is the current document, a JSONL
// file is streamed line by line. Text must be valid UTF-8 (strict: no overlong forms, surrogates
// or code points above U+10FFFF). Empty documents are skipped (and counted).
//
// Errors (all DataError): a missing input, an input that is neither file nor directory, no
// .txt/.jsonl file found, invalid UTF-8 ("FILE: invalid UTF-8 at byte offset N", for JSONL also
// the line), a JSONL line that is not a JSON object or lacks the field or whose field is not a
// string ("FILE:LINE: ..."), and a corpus that yields no document at all ("empty corpus").
#pragma once

#include <cstdint>
#include <fstream>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "data/token_file.h"

namespace moetron::data {

struct CorpusOptions {
  std::string jsonl_field = "text";  // top-level string field holding a JSONL line's document
};

struct Document {
  std::string text;
  std::string origin;  // "FILE" for a text file, "FILE:LINE" for a JSONL line
};

class Corpus {
 public:
  explicit Corpus(const std::vector<std::string>& inputs, CorpusOptions options = {});
  ~Corpus();
  Corpus(const Corpus&) = delete;
  Corpus& operator=(const Corpus&) = delete;

  // The next document into *doc; false at the end. Throws DataError (see above); at the end of a
  // pass that produced no document: "empty corpus".
  bool next(Document* doc);
  // Starts again from the first file.
  void rewind();

  const std::vector<std::string>& files() const { return files_; }  // the expanded file list
  int64_t documents() const { return documents_; }                  // yielded so far in this pass
  int64_t skipped_empty() const { return skipped_empty_; }
  int64_t bytes() const { return bytes_; }  // text bytes yielded so far in this pass

 private:
  bool next_in_jsonl(Document* doc);
  // `text` from `origin` into *doc and the counts; false (and counted) if it is empty.
  bool accept(std::string text, const std::string& origin, Document* doc);

  std::vector<std::string> inputs_;
  CorpusOptions options_;
  std::vector<std::string> files_;
  size_t file_ = 0;                       // index of the next (or current JSONL) file
  std::unique_ptr<std::ifstream> jsonl_;  // open JSONL file, if inside one
  int64_t line_ = 0;                      // lines of it read so far
  int64_t line_offset_ = 0;               // byte offset of the next line in it
  int64_t documents_ = 0, skipped_empty_ = 0, bytes_ = 0;
};

// Byte offset of the first byte of `bytes` that is not part of valid UTF-8, or -1 if valid.
int64_t find_invalid_utf8(std::string_view bytes);

}  // namespace moetron::data
