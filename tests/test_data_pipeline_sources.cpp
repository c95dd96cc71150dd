// data.train_path / data.valid_path text -> sources (data/sources.h): one path, a directory
// (its shard indexes, else its .h5 files, in name order), Megatron-style "W PATH W PATH" blends,
// and the messages for what is not one of those.
#include <gtest/gtest.h>

#include "data/sources.h"
#include "tests/test_data_pipeline_util.h"

namespace moetron::data::pipeline_test {
namespace {

TEST(Sources, OnePathIsOneSourceOfWeightOne) {
  TempDir dir;
  const std::string idx = make_source(dir, "a", 0, 500, 200, 50);
  const auto s = parse_sources(idx, "data.train_path");
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].paths, std::vector<std::string>{idx});
  EXPECT_EQ(s[0].weight, 1.0);
}

TEST(Sources, DirectoryPrefersIndexesElseShardsInNameOrder) {
  TempDir dir;
  const std::string a = make_source(dir, "b", 0, 500, 200, 50);
  const std::string b = make_source(dir, "a", 1, 500, 200, 50);
  auto s = parse_sources(dir.file(""), "data.train_path");
  ASSERT_EQ(s.size(), 1u);
  EXPECT_EQ(s[0].paths, (std::vector<std::string>{b, a}));  // a.index.json < b.index.json
  // without indexes: the shards (3 per source), sorted
  fs::remove(a), fs::remove(b);
  s = parse_sources(dir.file(""), "data.train_path");
  ASSERT_EQ(s[0].paths.size(), 6u);
  EXPECT_TRUE(std::is_sorted(s[0].paths.begin(), s[0].paths.end()));
  EXPECT_NE(s[0].paths[0].find("a_00000.h5"), std::string::npos);
}

TEST(Sources, BlendOfWeightsAndPaths) {
  TempDir dir;
  const std::string a = make_source(dir, "a", 0, 500, 200, 50);
  const std::string b = make_source(dir, "b", 1, 500, 200, 50);
  const auto s = parse_sources("0.7 " + a + "\n 3e-1\t" + b, "data.train_path");
  ASSERT_EQ(s.size(), 2u);
  EXPECT_EQ(s[0].weight, 0.7);
  EXPECT_EQ(s[1].weight, 0.3);
  EXPECT_EQ(s[1].paths, std::vector<std::string>{b});
  // and the Dataset takes them with those weights
  DatasetOptions o;
  o.seq_len = 16;
  const Dataset d(s, o);
  EXPECT_EQ(d.n_sources(), 2);
  EXPECT_NEAR(d.source(0).effective_weight, 0.7, 1e-4);
}

TEST(Sources, BadSettingsNameTheSettingAndThePath) {
  TempDir dir;
  const std::string a = make_source(dir, "a", 0, 500, 200, 50);
  expect_data_error([&] { parse_sources("", "data.valid_path"); },
                    {"data.valid_path", "no data path"});
  expect_data_error([&] { parse_sources(dir.file("nope.h5"), "data.train_path"); },
                    {"data.train_path", "nope.h5", "no such file"});
  expect_data_error([&] { parse_sources("1 " + a + " 2", "data.train_path"); },
                    {"data.train_path", "pairs", "3 words"});
  for (const char* w : {"0", "-1", "x", "1.5x", "inf", "nan"})
    expect_data_error([&] { parse_sources(std::string(w) + " " + a, "data.train_path"); },
                      {"data.train_path", "weight of " + a, "positive number", w});
  fs::create_directories(dir.file("empty"));
  write_text(dir.file("empty/readme.txt"), "not a shard");
  expect_data_error([&] { parse_sources(dir.file("empty"), "data.train_path"); },
                    {"empty", "holds no token shards"});
}

}  // namespace
}  // namespace moetron::data::pipeline_test
