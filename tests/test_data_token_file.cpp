// Tests for HDF5 token files (data/token_file.h): round trips with random access across chunk
// boundaries, the on-disk layout (types, chunking, filters, attributes), and bad input. Every
// bad file must fail with a DataError that names the file, never a crash or an HDF5 stack dump,
// and a failed write must leave nothing behind.
#include <gtest/gtest.h>
#include <hdf5.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "data/token_file.h"
#include "tests/test_data_util.h"

namespace moetron::data {
namespace {

namespace fs = std::filesystem;

using test_util::expect_data_error;
using test_util::TempDir;

std::vector<uint32_t> random_tokens(size_t n, uint32_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<uint32_t> dist(0, vocab - 1);
  std::vector<uint32_t> t(n);
  for (auto& x : t) x = dist(rng);
  return t;
}

// Cuts `n` tokens into documents of random lengths.
std::vector<uint64_t> random_offsets(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<uint64_t> off{0};
  while (off.back() < n) off.push_back(std::min<uint64_t>(n, off.back() + 1 + rng() % 5000));
  return off;
}

// ---- raw HDF5 helpers for foreign / hand-made files ----

struct H5File {
  hid_t id;
  explicit H5File(const std::string& path)
      : id(H5Fcreate(path.c_str(), H5F_ACC_TRUNC, H5P_DEFAULT, H5P_DEFAULT)) {
    EXPECT_GE(id, 0);
  }
  ~H5File() { H5Fclose(id); }
};

void raw_dataset(hid_t file, const char* name, hid_t type, const std::vector<hsize_t>& dims,
                 const void* data) {
  hid_t space = H5Screate_simple(static_cast<int>(dims.size()), dims.data(), nullptr);
  hid_t ds = H5Dcreate2(file, name, type, space, H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(ds, 0);
  if (data != nullptr) {
    ASSERT_GE(H5Dwrite(ds, type, H5S_ALL, H5S_ALL, H5P_DEFAULT, data), 0);
  }
  H5Dclose(ds);
  H5Sclose(space);
}

void raw_int_attr(hid_t obj, const char* name, int64_t v) {
  if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(obj, name, H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(a, 0);
  ASSERT_GE(H5Awrite(a, H5T_NATIVE_INT64, &v), 0);
  H5Aclose(a);
  H5Sclose(space);
}

// Fixed-length string attribute (the writer uses variable-length ones; readers take both).
void raw_fixed_str_attr(hid_t obj, const char* name, const std::string& v) {
  if (H5Aexists(obj, name) > 0) H5Adelete(obj, name);
  hid_t type = H5Tcopy(H5T_C_S1);
  H5Tset_size(type, v.size());
  H5Tset_strpad(type, H5T_STR_NULLPAD);
  hid_t space = H5Screate(H5S_SCALAR);
  hid_t a = H5Acreate2(obj, name, type, space, H5P_DEFAULT, H5P_DEFAULT);
  ASSERT_GE(a, 0);
  ASSERT_GE(H5Awrite(a, type, v.data()), 0);
  H5Aclose(a);
  H5Sclose(space);
  H5Tclose(type);
}

// Opens an existing file read-write and runs fn on it (for tampering with attributes).
void tamper(const std::string& path, const std::function<void(hid_t)>& fn) {
  std::lock_guard<std::mutex> lock(hdf5_mutex());
  hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  fn(f);
  H5Fclose(f);
}

// A hand-made file with the given tokens/offsets and all required attributes.
void write_raw_token_file(const std::string& path, const std::vector<uint32_t>& tokens,
                          const std::vector<uint64_t>& offsets, int64_t vocab) {
  std::lock_guard<std::mutex> lock(hdf5_mutex());
  H5File f(path);
  raw_dataset(f.id, "tokens", H5T_NATIVE_UINT32, {tokens.size()}, tokens.data());
  raw_dataset(f.id, "doc_offsets", H5T_NATIVE_UINT64, {offsets.size()}, offsets.data());
  raw_int_attr(f.id, "vocab_size", vocab);
  raw_fixed_str_attr(f.id, "tokenizer", "hand-made");
  raw_fixed_str_attr(f.id, "format", "moetron-tokens-v1");
}

// ---- round trips ----

TEST(TokenFile, RoundTripRandomAccessAcrossChunks) {
  TempDir dir;
  const std::string path = dir.file("t.h5");
  const size_t n = 200000;  // chunks of 65536: boundaries at 65536, 131072, 196608
  const uint32_t vocab = 50000;
  const auto tokens = random_tokens(n, vocab, 1);
  const auto offsets = random_offsets(n, 2);
  write_token_file(path, tokens, offsets, vocab, "test-tok", "unit test");
  EXPECT_FALSE(fs::exists(path + ".tmp"));

  TokenFile tf(path);
  EXPECT_EQ(tf.path(), path);
  EXPECT_EQ(tf.info().n_tokens, static_cast<int64_t>(n));
  EXPECT_EQ(tf.info().n_docs, static_cast<int64_t>(offsets.size() - 1));
  EXPECT_EQ(tf.info().vocab_size, vocab);
  EXPECT_EQ(tf.info().tokenizer, "test-tok");
  EXPECT_EQ(tf.info().source, "unit test");

  auto check_window = [&](int64_t start, int64_t len) {
    std::vector<uint32_t> out(static_cast<size_t>(len) + 1, 0xDEADBEEF);
    tf.read(start, len, out.data());
    for (int64_t i = 0; i < len; ++i) {
      ASSERT_EQ(out[i], tokens[start + i]) << "start " << start << " i " << i;
    }
    EXPECT_EQ(out[len], 0xDEADBEEFu) << "read past the window";
  };
  for (int64_t b : {int64_t{65536}, int64_t{131072}, int64_t{196608}}) {
    check_window(b - 1, 2);
    check_window(b - 100, 200);
    check_window(b, 1);
    check_window(b - 1, 1);
  }
  check_window(0, static_cast<int64_t>(n));            // everything
  check_window(0, 1);                                  // first token
  check_window(static_cast<int64_t>(n) - 1, 1);        // last token
  check_window(1000, 65536 * 2 + 17);                  // spans three chunks
  check_window(static_cast<int64_t>(n) - 5000, 5000);  // the short last chunk
  std::mt19937_64 rng(3);
  for (int i = 0; i < 200; ++i) {
    const int64_t len = 1 + static_cast<int64_t>(rng() % 3000);
    check_window(static_cast<int64_t>(rng() % (n - len + 1)), len);
  }
  tf.read(static_cast<int64_t>(n), 0, nullptr);  // empty read at the end is fine

  // doc_offsets: all, a middle range, a single document, and the empty range at the end.
  const int64_t docs = tf.info().n_docs;
  EXPECT_EQ(tf.doc_offsets(0, docs), offsets);
  const auto mid = tf.doc_offsets(3, 5);
  ASSERT_EQ(mid.size(), 6u);
  for (size_t i = 0; i < mid.size(); ++i) EXPECT_EQ(mid[i], offsets[3 + i]);
  EXPECT_EQ(tf.doc_offsets(docs, 0), std::vector<uint64_t>{n});
}

TEST(TokenFile, LayoutOnDisk) {
  TempDir dir;
  const std::string big = dir.file("big.h5"), small = dir.file("small.h5");
  write_token_file(big, random_tokens(150000, 1000, 4), {0, 100000, 150000}, 1000, "tok", "src");
  write_token_file(small, {1, 2, 3}, {0, 3}, 10, "tok", "src");

  std::lock_guard<std::mutex> lock(hdf5_mutex());
  auto chunk_of = [](hid_t f, const char* name) {
    hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
    hid_t dcpl = H5Dget_create_plist(ds);
    EXPECT_EQ(H5Pget_layout(dcpl), H5D_CHUNKED);
    hsize_t chunk[1] = {0};
    H5Pget_chunk(dcpl, 1, chunk);
    // shuffle then deflate level 4
    EXPECT_EQ(H5Pget_nfilters(dcpl), 2);
    unsigned flags = 0, cd[4] = {0, 0, 0, 0};
    size_t ncd = 4;
    EXPECT_EQ(H5Pget_filter2(dcpl, 0, &flags, &ncd, cd, 0, nullptr, nullptr), H5Z_FILTER_SHUFFLE);
    ncd = 4;
    EXPECT_EQ(H5Pget_filter2(dcpl, 1, &flags, &ncd, cd, 0, nullptr, nullptr), H5Z_FILTER_DEFLATE);
    EXPECT_EQ(cd[0], 4u);
    H5Pclose(dcpl);
    H5Dclose(ds);
    return chunk[0];
  };
  auto type_of = [](hid_t f, const char* name, size_t* size, H5T_sign_t* sign) {
    hid_t ds = H5Dopen2(f, name, H5P_DEFAULT);
    hid_t t = H5Dget_type(ds);
    EXPECT_EQ(H5Tget_class(t), H5T_INTEGER);
    *size = H5Tget_size(t);
    *sign = H5Tget_sign(t);
    H5Tclose(t);
    H5Dclose(ds);
  };
  hid_t f = H5Fopen(big.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  EXPECT_EQ(chunk_of(f, "tokens"), 65536u);
  size_t size = 0;
  H5T_sign_t sign = H5T_SGN_ERROR;
  type_of(f, "tokens", &size, &sign);
  EXPECT_EQ(size, 4u);
  EXPECT_EQ(sign, H5T_SGN_NONE);
  type_of(f, "doc_offsets", &size, &sign);
  EXPECT_EQ(size, 8u);  // 64-bit offsets
  EXPECT_EQ(sign, H5T_SGN_NONE);
  for (const char* name : {"vocab_size", "n_docs", "n_tokens"}) {
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    ASSERT_GE(a, 0) << name;
    hid_t t = H5Aget_type(a);
    EXPECT_EQ(H5Tget_class(t), H5T_INTEGER) << name;
    EXPECT_EQ(H5Tget_size(t), 8u) << name;
    int64_t v = 0;
    H5Aread(a, H5T_NATIVE_INT64, &v);
    EXPECT_EQ(v, std::string(name) == "vocab_size" ? 1000
                 : std::string(name) == "n_docs"   ? 2
                                                   : 150000);
    H5Tclose(t);
    H5Aclose(a);
  }
  for (const char* name : {"tokenizer", "source", "format"}) {
    hid_t a = H5Aopen(f, name, H5P_DEFAULT);
    ASSERT_GE(a, 0) << name;
    hid_t t = H5Aget_type(a);
    EXPECT_EQ(H5Tget_class(t), H5T_STRING) << name;
    H5Tclose(t);
    H5Aclose(a);
  }
  H5Fclose(f);
  f = H5Fopen(small.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
  ASSERT_GE(f, 0);
  EXPECT_EQ(chunk_of(f, "tokens"), 3u);  // small files: one chunk of exactly the data
  H5Fclose(f);
}

TEST(TokenFile, EmptyDocumentsAndOverwrite) {
  TempDir dir;
  const std::string path = dir.file("t.h5");
  write_token_file(path, {5, 6, 7}, {0, 0, 2, 2, 3}, 8, "a", "first");
  {
    TokenFile tf(path);
    EXPECT_EQ(tf.info().n_docs, 4);
    EXPECT_EQ(tf.doc_offsets(0, 4), (std::vector<uint64_t>{0, 0, 2, 2, 3}));
  }
  write_token_file(path, {1}, {0, 1}, 2, "b", "second");  // atomic replace
  TokenFile tf(path);
  EXPECT_EQ(tf.info().n_tokens, 1);
  EXPECT_EQ(tf.info().tokenizer, "b");
  EXPECT_EQ(tf.info().source, "second");
}

TEST(TokenFile, EmptyFileRoundTrips) {
  TempDir dir;
  const std::string path = dir.file("empty.h5");
  write_token_file(path, {}, {0}, 10, "tok", "");
  TokenFile tf(path);
  EXPECT_EQ(tf.info().n_tokens, 0);
  EXPECT_EQ(tf.info().n_docs, 0);
  EXPECT_EQ(tf.doc_offsets(0, 0), std::vector<uint64_t>{0});
  expect_data_error(
      [&] {
        uint32_t x;
        tf.read(0, 1, &x);
      },
      {path, "out of range"});
}

TEST(TokenFile, ReadsFixedLengthStringAttributes) {
  TempDir dir;
  const std::string path = dir.file("raw.h5");
  write_raw_token_file(path, {1, 2, 3, 4}, {0, 1, 4}, 5);
  TokenFile tf(path);
  EXPECT_EQ(tf.info().tokenizer, "hand-made");
  EXPECT_EQ(tf.info().source, "");  // optional
  std::vector<uint32_t> out(4);
  tf.read(0, 4, out.data());
  EXPECT_EQ(out, (std::vector<uint32_t>{1, 2, 3, 4}));
}

TEST(TokenFile, ConcurrentReadersAgree) {
  TempDir dir;
  const std::string a = dir.file("a.h5"), b = dir.file("b.h5");
  const auto ta = random_tokens(100000, 7000, 5), tb = random_tokens(90000, 300, 6);
  write_token_file(a, ta, {0, ta.size()}, 7000, "t", "a");
  write_token_file(b, tb, {0, tb.size()}, 300, "t", "b");
  TokenFile fa(a), fb(b);
  std::atomic<int> bad{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(100 + t);
      std::vector<uint32_t> out(2048);
      for (int i = 0; i < 200; ++i) {
        const bool use_a = (rng() & 1) != 0;
        const auto& ref = use_a ? ta : tb;
        const int64_t len = 1 + static_cast<int64_t>(rng() % 2048);
        const int64_t start = static_cast<int64_t>(rng() % (ref.size() - len + 1));
        (use_a ? fa : fb).read(start, len, out.data());
        if (!std::equal(out.begin(), out.begin() + len, ref.begin() + start)) ++bad;
      }
    });
  }
  for (auto& th : threads) th.join();
  EXPECT_EQ(bad.load(), 0);
}

// ---- bad reads on a good file ----

TEST(TokenFile, OutOfRangeReadsThrow) {
  TempDir dir;
  const std::string path = dir.file("t.h5");
  write_token_file(path, {1, 2, 3, 4, 5}, {0, 2, 5}, 6, "t", "s");
  TokenFile tf(path);
  uint32_t out[8];
  const int64_t big = std::numeric_limits<int64_t>::max();
  for (auto [s, n] : std::vector<std::pair<int64_t, int64_t>>{
           {-1, 1}, {0, -1}, {0, 6}, {5, 1}, {6, 0}, {1, big}, {big, 1}, {big, big}}) {
    expect_data_error([&] { tf.read(s, n, out); }, {path, "out of range"});
  }
  for (auto [d, n] :
       std::vector<std::pair<int64_t, int64_t>>{{-1, 1}, {0, 3}, {3, 0}, {1, -1}, {1, big}}) {
    expect_data_error([&] { tf.doc_offsets(d, n); }, {path, "out of range"});
  }
}

// ---- bad files ----

TEST(TokenFileErrors, MissingFile) {
  TempDir dir;
  const std::string path = dir.file("nope.h5");
  expect_data_error([&] { TokenFile tf(path); }, {path, "no such file"});
  expect_data_error([&] { TokenFile tf(dir.file("nodir/x.h5")); }, {"nodir/x.h5", "no such file"});
  expect_data_error([&] { TokenFile tf(dir.path().string()); }, {dir.path().string()});
}

TEST(TokenFileErrors, NotHdf5) {
  TempDir dir;
  const std::string path = dir.file("text.h5");
  std::ofstream(path) << "this is not an HDF5 file, just some text\n";
  expect_data_error([&] { TokenFile tf(path); }, {path, "not an HDF5 file"});
  const std::string empty = dir.file("empty.h5");
  std::ofstream{empty};
  expect_data_error([&] { TokenFile tf(empty); }, {empty, "not an HDF5 file"});
}

TEST(TokenFileErrors, TruncatedFile) {
  TempDir dir;
  const std::string good = dir.file("good.h5");
  const auto tokens = random_tokens(300000, 60000, 7);
  write_token_file(good, tokens, random_offsets(tokens.size(), 8), 60000, "t", "s");
  const auto full = fs::file_size(good);
  ASSERT_GT(full, 100000u);
  // Half (the brief's case), plus a few other cut points incl. one byte short.
  for (double frac : {0.5, 0.1, 0.9, 0.99}) {
    for (uintmax_t size : {static_cast<uintmax_t>(static_cast<double>(full) * frac), full - 1}) {
      const std::string path = dir.file("cut_" + std::to_string(size) + ".h5");
      fs::copy_file(good, path, fs::copy_options::overwrite_existing);
      fs::resize_file(path, size);
      expect_data_error(
          [&] {
            TokenFile tf(path);
            std::vector<uint32_t> all(tokens.size());
            tf.read(0, static_cast<int64_t>(all.size()), all.data());
          },
          {path});
    }
  }
  // Cut to a few bytes: no longer even recognisable as HDF5.
  const std::string tiny = dir.file("tiny.h5");
  fs::copy_file(good, tiny);
  fs::resize_file(tiny, 4);
  expect_data_error([&] { TokenFile tf(tiny); }, {tiny, "not an HDF5 file"});
}

TEST(TokenFileErrors, CorruptChunk) {
  // Overwrites the compressed bytes of the second chunk of "tokens": opening still works
  // (metadata is intact), windows in other chunks still read, and a read touching the bad chunk
  // throws (deflate fails, or garbage ids are caught) instead of crashing.
  TempDir dir;
  const std::string path = dir.file("corrupt.h5");
  const auto tokens = random_tokens(200000, 60000, 9);
  write_token_file(path, tokens, {0, tokens.size()}, 60000, "t", "s");
  haddr_t addr = 0;
  hsize_t size = 0;
  {
    std::lock_guard<std::mutex> lock(hdf5_mutex());
    hid_t f = H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT);
    hid_t ds = H5Dopen2(f, "tokens", H5P_DEFAULT);
    hsize_t offset[1] = {0};
    unsigned mask = 0;
    hid_t space = H5Dget_space(ds);
    EXPECT_GE(H5Dget_chunk_info(ds, space, 1, offset, &mask, &addr, &size), 0);
    H5Sclose(space);
    EXPECT_EQ(offset[0], 65536u);
    H5Dclose(ds);
    H5Fclose(f);
  }
  ASSERT_GT(size, 64u);
  {
    std::fstream io(path, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(static_cast<std::streamoff>(addr));
    std::mt19937 rng(10);
    for (hsize_t i = 0; i < size; ++i) io.put(static_cast<char>(rng()));
  }
  TokenFile tf(path);
  std::vector<uint32_t> out(1000);
  tf.read(1000, 1000, out.data());
  EXPECT_TRUE(std::equal(out.begin(), out.end(), tokens.begin() + 1000));
  expect_data_error([&] { tf.read(65000, 1000, out.data()); }, {path});
  tf.read(140000, 1000, out.data());  // the file stays usable after the error
  EXPECT_TRUE(std::equal(out.begin(), out.end(), tokens.begin() + 140000));
}

TEST(TokenFileErrors, ForeignHdf5WithoutTokens) {
  TempDir dir;
  const std::string path = dir.file("foreign.h5");
  {
    std::lock_guard<std::mutex> lock(hdf5_mutex());
    H5File f(path);
    const std::vector<double> x{1.0, 2.0};
    raw_dataset(f.id, "weights", H5T_NATIVE_DOUBLE, {2}, x.data());
  }
  expect_data_error([&] { TokenFile tf(path); }, {path, "'tokens'"});
}

TEST(TokenFileErrors, TokensOfTheWrongTypeOrShape) {
  TempDir dir;
  struct Case {
    const char* name;
    hid_t type;
    std::vector<hsize_t> dims;
    const char* found;
  };
  const std::vector<Case> cases{
      {"float.h5", H5T_NATIVE_FLOAT, {4}, "float32"},
      {"double.h5", H5T_NATIVE_DOUBLE, {4}, "float64"},
      {"int32.h5", H5T_NATIVE_INT32, {4}, "int32"},
      {"uint16.h5", H5T_NATIVE_UINT16, {4}, "uint16"},
      {"uint64.h5", H5T_NATIVE_UINT64, {4}, "uint64"},
      {"2d.h5", H5T_NATIVE_UINT32, {2, 2}, "2-D uint32"},
  };
  for (const Case& c : cases) {
    const std::string path = dir.file(c.name);
    {
      std::lock_guard<std::mutex> lock(hdf5_mutex());
      H5File f(path);
      std::vector<uint64_t> zeros(4, 0);  // big enough for any of the types
      raw_dataset(f.id, "tokens", c.type, c.dims, zeros.data());
      const std::vector<uint64_t> off{0, 4};
      raw_dataset(f.id, "doc_offsets", H5T_NATIVE_UINT64, {2}, off.data());
      raw_int_attr(f.id, "vocab_size", 10);
      raw_fixed_str_attr(f.id, "format", "moetron-tokens-v1");
      raw_fixed_str_attr(f.id, "tokenizer", "t");
    }
    expect_data_error([&] { TokenFile tf(path); },
                      {path, "dataset 'tokens' must be 1-D uint32, found", c.found});
  }
  // "tokens" that is a group, not a dataset.
  const std::string grp = dir.file("group.h5");
  {
    std::lock_guard<std::mutex> lock(hdf5_mutex());
    H5File f(grp);
    H5Gclose(H5Gcreate2(f.id, "tokens", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT));
  }
  expect_data_error([&] { TokenFile tf(grp); }, {grp, "'tokens'"});
}

TEST(TokenFileErrors, BadAttributes) {
  TempDir dir;
  const std::string base = dir.file("base.h5");
  write_token_file(base, {1, 2, 3}, {0, 3}, 4, "t", "s");
  struct Case {
    const char* name;
    std::function<void(hid_t)> edit;
    const char* expect;
  };
  const std::vector<Case> cases{
      {"no_vocab", [](hid_t f) { H5Adelete(f, "vocab_size"); }, "vocab_size"},
      {"zero_vocab", [](hid_t f) { raw_int_attr(f, "vocab_size", 0); }, "vocab_size"},
      {"neg_vocab", [](hid_t f) { raw_int_attr(f, "vocab_size", -5); }, "vocab_size"},
      {"str_vocab", [](hid_t f) { raw_fixed_str_attr(f, "vocab_size", "264"); }, "vocab_size"},
      {"no_format", [](hid_t f) { H5Adelete(f, "format"); }, "format"},
      {"bad_format", [](hid_t f) { raw_fixed_str_attr(f, "format", "other-v9"); }, "other-v9"},
      {"int_format", [](hid_t f) { raw_int_attr(f, "format", 1); }, "format"},
      {"no_tokenizer", [](hid_t f) { H5Adelete(f, "tokenizer"); }, "tokenizer"},
      {"n_tokens", [](hid_t f) { raw_int_attr(f, "n_tokens", 4); }, "n_tokens"},
      {"n_docs", [](hid_t f) { raw_int_attr(f, "n_docs", 2); }, "n_docs"},
  };
  for (const Case& c : cases) {
    const std::string path = dir.file(std::string(c.name) + ".h5");
    fs::copy_file(base, path);
    tamper(path, c.edit);
    expect_data_error([&] { TokenFile tf(path); }, {path, c.expect});
  }
}

TEST(TokenFileErrors, IdsNotBelowVocab) {
  TempDir dir;
  // The writer refuses them...
  const std::string w = dir.file("w.h5");
  expect_data_error(
      [&] {
        write_token_file(w, {1, 9, 2}, {0, 3}, 9, "t", "s");
      },
      {w, "token id 9 at offset 1", "vocab_size 9"});
  EXPECT_FALSE(fs::exists(w));
  EXPECT_FALSE(fs::exists(w + ".tmp"));
  // ...and the reader catches a file whose vocab_size was lowered afterwards.
  const std::string path = dir.file("r.h5");
  std::vector<uint32_t> tokens(100000, 3);
  tokens[77777] = 500;
  write_token_file(path, tokens, {0, tokens.size()}, 1000, "t", "s");
  tamper(path, [](hid_t f) { raw_int_attr(f, "vocab_size", 100); });
  TokenFile tf(path);  // opening does not scan the tokens
  std::vector<uint32_t> out(1000);
  tf.read(0, 1000, out.data());  // a clean window is fine
  expect_data_error([&] { tf.read(77000, 1000, out.data()); },
                    {path, "token id 500 at offset 77777", "vocab_size 100"});
}

TEST(TokenFileErrors, InconsistentOffsetsOnWrite) {
  TempDir dir;
  const std::string path = dir.file("w.h5");
  const std::vector<uint32_t> t{1, 2, 3, 4};
  const std::vector<std::vector<uint64_t>> bad{{}, {1, 4}, {0, 3}, {0, 5}, {0, 3, 2, 4}, {0}};
  for (const auto& off : bad) {
    expect_data_error([&] { write_token_file(path, t, off, 5, "t", "s"); }, {path, "doc_offsets"});
    EXPECT_FALSE(fs::exists(path));
    EXPECT_FALSE(fs::exists(path + ".tmp"));
  }
  expect_data_error([&] { write_token_file(path, t, {0, 4}, 0, "t", "s"); }, {path, "vocab_size"});
}

TEST(TokenFileErrors, InconsistentOffsetsOnRead) {
  TempDir dir;
  const std::vector<uint32_t> t{1, 2, 3, 4};
  struct Case {
    const char* name;
    std::vector<uint64_t> off;
    bool at_open;
  };
  const std::vector<Case> cases{
      {"end.h5", {0, 2, 3}, true},             // ends before n_tokens
      {"start.h5", {1, 2, 4}, true},           // does not start at 0
      {"past.h5", {0, 2, 5}, true},            // ends past n_tokens
      {"decreasing.h5", {0, 3, 1, 4}, false},  // caught when the range is read
      {"beyond.h5", {0, 9, 4}, false},
      {"empty.h5", {}, true},
  };
  for (const Case& c : cases) {
    const std::string path = dir.file(c.name);
    write_raw_token_file(path, t, c.off, 5);
    if (c.at_open) {
      expect_data_error([&] { TokenFile tf(path); }, {path, "doc_offsets"});
    } else {
      TokenFile tf(path);
      expect_data_error([&] { tf.doc_offsets(0, tf.info().n_docs); }, {path, "doc_offsets"});
    }
  }
  // doc_offsets of a signed type is rejected too.
  const std::string sgn = dir.file("signed.h5");
  {
    std::lock_guard<std::mutex> lock(hdf5_mutex());
    H5File f(sgn);
    raw_dataset(f.id, "tokens", H5T_NATIVE_UINT32, {4}, t.data());
    const std::vector<int64_t> off{0, 4};
    raw_dataset(f.id, "doc_offsets", H5T_NATIVE_INT64, {2}, off.data());
  }
  expect_data_error([&] { TokenFile tf(sgn); }, {sgn, "doc_offsets", "int64"});
}

TEST(TokenFileErrors, WriteIntoMissingDirectoryLeavesNothing) {
  TempDir dir;
  const std::string path = dir.file("no/such/dir/out.h5");
  expect_data_error([&] { write_token_file(path, {1, 2}, {0, 2}, 3, "t", "s"); }, {path});
  EXPECT_FALSE(fs::exists(path));
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  EXPECT_FALSE(fs::exists(dir.file("no")));
}

TEST(TokenFileErrors, FailedWriteKeepsTheOldFileAndStaleTmpIsReplaced) {
  TempDir dir;
  const std::string path = dir.file("keep.h5");
  write_token_file(path, {1, 2}, {0, 2}, 3, "old", "s");
  expect_data_error([&] { write_token_file(path, {1, 7}, {0, 2}, 3, "new", "s"); }, {path});
  expect_data_error([&] { write_token_file(path, {1, 2}, {0, 1}, 3, "new", "s"); }, {path});
  EXPECT_EQ(TokenFile(path).info().tokenizer, "old");
  // A stale .tmp from a crashed writer is replaced, never mistaken for the file.
  std::ofstream(path + ".tmp") << "stale";
  write_token_file(dir.file("keep.h5"), {2, 1}, {0, 2}, 3, "newer", "s");
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  TokenFile tf(path);
  EXPECT_EQ(tf.info().tokenizer, "newer");
}

}  // namespace
}  // namespace moetron::data
