// Byte-level BPE tokenizer (data/bpe.h, data/pretokenize.h): exact round trips on hostile text,
// determinism across runs and thread counts, special tokens, exact vocab size, save/load
// identity, HF-format details (merges as strings or pairs, added-token ids), and clear errors
// naming the file on bad tokenizer files. HF `tokenizers` itself is compared in
// tests/e2e_tokenizer.sh (it needs node).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <vector>

#include "data/bpe.h"
#include "data/corpus.h"
#include "data/pretokenize.h"

namespace moetron::data {
namespace {

namespace fs = std::filesystem;

std::string tmp_dir() {
  const fs::path d =
      fs::temp_directory_path() /
      ("moetron_bpe_" + std::to_string(::testing::UnitTest::GetInstance()->random_seed()) + "_" +
       ::testing::UnitTest::GetInstance()->current_test_info()->name());
  fs::remove_all(d);
  fs::create_directories(d);
  return d.string();
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream f(path, std::ios::binary);
  f << text;
}

// Mixed training text: English, digits, code, a few other scripts.
std::vector<std::string> training_texts() {
  std::vector<std::string> t;
  const char* base[] = {
      "The quick brown fox jumps over the lazy dog. It's 2024, and we'll see 1234567 numbers.\n",
      "def encode(self, text):\n    return [self.vocab[t] for t in text.split()]  # 42\n",
      "Съешь же ещё этих мягких французских булок, да выпей чаю.\n",
      "我能吞下玻璃而不伤身体。日本語のテキストも少し。\n",
      "مرحبا بالعالم، هذا نص عربي قصير.\n",
      "Emoji 😀👍🏽 and 👨‍👩‍👧‍👦 family; tabs\tand   spaces\n\n\n",
      "State of the Union: the Congress shall assemble, the people shall prosper, 1790-2021.\n",
  };
  for (int r = 0; r < 40; ++r)
    for (const char* b : base) t.push_back(std::string(b) + std::to_string(r * 37) + " ");
  return t;
}

const BpeTokenizer& small_tokenizer() {
  static const BpeTokenizer tok = [] {
    BpeTrainOptions o;
    o.vocab_size = 600;
    o.special_tokens = {"<|user|>", "<|assistant|>"};
    return BpeTokenizer::train(training_texts(), o);
  }();
  return tok;
}

std::vector<std::string> hostile_texts() {
  static const char kCtl[] = "ctl\x00\x01\x02\x1F\x7F bytes";
  std::string all_bytes;
  for (int b = 0; b < 256; ++b) all_bytes.push_back(static_cast<char>(b));
  return {
      "",
      "a",
      " ",
      "Hello, world! It's a test; don't PANIC.",
      "中文和日本語とEnglish mixed 한국어 텍스트",
      "العربية שלום Ελληνικά русский язык",
      "👨‍👩‍👧‍👦 👍🏽 🏳️‍🌈 ❤️ e\xCC\x81 n\xCC\x83",
      std::string(kCtl, sizeof kCtl - 1),
      "\xFF\xFE invalid \xC0\xAF overlong \xED\xA0\x80 surrogate \xF4\x90\x80\x80 \x80 lone",
      std::string(1000, ' ') + "x" + std::string(500, '\n') + std::string(300, '\t') + "\r\n\r\n",
      "1 12 123 1234 12345 123456789 3.14159 -42 1e10 ٣٤٥ ١٢٣٤",
      std::string(5000, 'a'),
      std::string(3000, '!') + "?!",
      "<|user|>hi<|assistant|>hello<|user|",
      all_bytes,
  };
}

TEST(BpeTokenizer, ByteAlphabetIsGpt2s) {
  const auto& t = byte_to_unicode();
  EXPECT_EQ(t['!'], static_cast<uint32_t>('!'));
  EXPECT_EQ(t[' '], 0x120u);   // 'Ġ'
  EXPECT_EQ(t['\n'], 0x10Au);  // 'Ċ'
  EXPECT_EQ(t[0xAD], 0x143u);
  EXPECT_EQ(bytes_to_unicode_string(" the"), "\xC4\xA0the");
  std::string back;
  ASSERT_TRUE(unicode_string_to_bytes("\xC4\xA0the", &back));
  EXPECT_EQ(back, " the");
  EXPECT_FALSE(unicode_string_to_bytes("\xE4\xB8\xAD", &back));
}

TEST(BpeTokenizer, PreTokenizerSplitsLikeGpt4) {
  const PreTokenizer p = PreTokenizer::gpt4();
  std::vector<std::string> pieces;
  p.split("Hello world's 1234567 foo!!  bar\n\n baz",
          [&](std::string_view s) { pieces.emplace_back(s); });
  const std::vector<std::string> want = {"Hello", " world", "'s", " ",    "123",  "456", "7",
                                         " foo",  "!!",     " ",  " bar", "\n\n", " baz"};
  EXPECT_EQ(pieces, want);
}

TEST(BpeTokenizer, TrainedVocabHasExactSizeAndLayout) {
  const BpeTokenizer& tok = small_tokenizer();
  EXPECT_EQ(tok.vocab_size(), 600);
  EXPECT_EQ(tok.n_merges(), 600 - 5 - 256);
  EXPECT_EQ(tok.bos_id(), 0u);
  EXPECT_EQ(tok.eos_id(), 1u);
  EXPECT_EQ(tok.pad_id(), 2u);
  EXPECT_EQ(tok.token_to_id("<|user|>"), 3u);
  EXPECT_EQ(tok.token_to_id("<|assistant|>"), 4u);
  EXPECT_EQ(tok.token_to_id("a"), 5u + 'a');
  EXPECT_EQ(tok.name().size(), 4u + 16u);
  EXPECT_EQ(tok.name().rfind("bpe-", 0), 0u);
}

TEST(BpeTokenizer, RoundTripsHostileText) {
  const BpeTokenizer& tok = small_tokenizer();
  for (const auto& s : hostile_texts()) {
    const auto ids = tok.encode(s);
    EXPECT_EQ(tok.decode(ids), s) << "text: " << s.substr(0, 60);
    const auto ids2 = tok.encode(s, /*allow_special=*/true);
    EXPECT_EQ(tok.decode(ids2), s);
    for (uint32_t id : ids) EXPECT_LT(id, static_cast<uint32_t>(tok.vocab_size()));
  }
}

TEST(BpeTokenizer, RoundTripsRandomBytes) {
  const BpeTokenizer& tok = small_tokenizer();
  std::mt19937 rng(7);
  for (int i = 0; i < 200; ++i) {
    std::string s(rng() % 300, '\0');
    for (auto& c : s) c = static_cast<char>(rng() % 4 == 0 ? rng() % 256 : "ab \n1"[rng() % 5]);
    ASSERT_EQ(tok.decode(tok.encode(s)), s);
  }
}

TEST(BpeTokenizer, CompressesTrainingLikeText) {
  const BpeTokenizer& tok = small_tokenizer();
  const std::string s = "The quick brown fox jumps over the lazy dog.";
  EXPECT_LT(tok.encode(s).size(), s.size() / 2);
}

// Plain reference BPE on vocab strings: merge the lowest-rank adjacent pair, leftmost first.
std::vector<uint32_t> reference_bpe(const nlohmann::json& j, const std::string& piece) {
  std::map<std::pair<std::string, std::string>, size_t> rank;
  const auto& merges = j["model"]["merges"];
  for (size_t r = 0; r < merges.size(); ++r) {
    const std::string m = merges[r];
    rank.emplace(std::make_pair(m.substr(0, m.find(' ')), m.substr(m.find(' ') + 1)), r);
  }
  std::vector<std::string> sym;
  for (char c : piece) sym.push_back(bytes_to_unicode_string(std::string(1, c)));
  for (;;) {
    size_t best = SIZE_MAX, at = 0;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      auto it = rank.find({sym[i], sym[i + 1]});
      if (it != rank.end() && it->second < best) best = it->second, at = i;
    }
    if (best == SIZE_MAX) break;
    sym[at] += sym[at + 1];
    sym.erase(sym.begin() + static_cast<std::ptrdiff_t>(at) + 1);
  }
  std::vector<uint32_t> ids;
  for (const auto& s : sym) ids.push_back(j["model"]["vocab"][s].get<uint32_t>());
  return ids;
}

TEST(BpeTokenizer, MergeOrderMatchesReferenceOnShortAndLongPieces) {
  // pieces of letters only are single pre-tokens: lengths around the heap threshold and far
  // beyond exercise both merge loops
  std::mt19937 rng(3);
  auto word = [&](size_t n) {
    std::string s(n, 'a');
    for (auto& c : s) c = "aab"[rng() % 3];
    return s;
  };
  std::vector<std::string> texts;
  for (int i = 0; i < 300; ++i) texts.push_back(word(1 + rng() % 40));
  BpeTrainOptions o;
  o.vocab_size = 400;
  const BpeTokenizer tok = BpeTokenizer::train(texts, o);
  const nlohmann::json j = nlohmann::json::parse(tok.to_json());
  for (size_t n : {2, 5, 20, 47, 48, 49, 50, 64, 200, 1000}) {
    for (int rep = 0; rep < 3; ++rep) {
      const std::string s = word(n);
      EXPECT_EQ(tok.encode(s), reference_bpe(j, s)) << s;
    }
  }
}

TEST(BpeTokenizer, SpecialTokensAreSingleIdsOnlyWhenAllowed) {
  const BpeTokenizer& tok = small_tokenizer();
  const std::string s = "<｜begin▁of▁sentence｜>hi<|user|>x<｜end▁of▁sentence｜>";
  const auto on = tok.encode(s, true);
  ASSERT_GE(on.size(), 4u);
  EXPECT_EQ(on.front(), 0u);
  EXPECT_EQ(on.back(), 1u);
  EXPECT_NE(std::find(on.begin(), on.end(), 3u), on.end());
  const auto off = tok.encode(s, false);
  for (uint32_t id : off) EXPECT_GT(id, 4u);
  EXPECT_EQ(tok.decode(off), s);
  EXPECT_EQ(tok.decode(on), s);
  EXPECT_EQ(tok.decode(on, /*skip_special=*/true), "hix");
}

TEST(BpeTokenizer, IdenticalAcrossRunsAndThreadCounts) {
  const BpeTokenizer& tok = small_tokenizer();
  BpeTrainOptions o;
  o.vocab_size = 600;
  o.special_tokens = {"<|user|>", "<|assistant|>"};
  const BpeTokenizer again = BpeTokenizer::train(training_texts(), o);
  EXPECT_EQ(again.tokenizer_hash(), tok.tokenizer_hash());
  EXPECT_EQ(again.to_json(), tok.to_json());

  std::vector<std::string> docs;
  for (int r = 0; r < 20; ++r)
    for (const auto& s : hostile_texts()) docs.push_back(s + std::to_string(r));
  const auto one = tok.encode_batch(docs, 1);
  for (int t : {2, 3, 8}) EXPECT_EQ(tok.encode_batch(docs, t), one) << t << " threads";
  for (size_t i = 0; i < docs.size(); ++i) EXPECT_EQ(one[i], again.encode(docs[i]));
}

TEST(BpeTokenizer, SaveLoadGivesIdenticalIds) {
  const std::string dir = tmp_dir();
  const BpeTokenizer& tok = small_tokenizer();
  tok.save(dir + "/tokenizer.json");
  const BpeTokenizer back = BpeTokenizer::load(dir + "/tokenizer.json");
  EXPECT_EQ(back.tokenizer_hash(), tok.tokenizer_hash());
  EXPECT_EQ(back.vocab_size(), tok.vocab_size());
  for (const auto& s : hostile_texts()) {
    EXPECT_EQ(back.encode(s), tok.encode(s));
    EXPECT_EQ(back.encode(s, true), tok.encode(s, true));
  }
  // the file is HF's format
  nlohmann::json j = nlohmann::json::parse(tok.to_json());
  EXPECT_EQ(j["version"], "1.0");
  EXPECT_EQ(j["model"]["type"], "BPE");
  EXPECT_EQ(j["pre_tokenizer"]["type"], "Sequence");
  EXPECT_EQ(j["pre_tokenizer"]["pretokenizers"][0]["type"], "Split");
  EXPECT_EQ(j["pre_tokenizer"]["pretokenizers"][0]["behavior"], "Isolated");
  EXPECT_EQ(j["pre_tokenizer"]["pretokenizers"][1]["type"], "ByteLevel");
  EXPECT_EQ(j["pre_tokenizer"]["pretokenizers"][1]["use_regex"], false);
  EXPECT_EQ(j["decoder"]["type"], "ByteLevel");
  EXPECT_EQ(j["added_tokens"].size(), 5u);
  EXPECT_EQ(j["added_tokens"][1]["content"], BpeTokenizer::kEos);
  EXPECT_EQ(j["model"]["vocab"].size(), 600u);

  // merges as [a, b] pairs load to the same tokenizer
  for (auto& m : j["model"]["merges"]) {
    const std::string s = m;
    m = nlohmann::json::array({s.substr(0, s.find(' ')), s.substr(s.find(' ') + 1)});
  }
  const BpeTokenizer pairs = BpeTokenizer::from_json(j.dump(), "pairs.json");
  EXPECT_EQ(pairs.tokenizer_hash(), tok.tokenizer_hash());
  fs::remove_all(dir);
}

TEST(BpeTokenizer, TrainsFromCorpusAndHashChangesWithContent) {
  const std::string dir = tmp_dir();
  write_file(dir + "/a.txt", "hello hello hello world world\n");
  write_file(dir + "/b.jsonl", "{\"text\": \"hello there\"}\n{\"text\": \"worldly hellos\"}\n");
  Corpus corpus({dir});
  BpeTrainOptions o;
  o.vocab_size = 265;
  const BpeTokenizer a = BpeTokenizer::train(corpus, o);
  EXPECT_EQ(a.vocab_size(), 265);
  o.vocab_size = 266;
  corpus.rewind();
  const BpeTokenizer b = BpeTokenizer::train(corpus, o);
  EXPECT_NE(a.tokenizer_hash(), b.tokenizer_hash());
  o.vocab_size = 100000;  // more than the corpus has pairs for
  corpus.rewind();
  EXPECT_THROW(BpeTokenizer::train(corpus, o), DataError);
  o.vocab_size = 200;  // below specials + bytes
  EXPECT_THROW(BpeTokenizer::train(std::vector<std::string>{"x"}, o), DataError);
  fs::remove_all(dir);
}

void expect_load_error(const std::string& path, const std::string& needle) {
  try {
    BpeTokenizer::load(path);
    ADD_FAILURE() << "no error for " << path;
  } catch (const DataError& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(needle), std::string::npos) << msg;
  }
}

