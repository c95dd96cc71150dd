// `moetron tokenize ...`: train, apply and inspect the byte-level BPE tokenizer (data/bpe.h).
//
//   moetron tokenize train --vocab-size N [--special TOKEN ...] [--text-field F] --out FILE
//   INPUT...
//       trains on the corpus (data/corpus.h: text files, directories, JSONL) and writes an HF
//       tokenizer.json; BOS/EOS/pad are DeepSeek-V3's <｜begin▁of▁sentence｜> (id 0),
//       <｜end▁of▁sentence｜> (1), <｜▁pad▁｜> (2), then the --special tokens in order.
//   moetron tokenize encode --tokenizer FILE --out DIR [--shard-tokens N] [--threads T]
//       [--text-field F] [--eos TOKEN] [--allow-special] INPUT...
//       streams the corpus in batches of documents encoded in parallel (document order kept),
//       appends EOS to each document and writes DIR/tokens_NNNNN.h5 + DIR/tokens.index.json
//       (data/shard_writer.h) stamped with the tokenizer's name ("bpe-<hash>") and vocab size.
//       Special-token strings inside documents are ordinary text unless --allow-special.
//   moetron tokenize decode --tokenizer FILE SHARD.h5 [--doc I]
//       prints document I (without its EOS), or the whole shard with special tokens shown.
//   moetron tokenize ids --tokenizer FILE [--allow-special] FILE...
//       prints each file's bytes as token ids, one line per file (for comparisons with HF).
//   moetron tokenize info --tokenizer FILE
//       prints name, vocab size, merges, added tokens, BOS/EOS/pad ids.
#pragma once

#include <ostream>
#include <stdexcept>
#include <string>
#include <vector>

namespace moetron {

// A malformed `tokenize` command line (main prints the usage and exits 2).
struct TokenizeUsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

extern const char* const kTokenizeUsage;

// Runs `moetron tokenize ARGS...` (args: everything after "tokenize"); returns the exit code.
// Throws TokenizeUsageError, data::DataError (bad inputs, naming the file).
int tokenize_command(const std::vector<std::string>& args, std::ostream& out);

}  // namespace moetron
