// Tests for the shard writer (data/shard_writer.h) and the corpus readers (data/corpus.h):
// shards split at the configured size without cutting documents (unless one is longer than a
// shard), the index matches the files, documents read back intact; text, directory and JSONL
// inputs in a deterministic order; bad input (invalid UTF-8 with its byte offset, bad JSONL lines
// with file:line, missing files, empty corpora) fails with a DataError that says so.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "data/byte_tokenizer.h"
#include "data/corpus.h"
#include "data/shard_writer.h"
#include "data/token_file.h"
#include "tests/test_data_pipeline_util.h"

namespace moetron::data {
namespace {

using namespace pipeline_test;

std::vector<uint32_t> doc_of(int id, int64_t len) {
  std::vector<uint32_t> d(static_cast<size_t>(len));
  for (int64_t i = 0; i < len; ++i)
    d[static_cast<size_t>(i)] = static_cast<uint32_t>((id * 31 + i) % kVocab);
  return d;
}

// Every document of a shard set, read back through TokenFile (split pieces re-joined).
std::vector<std::vector<uint32_t>> read_back(const ShardIndex& idx) {
  std::vector<std::vector<uint32_t>> docs;
  for (const ShardEntry& e : idx.shards) {
    TokenFile f(e.path);
    EXPECT_EQ(f.info().n_tokens, e.n_tokens);
    EXPECT_EQ(f.info().n_docs, e.n_docs);
    EXPECT_EQ(f.info().tokenizer, kTok);
    EXPECT_EQ(f.info().vocab_size, kVocab);
    const std::vector<uint64_t> off = f.doc_offsets(0, f.info().n_docs);
    for (int64_t d = 0; d < f.info().n_docs; ++d) {
      std::vector<uint32_t> t(off[d + 1] - off[d]);
      f.read(static_cast<int64_t>(off[d]), static_cast<int64_t>(t.size()), t.data());
      if (d == 0 && e.continues_previous) {
        docs.back().insert(docs.back().end(), t.begin(), t.end());
      } else {
        docs.push_back(std::move(t));
      }
    }
  }
  return docs;
}

TEST(PipelineShardWriter, SplitsAtSizeKeepsDocumentsWhole) {
  TempDir dir;
  ShardWriter w(dir.file("c"), 100, kVocab, kTok, "unit test");
  std::vector<std::vector<uint32_t>> docs;
  const int64_t lens[] = {30, 30, 30, 30, 100, 1, 99, 50, 51, 7};
  for (int i = 0; i < 10; ++i) {
    docs.push_back(doc_of(i, lens[i]));
    w.add(docs.back());
  }
  const ShardIndex idx = w.finish();
  // 30+30+30 | 30 | 100 | 1+99 | 50 | 51+7
  ASSERT_EQ(idx.shards.size(), 6u);
  const int64_t want_tokens[] = {90, 30, 100, 100, 50, 58};
  const int64_t want_docs[] = {3, 1, 1, 2, 1, 2};
  for (size_t s = 0; s < 6; ++s) {
    EXPECT_EQ(idx.shards[s].n_tokens, want_tokens[s]) << s;
    EXPECT_EQ(idx.shards[s].n_docs, want_docs[s]) << s;
    EXPECT_FALSE(idx.shards[s].continues_previous);
    EXPECT_EQ(idx.shards[s].path, dir.file("c_0000" + std::to_string(s) + ".h5"));
  }
  EXPECT_EQ(idx.n_tokens, 428);
  EXPECT_EQ(idx.n_docs, 10);
  EXPECT_EQ(idx.split_docs, 0);
  EXPECT_EQ(read_back(idx), docs);
  // the index on disk says the same, with paths resolved against its directory
  const ShardIndex disk = read_shard_index(w.index_path());
  EXPECT_EQ(disk.tokenizer, kTok);
  EXPECT_EQ(disk.vocab_size, kVocab);
  EXPECT_EQ(disk.source, "unit test");
  EXPECT_EQ(disk.n_tokens, 428);
  EXPECT_EQ(disk.n_docs, 10);
  ASSERT_EQ(disk.shards.size(), idx.shards.size());
  for (size_t s = 0; s < idx.shards.size(); ++s) {
    EXPECT_TRUE(fs::equivalent(disk.shards[s].path, idx.shards[s].path));
    EXPECT_EQ(disk.shards[s].n_tokens, idx.shards[s].n_tokens);
    EXPECT_EQ(disk.shards[s].n_docs, idx.shards[s].n_docs);
  }
  EXPECT_FALSE(fs::exists(w.index_path() + ".tmp"));
  EXPECT_FALSE(fs::exists(dir.file("c_00006.h5")));
}

TEST(PipelineShardWriter, SplitsOnlyDocumentsLongerThanAShard) {
  TempDir dir;
  ShardWriter w(dir.file("long"), 64, kVocab, kTok, "");
  std::vector<std::vector<uint32_t>> docs = {doc_of(1, 10), doc_of(2, 64 * 3 + 5), doc_of(3, 20),
                                             doc_of(4, 128), doc_of(5, 3)};
  for (const auto& d : docs) w.add(d);
  const ShardIndex idx = w.finish();
  // 10 | 64 | 64c | 64c | 5c+20 | 64 | 64c | 3
  ASSERT_EQ(idx.shards.size(), 8u);
  const int64_t want_tokens[] = {10, 64, 64, 64, 25, 64, 64, 3};
  const bool want_cont[] = {false, false, true, true, true, false, true, false};
  for (size_t s = 0; s < idx.shards.size(); ++s) {
    EXPECT_EQ(idx.shards[s].n_tokens, want_tokens[s]) << s;
    EXPECT_EQ(idx.shards[s].continues_previous, want_cont[s]) << s;
  }
  EXPECT_EQ(idx.split_docs, 2);
  EXPECT_EQ(read_back(idx), docs);
  const ShardIndex disk = read_shard_index(w.index_path());
  for (size_t s = 0; s < idx.shards.size(); ++s) {
    EXPECT_EQ(disk.shards[s].continues_previous, want_cont[s]);
  }
}

TEST(PipelineShardWriter, IndexOnlyWhenFinishedAndStaleIndexRemoved) {
  TempDir dir;
  const std::string prefix = dir.file("s");
  {
    ShardWriter w(prefix, 10, kVocab, kTok, "");
    w.add(doc_of(0, 8));
    w.add(doc_of(1, 8));
    w.finish();
  }
  ASSERT_TRUE(fs::exists(prefix + ".index.json"));
  {
    ShardWriter w(prefix, 10, kVocab, kTok, "");  // a new run under the same prefix
    EXPECT_FALSE(fs::exists(prefix + ".index.json"));
    w.add(doc_of(0, 8));
    w.add(doc_of(1, 8));  // first shard written
    EXPECT_TRUE(fs::exists(prefix + "_00000.h5"));
    // destroyed without finish(): no index
  }
  EXPECT_FALSE(fs::exists(prefix + ".index.json"));
}

TEST(PipelineShardWriter, BadInput) {
  TempDir dir;
  expect_data_error([&] { ShardWriter(dir.file("nodir/x"), 10, kVocab, kTok, ""); },
                    {"nodir", "does not exist"});
  expect_data_error([&] { ShardWriter(dir.file("x"), 0, kVocab, kTok, ""); },
                    {"max_tokens_per_shard"});
  expect_data_error([&] { ShardWriter(dir.file("x"), 10, 0, kTok, ""); }, {"vocab_size"});
  expect_data_error([&] { ShardWriter(dir.file("x"), 10, kVocab, "", ""); }, {"tokenizer"});
  ShardWriter w(dir.file("x"), 10, kVocab, kTok, "");
  w.add(doc_of(0, 3));
  expect_data_error(
      [&] {
        w.add(std::vector<uint32_t>{1, 2, static_cast<uint32_t>(kVocab)});
      },
      {"document 1", "token id 1000", "position 2", "vocab_size 1000"});
  ShardWriter empty(dir.file("e"), 10, kVocab, kTok, "");
  expect_data_error([&] { empty.finish(); }, {"empty corpus"});
  EXPECT_FALSE(fs::exists(dir.file("e.index.json")));
}

TEST(PipelineShardIndex, BadIndexFiles) {
  TempDir dir;
  expect_data_error([&] { read_shard_index(dir.file("missing.index.json")); },
                    {"missing.index.json", "no such"});
  write_text(dir.file("bad.index.json"), "{not json");
  expect_data_error([&] { read_shard_index(dir.file("bad.index.json")); },
                    {"bad.index.json", "not valid JSON"});
  write_text(dir.file("fmt.index.json"), R"({"format": "other"})");
  expect_data_error([&] { read_shard_index(dir.file("fmt.index.json")); },
                    {"fmt.index.json", "format"});
  write_text(dir.file("cnt.index.json"),
             R"({"format": "moetron-shards-v1", "tokenizer": "t", "vocab_size": 5, "source": "",
                 "max_tokens_per_shard": 9, "n_tokens": 10, "n_docs": 1, "split_docs": 0,
                 "shards": [{"file": "a.h5", "n_tokens": 9, "n_docs": 1,
                             "continues_previous": false}]})");
  expect_data_error([&] { read_shard_index(dir.file("cnt.index.json")); },
                    {"cnt.index.json", "add up to 9"});
  write_text(dir.file("fld.index.json"),
             R"({"format": "moetron-shards-v1", "tokenizer": "t", "vocab_size": 5, "source": "",
                 "max_tokens_per_shard": 9, "n_tokens": 9, "n_docs": 1, "split_docs": 0,
                 "shards": [{"file": "a.h5", "n_docs": 1, "continues_previous": false}]})");
  expect_data_error([&] { read_shard_index(dir.file("fld.index.json")); },
                    {"fld.index.json", "shards[0]", "n_tokens"});
}