TEST(BpeTokenizer, BadFilesGiveClearErrors) {
  const std::string dir = tmp_dir();
  expect_load_error(dir + "/missing.json", "cannot open");
  write_file(dir + "/bad.json", "{\"model\": {\"type\": \"BPE\", ");
  expect_load_error(dir + "/bad.json", "not valid JSON");
  nlohmann::json j = nlohmann::json::parse(small_tokenizer().to_json());
  j["model"]["type"] = "WordPiece";
  write_file(dir + "/wp.json", j.dump());
  expect_load_error(dir + "/wp.json", "WordPiece");
  j = nlohmann::json::parse(small_tokenizer().to_json());
  j["model"]["merges"].push_back("zzz qqq");
  write_file(dir + "/merge.json", j.dump());
  expect_load_error(dir + "/merge.json", "not in the vocab");
  j = nlohmann::json::parse(small_tokenizer().to_json());
  j["pre_tokenizer"] = {{"type", "Whitespace"}};
  write_file(dir + "/pre.json", j.dump());
  expect_load_error(dir + "/pre.json", "Whitespace");
  j = nlohmann::json::parse(small_tokenizer().to_json());
  j["model"]["vocab"].erase("a");
  write_file(dir + "/nobyte.json", j.dump());
  expect_load_error(dir + "/nobyte.json", "");
  fs::remove_all(dir);
}

