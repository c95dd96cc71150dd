// Tests for the batch-size ramp (data/batch_schedule.h), the per-step DP split and resumption,
// the prefetching Loader (data/loader.h), and the dataset's bad-input checks: a resumed run
// (at any step, on DP sizes 1, 2 and 4) reads exactly the samples of the uninterrupted run; the
// prefetch thread delivers what direct calls give and re-throws its errors; missing, truncated,
// corrupt or foreign shards, stale indexes, out-of-vocab ids, short sources and bad weights fail
// with a DataError that names the file or source.
#include <gtest/gtest.h>
#include <hdf5.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <thread>
#include <vector>

#include "data/batch_schedule.h"
#include "data/dataset.h"
#include "data/loader.h"
#include "data/shard_writer.h"
#include "tests/test_data_pipeline_util.h"

namespace moetron::data {
namespace {

using namespace pipeline_test;

// ---- batch-size schedule ----

TEST(PipelineBatchSchedule, DeepSeekV3Ramp) {
  const int64_t ramp = 469'000'000'000;
  const BatchSchedule s(3072, 15360, ramp, 4096, 128, 1);
  EXPECT_EQ(s.batch_size_at(0), 3072);
  EXPECT_EQ(s.batch_size_at(ramp / 2), 9216);
  EXPECT_EQ(s.batch_size_at(ramp / 4), 6144);
  EXPECT_EQ(s.batch_size_at(ramp - 1), 15360 - 128);  // rounded down to a multiple of 128
  EXPECT_EQ(s.batch_size_at(ramp), 15360);
  EXPECT_EQ(s.batch_size_at(int64_t{14'800'000'000'000}), 15360);
  int64_t prev = 0;
  for (int64_t t = 0; t <= ramp + ramp / 10; t += ramp / 1000) {
    const int64_t b = s.batch_size_at(t);
    EXPECT_EQ(b % 128, 0);
    EXPECT_GE(b, prev);
    prev = b;
  }
  // replay: ~12.7K steps of ramp, then closed form
  const BatchSchedule::Consumed c = s.consumed_before(20000);
  int64_t samples = 0, tokens = 0;
  for (int step = 0; step < 20000; ++step) {
    const int64_t b = s.batch_size_at(tokens);
    samples += b, tokens += b * 4096;
  }
  EXPECT_EQ(c.samples, samples);
  EXPECT_EQ(c.tokens, tokens);
  EXPECT_GT(tokens, ramp);
}

TEST(PipelineBatchSchedule, RoundingAndFloor) {
  const BatchSchedule s(10, 100, 1000, 1, 4, 2);  // unit 8
  EXPECT_EQ(s.unit(), 8);
  EXPECT_EQ(s.batch_size_at(0), 8);      // 10 -> 8
  EXPECT_EQ(s.batch_size_at(500), 48);   // 55 -> 48
  EXPECT_EQ(s.batch_size_at(999), 96);   // 99 -> 96
  EXPECT_EQ(s.batch_size_at(1000), 96);  // final 100 -> 96
  const BatchSchedule tiny(3, 5, 100, 1, 4, 2);
  EXPECT_EQ(tiny.batch_size_at(0), 8);  // never below dp * micro
  EXPECT_EQ(tiny.batch_size_at(100), 8);
  const BatchSchedule c = BatchSchedule::constant(16, 128, 2, 8);
  EXPECT_EQ(c.batch_size_at(0), 16);
  EXPECT_EQ(c.consumed_before(10).samples, 160);
  EXPECT_EQ(c.consumed_before(10).tokens, 160 * 128);
  EXPECT_EQ(c.consumed_before(0).samples, 0);
  // decreasing ramps work too
  const BatchSchedule down(64, 16, 100, 1, 1, 1);
  EXPECT_EQ(down.batch_size_at(0), 64);
  EXPECT_EQ(down.batch_size_at(50), 40);
  EXPECT_EQ(down.batch_size_at(100), 16);
}

TEST(PipelineBatchSchedule, ReplayMatchesStepping) {
  const BatchSchedule s(8, 64, 5000, 16, 2, 2);
  int64_t samples = 0;
  for (int64_t step = 0; step < 200; ++step) {
    const BatchSchedule::Consumed c = s.consumed_before(step);
    ASSERT_EQ(c.samples, samples) << step;
    ASSERT_EQ(c.tokens, samples * 16);
    samples += s.batch_size_at(samples * 16);
  }
}

TEST(PipelineBatchSchedule, BadArguments) {
  EXPECT_THROW(BatchSchedule(0, 8, 10, 4, 1, 1), std::invalid_argument);
  EXPECT_THROW(BatchSchedule(8, 0, 10, 4, 1, 1), std::invalid_argument);
  EXPECT_THROW(BatchSchedule(8, 8, -1, 4, 1, 1), std::invalid_argument);
  EXPECT_THROW(BatchSchedule(8, 8, 10, 0, 1, 1), std::invalid_argument);
  EXPECT_THROW(BatchSchedule(8, 8, 10, 4, 0, 1), std::invalid_argument);
  EXPECT_THROW(BatchSchedule(8, 8, 10, 4, 1, 0), std::invalid_argument);
  EXPECT_THROW(BatchSchedule(8, 8, 10, 4, 1, 1).batch_size_at(-1), std::invalid_argument);
  EXPECT_THROW(BatchSchedule(8, 8, 10, 4, 1, 1).consumed_before(-1), std::invalid_argument);
}

// ---- steps, DP ranks, resumption ----

struct Data {
  TempDir dir;
  std::string a = make_source(dir, "a", 1, 20000, 1500, 45);
  std::string b = make_source(dir, "b", 2, 5000, 900, 30);
  std::unique_ptr<Dataset> make(int64_t seq_len = 32, int max_open = 64) const {
    DatasetOptions o;
    o.seq_len = seq_len;
    o.seed = 42;
    o.max_open_shards = max_open;
    return std::make_unique<Dataset>(std::vector<SourceSpec>{{"a", {a}, 0.6}, {"b", {b}, 0.4}}, o);
  }
};

// One step's samples over all ranks, keyed by global sample index.
using Step = std::map<int64_t, std::vector<int32_t>>;

void add_rows(const Batch& b, Step* step) {
  for (int64_t r = 0; r < b.rows; ++r) {
    const auto [it, fresh] =
        step->emplace(b.sample_index[static_cast<size_t>(r)],
                      std::vector<int32_t>(b.row(r), b.row(r) + b.seq_len + 1));
    EXPECT_TRUE(fresh) << "sample " << it->first << " on two ranks";
  }
}

// Runs `steps` steps on every rank of `dp` (each with its own Loader, like separate processes),
// starting from `consumed`; returns the steps and the samples consumed after them.
std::vector<Step> run(const Dataset& d, const BatchSchedule& s, int64_t dp, int64_t consumed,
                      int64_t steps, int prefetch, int64_t* consumed_after) {
  std::vector<Step> out(static_cast<size_t>(steps));
  for (int64_t r = 0; r < dp; ++r) {
    Loader loader(d, s, {dp, r, prefetch}, consumed);
    int64_t first = consumed;
    for (int64_t k = 0; k < steps; ++k) {
      const Batch b = loader.next();
      EXPECT_EQ(b.rows * dp, b.global_batch);
      EXPECT_EQ(b.first_sample, first);
      first += b.global_batch;
      for (int64_t i = 0; i < b.rows; ++i) {
        EXPECT_EQ(b.sample_index[static_cast<size_t>(i)], b.first_sample + i * dp + r);
      }
      add_rows(b, &out[static_cast<size_t>(k)]);
      if (r == dp - 1) {
        EXPECT_EQ(static_cast<int64_t>(out[static_cast<size_t>(k)].size()), b.global_batch);
      }
    }
    *consumed_after = loader.samples_consumed();
  }
  return out;
}

TEST(PipelineResume, SameSamplesAcrossDpSizesAndRestarts) {
  const Data data;
  const auto d = data.make();
  const int64_t kSteps = 12;
  int64_t end_ref = 0;
  const std::vector<Step> ref =
      run(*d, BatchSchedule::constant(16, 32, 1, 1), 1, 0, kSteps, 0, &end_ref);
  EXPECT_EQ(end_ref, 16 * kSteps);
  for (int64_t dp : {1, 2, 4}) {
    const BatchSchedule s = BatchSchedule::constant(16, 32, dp, 2);
    for (int64_t stop : {0, 1, 5, 11}) {
      int64_t mid = 0, end = 0;
      std::vector<Step> got = run(*d, s, dp, 0, stop, 2, &mid);
      EXPECT_EQ(mid, s.consumed_before(stop).samples);
      // resume from the saved state (and also with another DP size than before the stop)
      const int64_t dp2 = dp == 4 ? 2 : dp * 2;
      const BatchSchedule s2 = BatchSchedule::constant(16, 32, dp2, 1);
      std::vector<Step> rest = run(*d, s2, dp2, mid, kSteps - stop, stop % 2, &end);
      got.insert(got.end(), rest.begin(), rest.end());
      ASSERT_EQ(got.size(), ref.size());
      for (size_t k = 0; k < ref.size(); ++k) {
        ASSERT_EQ(got[k], ref[k]) << "dp " << dp << " -> " << dp2 << ", stop " << stop << ", step "
                                  << k;
      }
      EXPECT_EQ(end, end_ref);
    }
  }
}

TEST(PipelineResume, RampedBatchesReadTheSameSampleSequence) {
  const Data data;
  const auto d = data.make();
  // the ramp rounds differently per DP size, so steps differ, but the flat sample sequence not
  std::vector<std::vector<int32_t>> flat[3];
  int idx = 0;
  for (int64_t dp : {1, 2, 4}) {
    const BatchSchedule s(4, 24, 4000, 32, dp, 1);
    int64_t end = 0;
    for (const Step& st : run(*d, s, dp, 0, 15, 1, &end)) {
      for (const auto& [i, tokens] : st) {
        EXPECT_EQ(i, static_cast<int64_t>(flat[idx].size()));
        flat[idx].push_back(tokens);
      }
    }
    ++idx;
  }
  const size_t n = std::min({flat[0].size(), flat[1].size(), flat[2].size()});
  ASSERT_GT(n, 100u);
  for (size_t i = 0; i < n; ++i) {
    ASSERT_EQ(flat[0][i], flat[1][i]) << i;
    ASSERT_EQ(flat[0][i], flat[2][i]) << i;
  }
}

// ---- prefetch ----

TEST(PipelineLoader, PrefetchDeliversWhatDirectCallsGive) {
  const Data data;
  const auto d = data.make();
  const BatchSchedule s(4, 32, 20000, 32, 2, 2);
  for (int prefetch : {0, 1, 4}) {
    Loader loader(*d, s, {2, 1, prefetch}, 8);
    int64_t first = 8;
    for (int step = 0; step < 25; ++step) {
      const Batch got = loader.next();
      const Batch want = d->batch(first, s.batch_size_at(first * 32), 2, 1);
      ASSERT_EQ(got.tokens, want.tokens) << "prefetch " << prefetch << " step " << step;
      ASSERT_EQ(got.sample_index, want.sample_index);
      ASSERT_EQ(got.source, want.source);
      first += want.global_batch;
      ASSERT_EQ(loader.samples_consumed(), first);
      ASSERT_EQ(loader.tokens_consumed(), first * 32);
    }
  }
}

TEST(PipelineLoader, StatelessStepBatchMatchesTheLoader) {
  const Data data;
  const auto d = data.make();
  const BatchSchedule s(4, 32, 20000, 32, 4, 1);
  for (int64_t r = 0; r < 4; ++r) {
    Loader loader(*d, s, {4, r, 2});
    for (int64_t step = 0; step < 30; ++step) {
      const Batch got = step_batch(*d, s, step, r);
      const Batch want = loader.next();
      ASSERT_EQ(got.first_sample, want.first_sample) << step;
      ASSERT_EQ(got.global_batch, want.global_batch) << step;
      ASSERT_EQ(got.tokens, want.tokens) << step;
    }
  }
}

TEST(PipelineLoader, CleanShutdownWithFullOrUnusedQueue) {
  const Data data;
  const auto d = data.make();
  const BatchSchedule s = BatchSchedule::constant(8, 32, 1, 1);
  { Loader unused(*d, s, {1, 0, 3}); }
  {
    Loader l(*d, s, {1, 0, 2});
    l.next();
    std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let the queue fill
  }
  EXPECT_THROW(Loader(*d, BatchSchedule::constant(8, 16, 1, 1), {1, 0, 1}),
               std::invalid_argument);                            // seq_len differs
  EXPECT_THROW(Loader(*d, s, {2, 0, 1}), std::invalid_argument);  // dp differs
  EXPECT_THROW(Loader(*d, BatchSchedule::constant(8, 32, 2, 1), {2, 2, 1}),
               std::invalid_argument);  // rank out of range
  EXPECT_THROW(Loader(*d, s, {1, 0, 1}, -1), std::invalid_argument);
}

TEST(PipelineLoader, ErrorsInThePrefetchThreadReachTheConsumer) {
  const Data data;
  const auto d = data.make(32, 1);  // one open shard: every switch reopens a file
  const BatchSchedule s = BatchSchedule::constant(8, 32, 1, 1);
  // the direct batches, before the damage
  std::vector<Batch> want;
  for (int step = 0; step < 40; ++step) want.push_back(d->batch(step * 8, 8, 1, 0));
  // truncate one shard of source b (atomically replaced, as a crashed copy would be)
  const std::string victim = read_shard_index(data.b).shards[2].path;
  const std::string tmp = victim + ".cut";
  fs::copy_file(victim, tmp);
  fs::resize_file(tmp, fs::file_size(tmp) / 2);
  fs::rename(tmp, victim);
  for (int prefetch : {0, 3}) {
    Loader loader(*d, s, {1, 0, prefetch});
    int step = 0;
    bool threw = false;
    for (; step < 40; ++step) {
      try {
        const Batch b = loader.next();
        ASSERT_EQ(b.tokens, want[static_cast<size_t>(step)].tokens) << step;
      } catch (const DataError& e) {
        EXPECT_NE(std::string(e.what()).find(victim), std::string::npos) << e.what();
        threw = true;
        break;
      }
    }
    ASSERT_TRUE(threw) << "no sample touched the damaged shard in 40 steps";
    EXPECT_EQ(loader.samples_consumed(), step * 8);
    expect_data_error([&] { loader.next(); }, {victim});  // and again, not a hang
  }
}

// ---- bad input ----

TEST(PipelineDatasetErrors, MissingTruncatedAndCorruptShards) {
  const Data data;
  DatasetOptions o;
  o.seq_len = 32;
  const std::string missing = data.dir.file("missing.h5");
  expect_data_error([&] { Dataset({{"m", {missing}, 1.0}}, o); }, {missing});
  expect_data_error(
      [&] {
        Dataset({{"m", {data.dir.file("none.index.json")}, 1.0}}, o);
      },
      {"none.index.json"});
  const std::string shard = read_shard_index(data.a).shards[0].path;
  const std::string cut = data.dir.file("cut.h5");
  fs::copy_file(shard, cut);
  fs::resize_file(cut, fs::file_size(cut) / 2);
  expect_data_error([&] { Dataset({{"c", {cut}, 1.0}}, o); }, {cut});
  const std::string junk = data.dir.file("junk.h5");
  write_text(junk, std::string(4096, 'x'));
  expect_data_error([&] { Dataset({{"j", {junk}, 1.0}}, o); }, {junk, "not an HDF5 file"});
  // a shard replaced behind its index's back
  const std::string listed = read_shard_index(data.b).shards[1].path;
  fs::copy_file(read_shard_index(data.b).shards.back().path, listed,  // 500 tokens, not 900
                fs::copy_options::overwrite_existing);
  expect_data_error(
      [&] {
        Dataset({{"b", {data.b}, 1.0}}, o);
      },
      {listed, "index", "stale or corrupt"});
}

TEST(PipelineDatasetErrors, TokenizerAndVocabMismatches) {
  const Data data;
  DatasetOptions o;
  o.seq_len = 32;
  o.expected_tokenizer = "bpe-sha256:abcd";
  const std::string first = read_shard_index(data.a).shards[0].path;
  expect_data_error(
      [&] {
        Dataset({{"a", {data.a}, 1.0}}, o);
      },
      {first, "tokenizer 'test-tok-v1'", "expected 'bpe-sha256:abcd'"});
  o.expected_tokenizer = kTok;
  Dataset ok({{"a", {data.a}, 1.0}}, o);
  // another tokenizer in a second source, with no expected name: they must agree
  ShardWriter w(data.dir.file("other"), 1000, kVocab, "other-tok", "");
  w.add(std::vector<uint32_t>(500, 3));
  w.finish();
  o.expected_tokenizer.clear();
  expect_data_error(
      [&] {
        Dataset({{"a", {data.a}, 1.0}, {"o", {w.index_path()}, 1.0}}, o);
      },
      {w.shard_path(0), "'other-tok'", first, "'test-tok-v1'"});
  // vocab differs between shards / is larger than the model's
  ShardWriter v(data.dir.file("vocab"), 1000, kVocab + 1, kTok, "");
  v.add(std::vector<uint32_t>(500, 3));
  v.finish();
  expect_data_error(
      [&] {
        Dataset({{"a", {data.a}, 1.0}, {"v", {v.index_path()}, 1.0}}, o);
      },
      {v.shard_path(0), "vocab_size 1001", "differs"});
  o.model_vocab_size = 999;
  expect_data_error(
      [&] {
        Dataset({{"a", {data.a}, 1.0}}, o);
      },
      {first, "vocab_size 1000", "larger than the model's 999"});
}

TEST(PipelineDatasetErrors, TokenIdsNotBelowVocabAreCaughtOnRead) {
  TempDir dir;
  const std::string idx = make_source(dir, "s", 1, 3000, 5000, 100);  // one shard, ids < 997
  const std::string shard = read_shard_index(idx).shards[0].path;
  {
    std::lock_guard<std::mutex> lock(hdf5_mutex());
    hid_t f = H5Fopen(shard.c_str(), H5F_ACC_RDWR, H5P_DEFAULT);
    ASSERT_GE(f, 0);
    H5Adelete(f, "vocab_size");
    hid_t space = H5Screate(H5S_SCALAR);
    hid_t a = H5Acreate2(f, "vocab_size", H5T_STD_I64LE, space, H5P_DEFAULT, H5P_DEFAULT);
    const int64_t v = 500;
    H5Awrite(a, H5T_NATIVE_INT64, &v);
    H5Aclose(a);
    H5Sclose(space);
    H5Fclose(f);
  }
  DatasetOptions o;
  o.seq_len = 64;
  Dataset d({{"s", {shard}, 1.0}}, o);  // opening does not scan tokens
  expect_data_error([&] { d.batch(0, 4, 1, 0); }, {shard, "is not below vocab_size 500"});
}

TEST(PipelineDatasetErrors, SourcesAndWeights) {
  const Data data;
  DatasetOptions o;
  o.seq_len = 32;
  expect_data_error([&] { Dataset({}, o); }, {"no sources"});
  expect_data_error(
      [&] {
        Dataset({{"a", {data.a}, 1.0}, {"web-en", {data.b}, 0.0}}, o);
      },
      {"web-en", "blending weight must be positive"});
  expect_data_error([&] { Dataset({{"neg", {data.b}, -0.5}}, o); }, {"neg", "positive"});
  expect_data_error([&] { Dataset({{"empty", {}, 1.0}}, o); }, {"empty", "no shard files"});
  o.seq_len = 5000;
  expect_data_error(
      [&] {
        Dataset({{"short-src", {data.b}, 1.0}}, o);
      },
      {"short-src", "5000 tokens", "fewer than one sample"});
  o.seq_len = 0;
  expect_data_error([&] { Dataset({{"a", {data.a}, 1.0}}, o); }, {"seq_len"});
}

TEST(PipelineDatasetErrors, BadBatchArguments) {
  const Data data;
  const auto d = data.make();
  EXPECT_THROW(d->batch(0, 10, 4, 0), std::invalid_argument);  // 10 % 4 != 0
  EXPECT_THROW(d->batch(0, 8, 4, 4), std::invalid_argument);
  EXPECT_THROW(d->batch(-1, 8, 1, 0), std::invalid_argument);
  EXPECT_THROW(d->batch(0, 0, 1, 0), std::invalid_argument);
  EXPECT_THROW(d->eval_batch(d->n_eval_batches(8), 8, 1, 0), std::invalid_argument);
}

}  // namespace
}  // namespace moetron::data