// ---- corpus ----

std::vector<Document> all_docs(Corpus& c) {
  std::vector<Document> out;
  Document d;
  while (c.next(&d)) out.push_back(d);
  return out;
}

TEST(PipelineCorpus, TextFilesAndSortedDirectories) {
  TempDir dir;
  fs::create_directories(dir.path() / "d" / "sub");
  write_text(dir.file("d/b.txt"), "bee");
  write_text(dir.file("d/a.txt"), "ay");
  write_text(dir.file("d/sub/c.txt"), "sea \xC3\xA9");  // é
  write_text(dir.file("d/skip.md"), "not text input");
  write_text(dir.file("d/empty.txt"), "");
  write_text(dir.file("one"), "single");
  Corpus c({dir.file("one"), dir.file("d")});
  const std::vector<Document> docs = all_docs(c);
  ASSERT_EQ(docs.size(), 4u);
  EXPECT_EQ(docs[0].text, "single");
  EXPECT_EQ(docs[1].text, "ay");  // a.txt, b.txt, empty.txt (skipped), sub/c.txt
  EXPECT_EQ(docs[2].text, "bee");
  EXPECT_EQ(docs[3].text, "sea \xC3\xA9");
  EXPECT_EQ(docs[3].origin, dir.file("d/sub/c.txt"));
  EXPECT_EQ(c.skipped_empty(), 1);
  EXPECT_EQ(c.documents(), 4);
  c.rewind();
  EXPECT_EQ(all_docs(c).size(), 4u);
}