TEST(BpeTokenizer, LoadsGpt2StyleByteLevelWithPrefixSpace) {
  // a GPT-2 style file: ByteLevel(add_prefix_space, use_regex) only, an added token after the
  // vocab, and an ignore_merges flag
  nlohmann::json j = nlohmann::json::parse(small_tokenizer().to_json());
  j["pre_tokenizer"] = {{"type", "ByteLevel"}, {"add_prefix_space", true}, {"use_regex", true}};
  j["added_tokens"].push_back({{"id", 600},
                               {"content", "<extra>"},
                               {"special", false},
                               {"normalized", true},
                               {"lstrip", false},
                               {"rstrip", false},
                               {"single_word", false}});
  const BpeTokenizer tok = BpeTokenizer::from_json(j.dump(), "gpt2.json");
  EXPECT_EQ(tok.vocab_size(), 601);
  const std::string s = "hello world<extra>it's";
  const auto ids = tok.encode(s, true);
  EXPECT_EQ(tok.decode(ids), " hello world<extra> it's");  // prefix space per segment
  EXPECT_NE(std::find(ids.begin(), ids.end(), 600u), ids.end());
  j["added_tokens"].back()["id"] = 700;  // HF would give it 600
  EXPECT_THROW(BpeTokenizer::from_json(j.dump(), "gpt2.json"), DataError);
}

