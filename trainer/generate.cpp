// Text generation on the host side (see generate.h): tokenizer, sampling, the generation loop,
// checkpoint loading, `moetron generate` and the training run's samples.
#include "trainer/generate.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <numeric>

#include "data/byte_tokenizer.h"
#include "kernels/ops.h"
#include "trainer/checkpoint.h"

namespace moetron {

namespace fs = std::filesystem;

// ---- tokenizer -------------------------------------------------------------------------------

TextCodec TextCodec::bytes() {
  TextCodec c;
  c.name_ = data::ByteTokenizer::kName;
  c.eos_ = static_cast<int32_t>(data::ByteTokenizer::kEos);
  return c;
}

TextCodec TextCodec::bpe(data::BpeTokenizer tok) {
  TextCodec c;
  c.name_ = tok.name();
  if (auto e = tok.eos_id()) c.eos_ = static_cast<int32_t>(*e);
  c.bpe_ = std::move(tok);
  return c;
}

TextCodec TextCodec::for_run(const std::string& trained_on, const std::string& json,
                             const std::string& what, const std::string& how) {
  if (trained_on == data::ByteTokenizer::kName && json.empty()) return bytes();
  if (json.empty())
    throw std::invalid_argument(what + " uses tokenizer '" + trained_on +
                                "' and no tokenizer.json is given: " + how);
  data::BpeTokenizer tok = [&] {
    try {
      return data::BpeTokenizer::load(json);
    } catch (const std::exception& e) {
      throw std::invalid_argument(e.what());
    }
  }();
  if (tok.name() != trained_on)
    throw std::invalid_argument("tokenizer " + json + " is '" + tok.name() + "', but " + what +
                                " uses '" + trained_on + "': not its tokenizer");
  return bpe(std::move(tok));
}

std::vector<int32_t> TextCodec::encode(const std::string& text) const {
  const std::vector<uint32_t> u = bpe_ ? bpe_->encode(text) : data::ByteTokenizer{}.encode(text);
  return std::vector<int32_t>(u.begin(), u.end());
}

std::string TextCodec::decode(const std::vector<int32_t>& ids) const {
  const std::vector<uint32_t> u(ids.begin(), ids.end());
  return bpe_ ? bpe_->decode(u, /*skip_special=*/true) : data::ByteTokenizer{}.decode(u);
}

std::vector<int32_t> prompt_ids(const TextCodec& codec, const std::string& text) {
  std::vector<int32_t> ids;
  if (codec.eos() >= 0) ids.push_back(codec.eos());
  const std::vector<int32_t> t = codec.encode(text);
  ids.insert(ids.end(), t.begin(), t.end());
  if (ids.empty())
    throw std::invalid_argument("an empty prompt needs the tokenizer's EOS token to start from");
  return ids;
}

namespace {
// Length of the longest prefix of s that does not end inside a UTF-8 character.
size_t complete_utf8(const std::string& s) {
  const size_t n = s.size();
  for (size_t back = 1; back <= std::min<size_t>(4, n); ++back) {
    const auto c = static_cast<unsigned char>(s[n - back]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: look further back
    const size_t len = c < 0x80 ? 1 : (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : 4;
    return back < len ? n - back : n;
  }
  return n;  // only continuation bytes (not UTF-8): print them
}
}  // namespace

std::string TextStream::push(int32_t id) {
  pending_.push_back(id);
  const std::string t = codec_.decode(pending_);
  if (complete_utf8(t) < t.size() && pending_.size() < 8) return "";
  pending_.clear();
  return t;
}

std::string TextStream::finish() {
  std::string t = codec_.decode(pending_);
  pending_.clear();
  return t;
}

// ---- sampling and the generation loop ----------------------------------------------------------

int32_t pick_token(const float* logits, int64_t V, double temperature, int64_t top_k,
                   std::mt19937_64& rng) {
  if (V <= 0) throw std::invalid_argument("pick_token: empty vocabulary");
  if (temperature <= 0) return static_cast<int32_t>(std::max_element(logits, logits + V) - logits);
  const int64_t k = top_k > 0 ? std::min(top_k, V) : V;
  std::vector<int32_t> ids(static_cast<size_t>(V));
  std::iota(ids.begin(), ids.end(), 0);
  std::partial_sort(ids.begin(), ids.begin() + k, ids.end(), [&](int32_t a, int32_t b) {
    return logits[a] > logits[b] || (logits[a] == logits[b] && a < b);
  });
  std::vector<double> p(static_cast<size_t>(k));
  double sum = 0;
  for (int64_t i = 0; i < k; ++i)
    sum += p[i] = std::exp((static_cast<double>(logits[ids[i]]) - logits[ids[0]]) / temperature);
  // a uniform double in [0, 1) from 53 random bits: the same draw with every standard library
  const double u = static_cast<double>(rng() >> 11) * 0x1.0p-53 * sum;
  double acc = 0;
  for (int64_t i = 0; i < k; ++i)
    if ((acc += p[i]) > u) return ids[i];
  return ids[k - 1];
}

std::vector<int32_t> generate(Decoder<float>& dec, const std::vector<int32_t>& prompt,
                              const GenerateOptions& o, int32_t stop,
                              const std::function<void(int32_t)>& emit) {
  const int64_t W = dec.window(), P = static_cast<int64_t>(prompt.size());
  if (P < 1 || P > W)
    throw std::invalid_argument("generate: a prompt of " + std::to_string(P) +
                                " tokens does not fit the context of " + std::to_string(W));
  const Model<float>& model = dec.model();
  const int64_t V = model.config().vocab_size;
  std::mt19937_64 rng(o.seed);
  std::vector<int32_t> seq = prompt, out;
  std::vector<float> logits(static_cast<size_t>(V));
  int64_t start = 0;  // the context is seq[start, end)
  // the next-token logits of the context's last token: cached, only `fed` new tokens go in
  auto next = [&](int64_t fed) {
    const int64_t n = static_cast<int64_t>(seq.size()) - start;
    const float* l = o.cache ? dec.forward(seq.data() + seq.size() - fed, fed)
                             : dec.forward_uncached(seq.data() + start, n);
    const int64_t rows = o.cache ? fed : n;
    kernels::copy_to_host(model.exec(), logits.data(), l + (rows - 1) * V, sizeof(float) * V);
  };
  dec.reset();
  next(P);
  for (int64_t i = 0; i < o.max_tokens; ++i) {
    const int32_t tok = pick_token(logits.data(), V, o.temperature, o.top_k, rng);
    seq.push_back(tok);
    out.push_back(tok);
    emit(tok);
    if (tok == stop || i + 1 == o.max_tokens) break;
    if (static_cast<int64_t>(seq.size()) - start > W) {  // past the context: keep its newer half
      start = static_cast<int64_t>(seq.size()) - std::max<int64_t>(1, W / 2);
      dec.reset();
      next(static_cast<int64_t>(seq.size()) - start);
    } else {
      next(1);
    }
  }
  return out;
}

// ---- checkpoints -----------------------------------------------------------------------------

LoadedModel load_for_generation(const std::string& path, std::string* warnings) {
  LoadedModel lm;
  if (!fs::exists(path)) throw CheckpointError(path + ": no such checkpoint or run directory");
  if (fs::exists(fs::path(path) / "manifest.yaml")) {
    lm.dir = path;
  } else if (fs::is_directory(fs::path(path) / "checkpoints")) {
    lm.dir = find_checkpoint(path, warnings);
    if (lm.dir.empty())
      throw CheckpointError(path + ": no complete checkpoint in " + path + "/checkpoints");
  } else {
    throw CheckpointError(path +
                          ": neither a checkpoint (no manifest.yaml) nor a run directory (no "
                          "checkpoints/)");
  }
  const CheckpointReader ck(lm.dir);  // verifies the manifest and every shard's checksum
  const std::string mpath = lm.dir + "/manifest.yaml";
  const YAML::Node m = YAML::LoadFile(mpath);
  if (!m["config"] || !m["tokenizer"] || !m["step"])
    throw CheckpointError(mpath +
                          ": has no config, tokenizer or step (written by an older "
                          "moetron?)");
  try {
    lm.cfg = parse_config(m["config"].as<std::string>(), mpath);
  } catch (const ConfigError& e) {
    throw CheckpointError(std::string("the run's config in ") + e.what());
  }
  lm.step = m["step"].as<int64_t>();
  lm.tokenizer = m["tokenizer"].as<std::string>();
  ModelConfig mc = lm.cfg.model;
  mc.num_nextn_predict_layers = 0;  // the main model only
  lm.model = std::make_unique<Model<float>>(mc, PrecisionPolicy{});
  load_params(lm.model->params(), ck, lm.dir, "its manifest's model");
  return lm;
}

// ---- moetron generate ------------------------------------------------------------------------

const char* const kGenerateUsage =
    "  moetron generate CHECKPOINT_OR_RUN_DIR --prompt TEXT [--max-tokens N] [--temperature T]\n"
    "                   [--top-k K] [--seed S] [--tokenizer FILE] [--threads N]\n";

namespace {

struct GenArgs {
  std::string path, prompt, tokenizer;
  bool has_prompt = false, print_ids = false;
  int threads = 1;
  GenerateOptions o;
};

template <class N>
N number(const std::string& flag, const std::string& v) {
  try {
    size_t used = 0;
    N x;
    if constexpr (std::is_floating_point_v<N>)
      x = static_cast<N>(std::stod(v, &used));
    else
      x = static_cast<N>(std::stoll(v, &used));
    if (used == v.size()) return x;
  } catch (const std::exception&) {
  }
  throw GenerateUsageError(flag + " needs a number, got '" + v + "'");
}

GenArgs parse(const std::vector<std::string>& args) {
  GenArgs a;
  std::vector<std::string> positional;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& s = args[i];
    auto value = [&]() -> const std::string& {
      if (i + 1 >= args.size()) throw GenerateUsageError(s + " needs a value");
      return args[++i];
    };
    if (s == "--prompt") {
      a.prompt = value(), a.has_prompt = true;
    } else if (s == "--max-tokens") {
      a.o.max_tokens = number<int64_t>(s, value());
      if (a.o.max_tokens < 0) throw GenerateUsageError("--max-tokens must be >= 0");
    } else if (s == "--temperature") {
      a.o.temperature = number<double>(s, value());
      if (!(a.o.temperature >= 0)) throw GenerateUsageError("--temperature must be >= 0");
    } else if (s == "--top-k") {
      a.o.top_k = number<int64_t>(s, value());
      if (a.o.top_k < 0) throw GenerateUsageError("--top-k must be >= 0");
    } else if (s == "--seed") {
      a.o.seed = number<uint64_t>(s, value());
    } else if (s == "--tokenizer") {
      a.tokenizer = value();
    } else if (s == "--threads") {
      a.threads = number<int>(s, value());
    } else if (s == "--no-cache") {  // hidden: the reference path, for tests
      a.o.cache = false;
    } else if (s == "--print-ids") {  // hidden: the generated ids on a last line, for tests
      a.print_ids = true;
    } else if (s.rfind("--", 0) == 0) {
      throw GenerateUsageError("unknown option " + s);
    } else {
      positional.push_back(s);
    }
  }
  if (positional.size() != 1) throw GenerateUsageError("generate takes one CHECKPOINT_OR_RUN_DIR");
  if (!a.has_prompt) throw GenerateUsageError("generate needs --prompt TEXT (may be \"\")");
  a.path = positional[0];
  return a;
}

}  // namespace

int generate_command(const std::vector<std::string>& args, std::ostream& out, std::ostream& log) {
  const GenArgs a = parse(args);
  kernels::set_num_threads(std::max(1, a.threads));
  const auto t0 = std::chrono::steady_clock::now();
  std::string warnings;
  LoadedModel lm = load_for_generation(a.path, &warnings);
  log << prefix_lines("moetron: warning: ", warnings);
  const std::string what = "checkpoint " + lm.dir;
  const TextCodec codec =
      TextCodec::for_run(lm.tokenizer, a.tokenizer.empty() ? lm.cfg.data.tokenizer : a.tokenizer,
                         what, "pass --tokenizer FILE");
  const int64_t W = lm.cfg.model.max_seq_len;
  const std::vector<int32_t> prompt = prompt_ids(codec, a.prompt);
  if (static_cast<int64_t>(prompt.size()) > W)
    throw std::invalid_argument("the prompt is " + std::to_string(prompt.size()) +
                                " tokens (with the EOS before it), longer than the model's "
                                "context of " +
                                std::to_string(W) + " tokens (model.max_seq_len of " + what + ")");
  Decoder<float> dec(*lm.model, W);
  const double load_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();

  out << a.prompt << std::flush;
  TextStream text(codec);
  const auto t1 = std::chrono::steady_clock::now();
  const std::vector<int32_t> ids = generate(
      dec, prompt, a.o, codec.eos(), [&](int32_t id) { out << text.push(id) << std::flush; });
  const double gen_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t1).count();
  out << text.finish() << std::endl;
  if (a.print_ids) {
    for (size_t i = 0; i < ids.size(); ++i) out << (i ? " " : "") << ids[i];
    out << "\n";
  }
  log << "moetron: " << ids.size() << " tokens in " << gen_s << " s ("
      << static_cast<double>(ids.size()) / std::max(gen_s, 1e-9) << " tokens/s"
      << (a.o.cache ? "" : ", no cache") << "), prompt " << prompt.size() << " tokens; " << what
      << " (step " << lm.step << ", tokenizer " << codec.name() << ") loaded in " << load_s
      << " s\n";
  return 0;
}

// ---- samples during training -------------------------------------------------------------------

TrainingSampler::TrainingSampler(const Config& cfg, const std::string& data_tokenizer) : cfg_(cfg) {
  if (cfg.run.sample_interval == 0) return;
  try {
    codec_ = TextCodec::for_run(data_tokenizer, cfg.data.tokenizer,
                                "data.train_path " + cfg.data.train_path, "set data.tokenizer");
    prompt_ = prompt_ids(codec_, cfg.run.sample_prompt);
  } catch (const std::invalid_argument& e) {
    throw ConfigError(cfg.source + ": run.sample_interval: " + e.what());
  }
  if (static_cast<int64_t>(prompt_.size()) > cfg.model.max_seq_len)
    throw ConfigError(cfg.source + ": run.sample_prompt: " + std::to_string(prompt_.size()) +
                      " tokens, longer than the model's context (model.max_seq_len " +
                      std::to_string(cfg.model.max_seq_len) + ")");
  ModelConfig mc = cfg.model;
  mc.num_nextn_predict_layers = 0;
  const Model<float> meta(mc, PrecisionPolicy{}, nullptr, {}, Exec::on(Device::Meta));
  for (auto& p : meta.params().all()) layout_.emplace_back(p->name, p->numel());
}

TrainingSampler::~TrainingSampler() = default;

std::string TrainingSampler::sample(const ParamStore<float>& stage_params,
                                    const std::function<bool(const Param<float>&)>& contributes,
                                    Communicator& world, const Exec& ex,
                                    const WholeValues& values) {
  // the main model's parameters, one flat buffer in layout_ order, each element from one rank
  std::map<std::string, int64_t> offset;
  int64_t n = 0;
  for (auto& [name, numel] : layout_) offset[name] = n, n += numel;
  std::vector<float> flat(static_cast<size_t>(n), 0.0f);
  for (auto& p : stage_params.all()) {
    auto it = offset.find(p->name);
    if (it != offset.end() && contributes(*p))
      whole_values_to_host(*p, values, flat.data() + it->second);
  }
  world.all_reduce(flat.data(), flat.size());
  if (world.rank() != 0) return "";

  if (!model_) {
    ModelConfig mc = cfg_.model;
    mc.num_nextn_predict_layers = 0;
    model_ = std::make_unique<Model<float>>(mc, PrecisionPolicy{}, nullptr, StageSpec{}, ex);
    dec_ = std::make_unique<Decoder<float>>(*model_, mc.max_seq_len);
  }
  for (auto& p : model_->params().all()) values_from_host(*p, flat.data() + offset.at(p->name));
  GenerateOptions o;
  o.max_tokens = cfg_.run.sample_tokens, o.temperature = 0;
  const int threads = kernels::num_threads();
  kernels::set_num_threads(1);  // one token's ops are small: threads would wait for each other
  const std::vector<int32_t> ids = generate(*dec_, prompt_, o, codec_.eos(), [](int32_t) {});
  kernels::set_num_threads(threads);
  return codec_.decode(ids);
}

}  // namespace moetron