TEST(PipelineCorpus, JsonlWithConfigurableField) {
  TempDir dir;
  write_text(dir.file("a.jsonl"),
             "{\"content\": \"first\", \"id\": 1}\n"
             "\n"
             "{\"content\": \"sec\\u00e9ond\\n\"}\r\n"
             "{\"content\": \"\"}\n"
             "{\"content\": \"last\"}");  // no final newline
  CorpusOptions opt;
  opt.jsonl_field = "content";
  Corpus c({dir.file("a.jsonl")}, opt);
  const std::vector<Document> docs = all_docs(c);
  ASSERT_EQ(docs.size(), 3u);
  EXPECT_EQ(docs[0].text, "first");
  EXPECT_EQ(docs[1].text, "sec\xC3\xA9ond\n");
  EXPECT_EQ(docs[1].origin, dir.file("a.jsonl") + ":3");
  EXPECT_EQ(docs[2].text, "last");
  EXPECT_EQ(docs[2].origin, dir.file("a.jsonl") + ":5");
  EXPECT_EQ(c.skipped_empty(), 1);
}

TEST(PipelineCorpus, BadJsonlLinesNameFileAndLine) {
  TempDir dir;
  const std::string f = dir.file("bad.jsonl");
  auto expect_line_error = [&](const std::string& content, const std::vector<std::string>& parts) {
    write_text(f, content);
    Corpus c({f});
    expect_data_error([&] { all_docs(c); }, parts);
  };
  expect_line_error("{\"text\": \"ok\"}\n{\"text\": oops}\n", {f + ":2", "not valid JSON"});
  expect_line_error("{\"text\": \"ok\"}\n\n{\"txt\": \"x\"}\n", {f + ":3", "no field 'text'"});
  expect_line_error("{\"text\": 5}\n", {f + ":1", "field 'text' is number, not a string"});
  expect_line_error("[\"text\"]\n", {f + ":1", "expected a JSON object"});
  expect_line_error("{\"text\": \"ok\"}\n{\"text\": \"b\xFF\"}\n",
                    {f + ":2", "invalid UTF-8 at byte offset 26", "column 12"});
}