TEST(BpeTokenizer, CacheStaysCorrectPastItsBounds) {
  // ~300K distinct pieces: more than a per-thread cache holds, so it is reset mid-text
  std::mt19937 rng(11);
  std::string text;
  std::vector<std::string> chunks(1);
  for (int w = 0; w < 300000; ++w) {
    std::string word = " ";
    for (int i = 0; i < 6; ++i) word.push_back(static_cast<char>('a' + rng() % 26));
    text += word;
    chunks.back() += word;
    if (w % 1000 == 999) chunks.emplace_back();
  }
  const BpeTokenizer& tok = small_tokenizer();
  const auto ids = tok.encode(text);
  EXPECT_EQ(tok.encode(text), ids);
  EXPECT_EQ(tok.decode(ids), text);
  std::vector<uint32_t> joined;
  for (const auto& v : tok.encode_batch(chunks, 2)) joined.insert(joined.end(), v.begin(), v.end());
  EXPECT_EQ(joined, ids);
}

TEST(BpeTokenizer, DecodeRejectsUnknownIds) {
  const BpeTokenizer& tok = small_tokenizer();
  const std::vector<uint32_t> ids = {5, 100000};
  EXPECT_THROW(tok.decode(ids), DataError);
}

}  // namespace
}  // namespace moetron::data
