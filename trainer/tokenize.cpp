// `moetron tokenize` subcommands (see tokenize.h).
//
// encode keeps memory bounded: it holds one batch of documents (about 4 MB of text per thread,
// at most 4096 documents) and their ids, plus the shard writer's one shard.
#include "trainer/tokenize.h"

#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "data/bpe.h"
#include "data/corpus.h"
#include "data/shard_writer.h"
#include "data/token_file.h"

namespace moetron {

const char* const kTokenizeUsage =
    "  moetron tokenize train --vocab-size N [--special TOKEN ...] [--text-field F] --out FILE "
    "INPUT...\n"
    "  moetron tokenize encode --tokenizer FILE --out DIR [--shard-tokens N] [--threads T]\n"
    "                          [--text-field F] [--eos TOKEN] [--allow-special] INPUT...\n"
    "  moetron tokenize decode --tokenizer FILE SHARD.h5 [--doc I]\n"
    "  moetron tokenize ids --tokenizer FILE [--allow-special] FILE...\n"
    "  moetron tokenize info --tokenizer FILE\n";

namespace {

using data::BpeTokenizer;
using data::DataError;

struct Opts {
  std::vector<std::string> positional, specials;
  std::string out, tokenizer, text_field = "text", eos;
  int64_t vocab_size = 0, shard_tokens = int64_t{1} << 26, doc = -1;
  int threads = 0;
  bool allow_special = false;
};

int64_t to_int(const std::string& flag, const std::string& v) {
  size_t used = 0;
  int64_t x = 0;
  try {
    x = std::stoll(v, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != v.size() || v.empty())
    throw TokenizeUsageError(flag + " needs an integer, got '" + v + "'");
  return x;
}

Opts parse(const std::vector<std::string>& args) {
  Opts o;
  for (size_t i = 1; i < args.size(); ++i) {
    const std::string& s = args[i];
    auto value = [&]() -> const std::string& {
      if (i + 1 >= args.size()) throw TokenizeUsageError(s + " needs a value");
      return args[++i];
    };
    if (s == "--out") {
      o.out = value();
    } else if (s == "--tokenizer") {
      o.tokenizer = value();
    } else if (s == "--text-field") {
      o.text_field = value();
    } else if (s == "--eos") {
      o.eos = value();
    } else if (s == "--special") {
      o.specials.push_back(value());
    } else if (s == "--vocab-size") {
      o.vocab_size = to_int(s, value());
    } else if (s == "--shard-tokens") {
      o.shard_tokens = to_int(s, value());
    } else if (s == "--doc") {
      o.doc = to_int(s, value());
    } else if (s == "--threads") {
      o.threads = static_cast<int>(to_int(s, value()));
    } else if (s == "--allow-special") {
      o.allow_special = true;
    } else if (s.rfind("--", 0) == 0) {
      throw TokenizeUsageError("unknown option " + s);
    } else {
      o.positional.push_back(s);
    }
  }
  return o;
}

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

std::string join(const std::vector<std::string>& v) {
  std::string s;
  for (const auto& x : v) s += (s.empty() ? "" : ",") + x;
  return s;
}

int cmd_train(const Opts& o, std::ostream& out) {
  if (o.out.empty() || o.positional.empty() || o.vocab_size <= 0)
    throw TokenizeUsageError("tokenize train needs --vocab-size, --out and inputs");
  const auto t0 = std::chrono::steady_clock::now();
  data::Corpus corpus(o.positional, data::CorpusOptions{o.text_field});
  data::BpeTrainOptions opt;
  opt.vocab_size = o.vocab_size;
  opt.special_tokens = o.specials;
  BpeTokenizer tok = BpeTokenizer::train(corpus, opt);
  tok.save(o.out);
  out << o.out << ": " << tok.name() << ", vocab " << tok.vocab_size() << " (" << tok.n_merges()
      << " merges), trained on " << corpus.documents() << " documents, " << corpus.bytes()
      << " bytes in " << seconds_since(t0) << " s\n";
  return 0;
}

int cmd_encode(const Opts& o, std::ostream& out) {
  if (o.out.empty() || o.tokenizer.empty() || o.positional.empty())
    throw TokenizeUsageError("tokenize encode needs --tokenizer, --out and inputs");
  if (o.shard_tokens < 1) throw TokenizeUsageError("--shard-tokens must be at least 1");
  const BpeTokenizer tok = BpeTokenizer::load(o.tokenizer);
  std::optional<uint32_t> eos = o.eos.empty() ? tok.eos_id() : tok.token_to_id(o.eos);
  if (!eos)
    throw DataError(o.tokenizer + ": " +
                    (o.eos.empty() ? std::string("no EOS token found; pass --eos TOKEN")
                                   : "no token '" + o.eos + "'"));
  const int threads = o.threads > 0
                          ? o.threads
                          : static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::error_code ec;
  std::filesystem::create_directories(o.out, ec);
  if (ec) throw DataError(o.out + ": cannot create directory: " + ec.message());
  data::ShardWriter writer(o.out + "/tokens", o.shard_tokens, tok.vocab_size(), tok.name(),
                           join(o.positional));
  data::Corpus corpus(o.positional, data::CorpusOptions{o.text_field});

  const auto t0 = std::chrono::steady_clock::now();
  double encode_s = 0;
  const size_t batch_bytes = size_t{4} << 20;  // per thread
  std::vector<std::string> docs;
  std::vector<std::string> origins;
  size_t bytes = 0;
  auto flush = [&] {
    const auto te = std::chrono::steady_clock::now();
    std::vector<std::vector<uint32_t>> ids = tok.encode_batch(docs, threads, o.allow_special);
    encode_s += seconds_since(te);
    for (size_t i = 0; i < ids.size(); ++i) {
      ids[i].push_back(*eos);
      try {
        writer.add(ids[i]);
      } catch (const DataError& e) {
        throw DataError(origins[i] + ": " + e.what());
      }
    }
    docs.clear();
    origins.clear();
    bytes = 0;
  };
  data::Document doc;
  while (corpus.next(&doc)) {
    bytes += doc.text.size();
    docs.push_back(std::move(doc.text));
    origins.push_back(std::move(doc.origin));
    if (bytes >= batch_bytes * static_cast<size_t>(threads) || docs.size() >= 4096) flush();
  }
  if (!docs.empty()) flush();
  const data::ShardIndex index = writer.finish();
  const double total = seconds_since(t0);
  out << writer.index_path() << ": " << index.n_docs << " documents, " << index.n_tokens
      << " tokens, " << index.shards.size() << " shards; " << corpus.bytes() << " bytes, "
      << static_cast<double>(corpus.bytes()) /
             static_cast<double>(std::max<int64_t>(1, index.n_tokens))
      << " bytes/token; encode " << static_cast<double>(corpus.bytes()) / 1e6 / encode_s
      << " MB/s on " << threads << " threads, total " << total << " s\n";
  return 0;
}

int cmd_decode(const Opts& o, std::ostream& out) {
  if (o.tokenizer.empty() || o.positional.size() != 1)
    throw TokenizeUsageError("tokenize decode needs --tokenizer and one SHARD.h5");
  const BpeTokenizer tok = BpeTokenizer::load(o.tokenizer);
  const std::string& path = o.positional[0];
  data::TokenFile tf(path);
  if (tf.info().tokenizer != tok.name())
    throw DataError(path + ": written by tokenizer '" + tf.info().tokenizer + "', not " +
                    o.tokenizer + " (" + tok.name() + ")");
  if (o.doc >= 0) {
    if (o.doc >= tf.info().n_docs)
      throw DataError(path + ": no document " + std::to_string(o.doc) + " (it has " +
                      std::to_string(tf.info().n_docs) + ")");
    const std::vector<uint64_t> off = tf.doc_offsets(o.doc, 1);
    std::vector<uint32_t> ids(off[1] - off[0]);
    tf.read(static_cast<int64_t>(off[0]), static_cast<int64_t>(ids.size()), ids.data());
    if (!ids.empty() && tok.eos_id() && ids.back() == *tok.eos_id()) ids.pop_back();
    out << tok.decode(ids);
    return 0;
  }
  constexpr int64_t kChunk = 1 << 20;  // decoded chunk by chunk: bytes never straddle tokens
  std::vector<uint32_t> ids;
  for (int64_t s = 0; s < tf.info().n_tokens; s += kChunk) {
    ids.resize(static_cast<size_t>(std::min(kChunk, tf.info().n_tokens - s)));
    tf.read(s, static_cast<int64_t>(ids.size()), ids.data());
    out << tok.decode(ids);
  }
  return 0;
}

int cmd_ids(const Opts& o, std::ostream& out) {
  if (o.tokenizer.empty() || o.positional.empty())
    throw TokenizeUsageError("tokenize ids needs --tokenizer and files");
  const BpeTokenizer tok = BpeTokenizer::load(o.tokenizer);
  for (const auto& path : o.positional) {
    std::ifstream f(path, std::ios::binary);
    if (!f) throw DataError(path + ": cannot open");
    std::stringstream ss;
    ss << f.rdbuf();
    const std::vector<uint32_t> ids = tok.encode(ss.str(), o.allow_special);
    for (size_t i = 0; i < ids.size(); ++i) out << (i ? " " : "") << ids[i];
    out << "\n";
  }
  return 0;
}

int cmd_info(const Opts& o, std::ostream& out) {
  if (o.tokenizer.empty()) throw TokenizeUsageError("tokenize info needs --tokenizer");
  const BpeTokenizer tok = BpeTokenizer::load(o.tokenizer);
  auto id = [](std::optional<uint32_t> v) { return v ? std::to_string(*v) : std::string("none"); };
  out << "name " << tok.name() << "\nvocab_size " << tok.vocab_size() << "\nmerges "
      << tok.n_merges() << "\nadded_tokens " << tok.added_tokens().size() << "\nbos "
      << id(tok.bos_id()) << "\neos " << id(tok.eos_id()) << "\npad " << id(tok.pad_id()) << "\n";
  return 0;
}

}  // namespace

int tokenize_command(const std::vector<std::string>& args, std::ostream& out) {
  if (args.empty()) throw TokenizeUsageError("tokenize needs a subcommand");
  const Opts o = parse(args);
  const std::string& sub = args[0];
  if (sub == "train") return cmd_train(o, out);
  if (sub == "encode") return cmd_encode(o, out);
  if (sub == "decode") return cmd_decode(o, out);
  if (sub == "ids") return cmd_ids(o, out);
  if (sub == "info") return cmd_info(o, out);
  throw TokenizeUsageError("unknown tokenize subcommand '" + sub + "'");
}

}  // namespace moetron
