// Tests for the byte tokenizer and text_to_token_file (data/byte_tokenizer.h): exact round trips
// of arbitrary bytes, document order and boundaries, and the errors for missing inputs and
// empty corpora (which must write nothing).
#include <gtest/gtest.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "data/byte_tokenizer.h"
#include "data/token_file.h"
#include "tests/test_data_util.h"

namespace moetron::data {
namespace {

namespace fs = std::filesystem;

using test_util::TempDir;

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string all_bytes() {
  std::string s;
  for (int i = 0; i < 256; ++i) s.push_back(static_cast<char>(i));
  for (int i = 255; i >= 0; --i) s.push_back(static_cast<char>(i));
  return s;
}

std::vector<uint32_t> read_doc(const TokenFile& tf, int64_t d) {
  const auto off = tf.doc_offsets(d, 1);
  std::vector<uint32_t> ids(off[1] - off[0]);
  tf.read(static_cast<int64_t>(off[0]), static_cast<int64_t>(ids.size()), ids.data());
  return ids;
}

TEST(ByteTokenizer, EncodeDecodeAllBytes) {
  const ByteTokenizer tok;
  const std::string text = all_bytes();
  const auto ids = tok.encode(text);
  ASSERT_EQ(ids.size(), text.size());
  for (size_t i = 0; i < 256; ++i) EXPECT_EQ(ids[i], i);
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_TRUE(tok.encode("").empty());
  EXPECT_EQ(tok.decode({}), "");
}

TEST(ByteTokenizer, DecodeSkipsSpecials) {
  const ByteTokenizer tok;
  EXPECT_EQ(tok.decode({ByteTokenizer::kBos, 'h', 'i', ByteTokenizer::kEos, ByteTokenizer::kPad,
                        263, 1000000, '!'}),
            "hi!");
  EXPECT_LT(ByteTokenizer::kPad, ByteTokenizer::kVocabSize);
}

TEST(TextToTokenFile, DirectoryAndFilesRoundTrip) {
  TempDir dir;
  const std::string corpus = dir.file("corpus");
  fs::create_directories(corpus + "/sub");
  // Created out of order; read sorted by name ("10.txt" < "a.txt" < "b.txt").
  write_bytes(corpus + "/b.txt", all_bytes());
  write_bytes(corpus + "/a.txt", "Hello, world.\n");
  write_bytes(corpus + "/10.txt", std::string("nul\0inside", 10));
  write_bytes(corpus + "/empty.txt", "");            // a document of just EOS
  write_bytes(corpus + "/notes.md", "ignored");      // not .txt
  write_bytes(corpus + "/sub/c.txt", "ignored");     // not recursive
  const std::string extra = dir.file("extra.text");  // a file input: taken whatever its name
  write_bytes(extra, "last one");

  const std::string out = dir.file("out.h5");
  const TokenFileInfo info = text_to_token_file({corpus, extra}, out);
  const std::vector<std::string> expect{std::string("nul\0inside", 10), "Hello, world.\n",
                                        all_bytes(), "", "last one"};
  size_t total = 0;
  for (const auto& e : expect) total += e.size() + 1;
  EXPECT_EQ(info.n_docs, 5);
  EXPECT_EQ(info.n_tokens, static_cast<int64_t>(total));
  EXPECT_EQ(info.vocab_size, ByteTokenizer::kVocabSize);
  EXPECT_EQ(info.tokenizer, ByteTokenizer::kName);
  EXPECT_EQ(info.source, corpus + "," + extra);

  TokenFile tf(out);
  EXPECT_EQ(tf.info().n_docs, info.n_docs);
  EXPECT_EQ(tf.info().n_tokens, info.n_tokens);
  EXPECT_EQ(tf.info().vocab_size, ByteTokenizer::kVocabSize);
  EXPECT_EQ(tf.info().tokenizer, "bytes-v1");
  EXPECT_EQ(tf.info().source, info.source);
  const ByteTokenizer tok;
  for (int64_t d = 0; d < tf.info().n_docs; ++d) {
    const auto ids = read_doc(tf, d);
    ASSERT_FALSE(ids.empty());
    EXPECT_EQ(ids.back(), ByteTokenizer::kEos) << "doc " << d;
    EXPECT_EQ(tok.decode(ids), expect[d]) << "doc " << d;
    EXPECT_EQ(std::vector<uint32_t>(ids.begin(), ids.end() - 1), tok.encode(expect[d]));
  }
}

TEST(TextToTokenFile, LongSourceIsTruncated) {
  TempDir dir;
  std::vector<std::string> inputs;
  for (int i = 0; i < 100; ++i) {
    inputs.push_back(dir.file("document_with_a_long_name_" + std::to_string(1000 + i) + ".txt"));
    write_bytes(inputs.back(), "x");
  }
  const TokenFileInfo info = text_to_token_file(inputs, dir.file("out.h5"));
  EXPECT_EQ(info.n_docs, 100);
  EXPECT_LE(info.source.size(), 1100u);
  EXPECT_NE(info.source.find("more)"), std::string::npos);
  EXPECT_EQ(TokenFile(dir.file("out.h5")).info().source, info.source);
}

TEST(TextToTokenFile, EmptyCorpus) {
  TempDir dir;
  const std::string out = dir.file("out.h5");
  const std::string empty_dir = dir.file("nothing");
  fs::create_directories(empty_dir);
  write_bytes(empty_dir + "/readme.md", "not a .txt");
  auto expect_empty = [&](const std::vector<std::string>& inputs) {
    try {
      text_to_token_file(inputs, out);
      ADD_FAILURE() << "expected DataError";
    } catch (const DataError& e) {
      EXPECT_NE(std::string(e.what()).find("empty corpus"), std::string::npos) << e.what();
    }
    EXPECT_FALSE(fs::exists(out));
    EXPECT_FALSE(fs::exists(out + ".tmp"));
  };
  expect_empty({empty_dir});
  expect_empty({});
  const std::string zero_dir = dir.file("zero");
  fs::create_directories(zero_dir);
  write_bytes(zero_dir + "/a.txt", "");
  write_bytes(zero_dir + "/b.txt", "");
  expect_empty({zero_dir, empty_dir});
}

TEST(TextToTokenFile, MissingInput) {
  TempDir dir;
  const std::string good = dir.file("good.txt");
  write_bytes(good, "text");
  const std::string missing = dir.file("missing.txt");
  const std::string out = dir.file("out.h5");
  try {
    text_to_token_file({good, missing}, out);
    ADD_FAILURE() << "expected DataError";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(missing), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(out));
}

TEST(TextToTokenFile, UnwritableOutput) {
  TempDir dir;
  const std::string in = dir.file("in.txt");
  write_bytes(in, "text");
  const std::string out = dir.file("no/such/dir/out.h5");
  try {
    text_to_token_file({in}, out);
    ADD_FAILURE() << "expected DataError";
  } catch (const DataError& e) {
    EXPECT_NE(std::string(e.what()).find(out), std::string::npos) << e.what();
  }
  EXPECT_FALSE(fs::exists(out + ".tmp"));
}

}  // namespace
}  // namespace moetron::data