TEST(PipelineCorpus, InvalidUtf8NamesTheByteOffset) {
  TempDir dir;
  write_text(dir.file("ok.txt"), "fine");
  write_text(dir.file("bad.txt"), "hello w\xC3\x28rld");  // bad continuation at offset 7
  Corpus c({dir.file("ok.txt"), dir.file("bad.txt")});
  Document d;
  ASSERT_TRUE(c.next(&d));
  expect_data_error([&] { c.next(&d); }, {dir.file("bad.txt"), "invalid UTF-8 at byte offset 7"});
}

TEST(PipelineCorpus, Utf8Validator) {
  EXPECT_EQ(find_invalid_utf8(""), -1);
  EXPECT_EQ(find_invalid_utf8("plain ascii text, longer than eight bytes"), -1);
  EXPECT_EQ(find_invalid_utf8("\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80\xF4\x8F\xBF\xBF"), -1);
  EXPECT_EQ(find_invalid_utf8("abc\x80"), 3);              // lone continuation byte
  EXPECT_EQ(find_invalid_utf8("\xC0\xAF"), 0);             // overlong '/'
  EXPECT_EQ(find_invalid_utf8("ab\xE0\x80\xAF"), 2);       // overlong 3-byte
  EXPECT_EQ(find_invalid_utf8("\xED\xA0\x80"), 0);         // surrogate U+D800
  EXPECT_EQ(find_invalid_utf8("\xF4\x90\x80\x80"), 0);     // above U+10FFFF
  EXPECT_EQ(find_invalid_utf8("0123456789\xE2\x82"), 10);  // truncated at the end
  EXPECT_EQ(find_invalid_utf8(std::string("a\0b", 3)), -1);
}

TEST(PipelineCorpus, MissingAndEmptyInputs) {
  TempDir dir;
  expect_data_error([&] { Corpus({dir.file("nope.txt")}); }, {"nope.txt", "no such file"});
  fs::create_directories(dir.path() / "empty_dir");
  write_text(dir.file("empty_dir/readme.md"), "x");
  expect_data_error([&] { Corpus({dir.file("empty_dir")}); },
                    {"empty_dir", "empty corpus", "no .txt or .jsonl"});
  write_text(dir.file("e1.txt"), "");
  write_text(dir.file("e2.jsonl"), "\n{\"text\": \"\"}\n");
  Corpus c({dir.file("e1.txt"), dir.file("e2.jsonl")});
  expect_data_error([&] { all_docs(c); }, {"e1.txt", "empty corpus", "2 empty documents"});
  expect_data_error([&] { Corpus({}); }, {"empty corpus"});
}

TEST(PipelineCorpus, CorpusToShardsRoundTrip) {
  TempDir dir;
  fs::create_directories(dir.path() / "in");
  std::vector<std::string> texts;
  for (int i = 0; i < 20; ++i) {
    texts.push_back("document " + std::to_string(i) + std::string(static_cast<size_t>(i * 7), 'x'));
    char name[32];
    std::snprintf(name, sizeof(name), "in/%02d.txt", i);
    write_text(dir.file(name), texts.back());
  }
  Corpus c({dir.file("in")});
  ShardWriter w(dir.file("sotu"), 200, ByteTokenizer::kVocabSize, ByteTokenizer::kName, "in");
  const ByteTokenizer tok;
  const ShardIndex idx = write_corpus_shards(
      c, [&](std::string_view t) { return tok.encode(std::string(t)); }, ByteTokenizer::kEos, w);
  EXPECT_EQ(idx.n_docs, 20);
  EXPECT_GT(idx.shards.size(), 3u);
  std::vector<std::string> back;
  for (const ShardEntry& e : idx.shards) {
    TokenFile f(e.path);
    EXPECT_LE(f.info().n_tokens, 200);
    const std::vector<uint64_t> off = f.doc_offsets(0, f.info().n_docs);
    for (int64_t d = 0; d < f.info().n_docs; ++d) {
      std::vector<uint32_t> ids(off[d + 1] - off[d]);
      f.read(static_cast<int64_t>(off[d]), static_cast<int64_t>(ids.size()), ids.data());
      ASSERT_EQ(ids.back(), ByteTokenizer::kEos);
      back.push_back(tok.decode(ids));
    }
  }
  EXPECT_EQ(back, texts);
}

}  // namespace
}  // namespace moetron::data
