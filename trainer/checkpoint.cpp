// Checkpoint save, discovery and load (see checkpoint.h).
#include "trainer/checkpoint.h"

#include <yaml-cpp/yaml.h>
#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <deque>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>

#include "trainer/h5io.h"

namespace moetron {

namespace fs = std::filesystem;
using namespace h5;

namespace {

std::string step_dir(const std::string& run_dir, int64_t step) {
  return run_dir + "/checkpoints/step_" + std::to_string(step);
}

// CRC32 and size of a file.
std::pair<uint32_t, int64_t> file_crc(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw CheckpointError(path + ": cannot read");
  uLong crc = crc32(0L, Z_NULL, 0);
  int64_t size = 0;
  std::vector<char> buf(1 << 20);
  while (f) {
    f.read(buf.data(), static_cast<std::streamsize>(buf.size()));
    const auto n = f.gcount();
    crc = crc32(crc, reinterpret_cast<const Bytef*>(buf.data()), static_cast<uInt>(n));
    size += n;
  }
  return {static_cast<uint32_t>(crc), size};
}

YAML::Node model_node(const Config& cfg) { return YAML::Load(config_to_yaml(cfg))["model"]; }

void write_shard(const std::string& path, const Snapshot& snap, int64_t step) {
  write_h5(path, "checkpoint shard", [&](hid_t f) {
    attr_int(f, "step", step);
    H5 gp{H5Gcreate2(f, "params", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose};
    for (const auto& [name, t] : snap.params) {
      std::vector<hsize_t> dims(t.shape.begin(), t.shape.end());
      dataset(gp.id, name, H5T_NATIVE_FLOAT, dims, t.data.data());
    }
    H5 gm{H5Gcreate2(f, "moments", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose};
    for (const auto& piece : snap.moments) {
      const std::string base = piece.name + "#" + std::to_string(piece.offset) + "#";
      const std::vector<hsize_t> dims{piece.m.size()};
      dataset(gm.id, base + "m", H5T_NATIVE_FLOAT, dims, piece.m.data());
      dataset(gm.id, base + "v", H5T_NATIVE_FLOAT, dims, piece.v.data());
    }
  });
}

// Checks a checkpoint directory; returns "" if complete and intact, else what is wrong.
std::string verify(const std::string& dir, YAML::Node* manifest_out) {
  const std::string mpath = dir + "/manifest.yaml";
  if (!fs::exists(mpath)) return mpath + ": missing (an incomplete checkpoint)";
  YAML::Node m;
  try {
    m = YAML::LoadFile(mpath);
  } catch (const std::exception& e) {
    return mpath + ": unreadable (" + e.what() + ")";
  }
  if (!m["format"] || m["format"].as<std::string>() != "moetron-checkpoint-v1")
    return mpath + ": not a moetron checkpoint manifest";
  for (const auto& s : m["shards"]) {
    const std::string path = dir + "/" + s["file"].as<std::string>();
    if (!fs::exists(path)) return path + ": missing";
    const auto [crc, size] = file_crc(path);
    if (size != s["bytes"].as<int64_t>())
      return path + ": " + std::to_string(size) + " bytes, the manifest says " +
             s["bytes"].as<std::string>() + " (truncated?)";
    if (crc != s["crc32"].as<uint32_t>()) return path + ": checksum mismatch (corrupt)";
  }
  if (manifest_out) *manifest_out = m;
  return "";
}

}  // namespace

Snapshot Snapshot::take(const ParamStore<float>& ps, const std::vector<const Zero1*>& opts) {
  Snapshot s;
  for (auto& p : ps.all()) {
    NamedTensor t;
    t.shape = p->value.shape();
    t.data.assign(p->w(), p->w() + p->numel());
    s.params.emplace_back(p->name, std::move(t));
  }
  for (const Zero1* o : opts)
    for (auto& piece : o->export_moments()) s.moments.push_back(std::move(piece));
  return s;
}

CheckpointWriter::CheckpointWriter(Communicator& world) : comm_(world.split(0, world.rank())) {}

CheckpointWriter::~CheckpointWriter() {
  if (thread_.joinable()) thread_.join();
}

double CheckpointWriter::save(const Config& cfg, const TrainState& st, const ParamStore<float>& ps,
                              const std::vector<const Zero1*>& opts, const std::string& tokenizer) {
  const auto t0 = std::chrono::steady_clock::now();
  wait();
  auto snap = std::make_shared<Snapshot>(Snapshot::take(ps, opts));
  const double blocked =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  thread_ = std::thread([this, cfg, st, snap, tokenizer] {
    try {
      const auto w0 = std::chrono::steady_clock::now();
      dir_ = save_checkpoint(cfg, st, *snap, tokenizer, *comm_);
      write_seconds_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
      shard_bytes_ = static_cast<int64_t>(
          fs::file_size(dir_ + "/rank_" + std::to_string(comm_->rank()) + ".h5"));
    } catch (const std::exception& e) {
      error_ = e.what();
    }
  });
  return blocked;
}

std::string CheckpointWriter::wait() {
  if (thread_.joinable()) thread_.join();
  if (!error_.empty()) {
    const std::string e = error_;
    error_.clear();
    throw CheckpointError(e);
  }
  std::string d = dir_;
  dir_.clear();
  return d;
}

std::string save_checkpoint(const Config& cfg, const TrainState& st, const Snapshot& snap,
                            const std::string& tokenizer, Communicator& world) {
  const std::string final_dir = step_dir(cfg.run.dir, st.step), tmp = final_dir + ".tmp";
  const int rank = world.rank(), n = world.size();
  int64_t ok = 1;
  std::string err;
  auto all_ok = [&] {  // true on every rank iff true on every rank
    int64_t sum = ok;
    world.all_reduce(&sum, 1);
    ok = sum == n ? 1 : 0;
  };
  if (rank == 0) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    fs::create_directories(tmp, ec);
    if (ec) ok = 0, err = tmp + ": cannot create (" + ec.message() + ")";
  }
  all_ok();
  if (!ok) throw CheckpointError(err.empty() ? tmp + ": rank 0 could not create it" : err);
  try {
    write_shard(tmp + "/rank_" + std::to_string(rank) + ".h5", snap, st.step);
  } catch (const std::exception& e) {
    ok = 0, err = e.what();
  }
  all_ok();
  if (ok && rank == 0) {
    try {
      YAML::Emitter y;
      y << YAML::BeginMap << YAML::Key << "format" << YAML::Value << "moetron-checkpoint-v1";
      y << YAML::Key << "step" << YAML::Value << st.step << YAML::Key << "tokens" << YAML::Value
        << st.tokens << YAML::Key << "samples" << YAML::Value << st.samples;
      y << YAML::Key << "layout" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key
        << "world" << YAML::Value << n << YAML::Key << "pp" << YAML::Value << cfg.parallel.pp
        << YAML::Key << "dp" << YAML::Value << cfg.parallel.dp << YAML::Key << "ep" << YAML::Value
        << cfg.parallel.ep << YAML::EndMap;
      y << YAML::Key << "tokenizer" << YAML::Value << tokenizer;
      y << YAML::Key << "model" << YAML::Value << model_node(cfg);
      // nothing random is carried between steps: weights are initialised once from (seed,
      // name) and sample i of the run is a pure function of (seed, i); LR, gamma and lambda are
      // functions of (step, tokens) above
      y << YAML::Key << "rng" << YAML::Value
        << "stateless (seed " + std::to_string(cfg.run.seed) + ")";
      y << YAML::Key << "config" << YAML::Value << YAML::Literal << config_to_yaml(cfg);
      y << YAML::Key << "shards" << YAML::Value << YAML::BeginSeq;
      for (int r = 0; r < n; ++r) {
        const std::string file = "rank_" + std::to_string(r) + ".h5";
        const auto [crc, size] = file_crc(tmp + "/" + file);
        y << YAML::Flow << YAML::BeginMap << YAML::Key << "file" << YAML::Value << file << YAML::Key
          << "bytes" << YAML::Value << size << YAML::Key << "crc32" << YAML::Value << crc
          << YAML::EndMap;
      }
      y << YAML::EndSeq << YAML::EndMap;
      {
        std::ofstream f(tmp + "/manifest.yaml.tmp");
        f << y.c_str() << "\n";
        f.close();
        if (!f) throw CheckpointError(tmp + "/manifest.yaml: write failed (disk full?)");
      }
      fs::rename(tmp + "/manifest.yaml.tmp", tmp + "/manifest.yaml");
      if (fs::exists(final_dir)) {  // a re-save of the same step: swap, then drop the old one
        fs::rename(final_dir, final_dir + ".old");
        fs::rename(tmp, final_dir);
        fs::remove_all(final_dir + ".old");
      } else {
        fs::rename(tmp, final_dir);
      }
      // keep the newest `keep_checkpoints` complete ones
      std::vector<std::pair<int64_t, fs::path>> done;
      for (const auto& e : fs::directory_iterator(cfg.run.dir + "/checkpoints")) {
        const std::string name = e.path().filename().string();
        if (name.rfind("step_", 0) == 0 && name.find('.') == std::string::npos &&
            fs::exists(e.path() / "manifest.yaml"))
          done.emplace_back(std::stoll(name.substr(5)), e.path());
      }
      std::sort(done.rbegin(), done.rend());
      for (size_t i = static_cast<size_t>(cfg.run.keep_checkpoints); i < done.size(); ++i)
        fs::remove_all(done[i].second);
    } catch (const std::exception& e) {
      ok = 0, err = e.what();
    }
  }
  all_ok();
  if (!ok) {
    if (rank == 0) {
      std::error_code ec;
      fs::remove_all(tmp, ec);  // never leave a half checkpoint; older ones are untouched
    }
    throw CheckpointError("checkpoint of step " + std::to_string(st.step) + " failed" +
                          (err.empty() ? " on another rank" : ": " + err));
  }
  return final_dir;
}

std::string find_checkpoint(const std::string& run_dir, std::string* warnings) {
  const std::string root = run_dir + "/checkpoints";
  if (!fs::is_directory(root)) return "";
  std::vector<std::pair<int64_t, std::string>> cands;
  for (const auto& e : fs::directory_iterator(root)) {
    const std::string name = e.path().filename().string();
    if (name.rfind("step_", 0) == 0 && name.find('.') == std::string::npos)
      cands.emplace_back(std::stoll(name.substr(5)), e.path().string());
  }
  std::sort(cands.rbegin(), cands.rend());
  for (const auto& [step, dir] : cands) {
    const std::string bad = verify(dir, nullptr);
    if (bad.empty()) return dir;
    if (warnings) *warnings += "skipping checkpoint " + dir + ": " + bad + "\n";
  }
  return "";
}

TrainState load_checkpoint(const std::string& dir, const Config& cfg, ParamStore<float>& ps,
                           const std::vector<Zero1*>& opts, const std::string& tokenizer) {
  YAML::Node m;
  const std::string bad = verify(dir, &m);
  if (!bad.empty()) throw CheckpointError("cannot resume from " + dir + ": " + bad);
  // the same tokenizer and the same model
  const std::string had = m["tokenizer"] ? m["tokenizer"].as<std::string>() : "(none)";
  if (had != tokenizer)
    throw CheckpointError(dir + ": checkpoint was trained on tokenizer '" + had + "', but " +
                          cfg.data.train_path + " uses '" + tokenizer + "'");
  const YAML::Node want = model_node(cfg), have = m["model"];
  for (const auto& kv : want) {
    const std::string key = kv.first.as<std::string>();
    const std::string a = YAML::Dump(kv.second), b = have[key] ? YAML::Dump(have[key]) : "(absent)";
    if (a != b)
      throw CheckpointError(dir + ": checkpoint has model." + key + " = " + b + ", the config " +
                            cfg.source + " has " + a);
  }
  // open every shard; each parameter comes from whichever shard holds it
  std::deque<H5> files;  // H5 closes its id on destruction: never copied or moved
  for (const auto& s : m["shards"]) {
    const std::string path = dir + "/" + s["file"].as<std::string>();
    files.emplace_back(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
    if (files.back().id < 0) throw CheckpointError(path + ": cannot open as HDF5");
  }
  for (auto& p : ps.all()) {
    bool found = false;
    for (auto& f : files) {
      const std::string name = "params/" + p->name;
      if (H5Lexists(f.id, name.c_str(), H5P_DEFAULT) <= 0) continue;
      if (dataset_size(f.id, name) != p->numel())
        throw CheckpointError(dir + ": " + p->name + " has another shape in the checkpoint");
      read_dataset(f.id, name, H5T_NATIVE_FLOAT, p->w());
      found = true;
      break;
    }
    if (!found) throw CheckpointError(dir + ": no shard holds " + p->name);
  }
  // optimizer moments: every (name, offset) piece of the names this rank holds
  std::map<std::string, bool> mine;
  for (auto& p : ps.all()) mine[p->name] = true;
  std::vector<Zero1::MomentPiece> pieces;
  for (auto& f : files) {
    H5 g{H5Gopen2(f.id, "moments", H5P_DEFAULT), H5Gclose};
    for (const std::string& link : links(g.id)) {
      if (link.size() < 2 || link.substr(link.size() - 2) != "#m") continue;
      const std::string stem = link.substr(0, link.size() - 2);
      const size_t hash = stem.rfind('#');
      const std::string name = stem.substr(0, hash);
      if (!mine.count(name)) continue;
      Zero1::MomentPiece piece{name, std::stoll(stem.substr(hash + 1)), {}, {}};
      const int64_t n = dataset_size(g.id, link);
      piece.m.resize(n), piece.v.resize(n);
      read_dataset(g.id, link, H5T_NATIVE_FLOAT, piece.m.data());
      read_dataset(g.id, stem + "#v", H5T_NATIVE_FLOAT, piece.v.data());
      pieces.push_back(std::move(piece));
    }
  }
  for (Zero1* o : opts) o->import_moments(pieces);
  TrainState st;
  st.step = m["step"].as<int64_t>(), st.tokens = m["tokens"].as<int64_t>();
  st.samples = m["samples"].as<int64_t>();
  return st;
}

std::vector<std::pair<std::string, NamedTensor>> read_checkpoint_params(const std::string& dir) {
  YAML::Node m;
  const std::string bad = verify(dir, &m);
  if (!bad.empty()) throw CheckpointError("cannot read " + dir + ": " + bad);
  std::vector<std::pair<std::string, NamedTensor>> out;
  std::map<std::string, bool> seen;
  for (const auto& s : m["shards"]) {
    const std::string path = dir + "/" + s["file"].as<std::string>();
    H5 f(H5Fopen(path.c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
    if (f.id < 0) throw CheckpointError(path + ": cannot open as HDF5");
    H5 g(H5Gopen2(f.id, "params", H5P_DEFAULT), H5Gclose);
    for (const std::string& name : links(g.id)) {
      if (seen[name]) continue;
      seen[name] = true;
      NamedTensor t;
      H5 d(H5Dopen2(g.id, name.c_str(), H5P_DEFAULT), H5Dclose);
      H5 sp(H5Dget_space(d.id), H5Sclose);
      hsize_t dims[8];
      const int nd = H5Sget_simple_extent_dims(sp.id, dims, nullptr);
      for (int k = 0; k < nd; ++k) t.shape.push_back(static_cast<int64_t>(dims[k]));
      t.data.resize(H5Sget_simple_extent_npoints(sp.id));
      read_dataset(g.id, name, H5T_NATIVE_FLOAT, t.data.data());
      out.emplace_back(name, std::move(t));
    }
  }
  // the order of a Hugging Face checkpoint: by name
  std::sort(out.begin(), out.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
  return out;
}

}  // namespace moetron
