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
#include <mutex>
#include <set>
#include <sstream>
#include <type_traits>

#include "data/token_file.h"
#include "parallel/watchdog.h"
#include "trainer/fault_inject.h"
#include "trainer/h5io.h"

namespace moetron {

namespace fs = std::filesystem;
using namespace h5;

namespace {

// v1: every rank wrote whole tensors; v2: each element once, as pieces (see checkpoint.h)
const std::string kFormatV1 = "moetron-checkpoint-v1", kFormatV2 = "moetron-checkpoint-v2";

std::string step_dir(const std::string& run_dir, int64_t step) {
  return run_dir + "/checkpoints/step_" + std::to_string(step);
}

// The step of a checkpoint directory's name "step_<N>" (N: 1 to 18 digits); -1 for any other name
// (a save in progress "step_<N>.tmp", one being replaced "step_<N>.old", anything else).
int64_t step_of(const std::string& name) {
  if (name.rfind("step_", 0) != 0 || name.size() == 5 || name.size() > 5 + 18 ||
      name.find_first_not_of("0123456789", 5) != std::string::npos)
    return -1;
  return std::stoll(name.substr(5));
}

// The step of "step_<N>.old": a complete checkpoint that publish() moved aside to put a new save
// of the same step in its place (-1 for any other name). One is left only by a crash between
// publish()'s two renames; while step_<N> is missing it is step N's checkpoint.
int64_t old_step_of(const std::string& name) {
  const std::string suffix = ".old";
  if (name.size() <= suffix.size() || name.compare(name.size() - 4, 4, suffix) != 0) return -1;
  return step_of(name.substr(0, name.size() - suffix.size()));
}

// The checkpoints of <run_dir>/checkpoints, each (step, path): every step_<N>, and a step_<N>.old
// whose step_<N> is missing (see old_step_of). stale: .old directories that a step_<N> replaced.
std::vector<std::pair<int64_t, fs::path>> checkpoint_dirs(const std::string& root,
                                                          std::vector<fs::path>* stale,
                                                          std::error_code& ec) {
  std::vector<std::pair<int64_t, fs::path>> out;
  for (const auto& e : fs::directory_iterator(root, ec)) {
    const std::string name = e.path().filename().string();
    if (const int64_t step = step_of(name); step >= 0) {
      out.emplace_back(step, e.path());
    } else if (const int64_t old = old_step_of(name); old >= 0) {
      std::error_code ec2;
      if (!fs::exists(e.path().parent_path() / ("step_" + std::to_string(old)), ec2))
        out.emplace_back(old, e.path());
      else if (stale)
        stale->push_back(e.path());
    }
  }
  return out;
}

// The links of an HDF5 group; errors name `where`.
std::vector<std::string> named_links(hid_t group, const std::string& where) {
  try {
    return links(group);
  } catch (const std::exception& e) {
    throw CheckpointError(where + ": " + e.what());
  }
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
  // the background writer runs while the data loader's prefetch thread reads shards: Debian's
  // HDF5 is not thread-safe, so every HDF5 call of the process holds one mutex
  std::lock_guard<std::mutex> lock(data::hdf5_mutex());
  write_h5(path, "checkpoint shard", [&](hid_t f) {
    attr_int(f, "step", step);
    H5 gp{H5Gcreate2(f, "params", H5P_DEFAULT, H5P_DEFAULT, H5P_DEFAULT), H5Gclose};
    for (const auto& piece : snap.params) {
      const std::string name = piece.name + "#" + std::to_string(piece.offset);
      dataset(gp.id, name, H5T_NATIVE_FLOAT, {piece.data.size()}, piece.data.data());
      attr_ints(gp.id, name, "shape", piece.shape);
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

// A manifest field of type T, or a CheckpointError naming the manifest and the key.
template <class T>
T field(const YAML::Node& node, const std::string& key, const std::string& mpath) {
  const YAML::Node v = node.IsMap() ? node[key] : YAML::Node();
  try {
    if (v && v.IsScalar()) return v.as<T>();
  } catch (const YAML::Exception&) {
  }
  throw CheckpointError(mpath + ": " + key + ": " +
                        (v ? "not a " +
                                 std::string(std::is_same_v<T, std::string> ? "string" : "number") +
                                 " ('" + YAML::Dump(v).substr(0, 40) + "')"
                           : std::string("missing")));
}

// The manifest's shard list, checked: each a plain file name in the directory, its size and CRC.
struct ShardEntry {
  std::string file;
  int64_t bytes;
  uint32_t crc;
};
std::vector<ShardEntry> shard_entries(const YAML::Node& m, const std::string& mpath) {
  const YAML::Node shards = m["shards"];
  if (!shards || !shards.IsSequence() || shards.size() == 0)
    throw CheckpointError(mpath + ": shards: expected a non-empty list of shards");
  std::vector<ShardEntry> out;
  for (size_t i = 0; i < shards.size(); ++i) {
    const std::string key = "shards[" + std::to_string(i) + "]";
    const YAML::Node s = shards[i];
    ShardEntry e{field<std::string>(s, "file", mpath + ": " + key),
                 field<int64_t>(s, "bytes", mpath + ": " + key),
                 field<uint32_t>(s, "crc32", mpath + ": " + key)};
    if (e.file.empty() || e.file.find('/') != std::string::npos || e.file == "." || e.file == "..")
      throw CheckpointError(mpath + ": " + key + ".file: '" + e.file +
                            "' is not a file name inside the checkpoint");
    out.push_back(e);
  }
  return out;
}

// The manifest of `dir`, its fields checked (CheckpointError naming the manifest and key).
YAML::Node read_manifest(const std::string& dir) {
  const std::string mpath = dir + "/manifest.yaml";
  if (!fs::exists(mpath)) throw CheckpointError(mpath + ": missing (an incomplete checkpoint)");
  YAML::Node m;
  try {
    m = YAML::LoadFile(mpath);
  } catch (const std::exception& e) {
    throw CheckpointError(mpath + ": unreadable (" + e.what() + ")");
  }
  const YAML::Node f = m.IsMap() ? m["format"] : YAML::Node();
  const std::string format = f && f.IsScalar() ? f.Scalar() : "";
  if (format != kFormatV1 && format != kFormatV2)
    throw CheckpointError(mpath + (format.rfind("moetron-checkpoint-", 0) == 0
                                       ? ": format " + format + " is not one this moetron reads (" +
                                             kFormatV1 + ", " + kFormatV2 + ")"
                                       : std::string(": not a moetron checkpoint manifest")));
  for (const char* key : {"step", "tokens", "samples"})
    if (field<int64_t>(m, key, mpath) < 0) throw CheckpointError(mpath + ": " + key + ": negative");
  if (m["tokenizer"]) field<std::string>(m, "tokenizer", mpath);
  if (m["model"] && !m["model"].IsMap()) throw CheckpointError(mpath + ": model: not a mapping");
  shard_entries(m, mpath);
  return m;
}

// Checks a checkpoint directory; returns "" if complete and intact, else what is wrong.
std::string verify(const std::string& dir, YAML::Node* manifest_out) {
  const std::string mpath = dir + "/manifest.yaml";
  YAML::Node m;
  try {
    m = read_manifest(dir);
  } catch (const CheckpointError& e) {
    return e.what();
  }
  for (const ShardEntry& s : shard_entries(m, mpath)) {
    const std::string path = dir + "/" + s.file;
    if (!fs::is_regular_file(path)) return path + ": missing";
    const auto [crc, size] = file_crc(path);
    if (size != s.bytes)
      return path + ": " + std::to_string(size) + " bytes, the manifest says " +
             std::to_string(s.bytes) + " (truncated?)";
    if (crc != s.crc) return path + ": checksum mismatch (corrupt)";
  }
  if (manifest_out) *manifest_out = m;
  return "";
}

}  // namespace

// A parameter's values from a checkpoint: read on the host, copied to its device.
template <class Reader>
void read_param(const Reader& ck, Param<float>& p) {
  std::vector<float> host(static_cast<size_t>(p.numel()));
  ck.read(p.name, 0, p.numel(), host.data());
  values_from_host(p, host.data());
}

Snapshot Snapshot::take(const ParamStore<float>& ps, const std::vector<const Zero1*>& opts,
                        bool write_unsharded) {
  Snapshot s;
  auto piece = [&](const Param<float>& p, int64_t offset, int64_t len) -> float* {
    Piece c{p.name, p.value.shape(), offset, {}};
    c.data.resize(static_cast<size_t>(len));
    s.params.push_back(std::move(c));
    return s.params.back().data.data();
  };
  std::set<const Param<float>*> sharded;
  std::set<std::string> replicas;  // their primary copies (and moments) are written instead
  for (auto& p : ps.all())
    if (p->replica) replicas.insert(p->name);
  for (const Zero1* o : opts) {
    sharded.insert(o->params().begin(), o->params().end());
    for (const auto& r : o->owned_ranges())  // (the owner's master values)
      if (!r.param->replica) o->read_owned(r, piece(*r.param, r.offset, r.len));
    for (auto& m : o->export_moments())
      if (!replicas.count(m.name)) s.moments.push_back(std::move(m));
  }
  if (write_unsharded)
    for (auto& p : ps.all())
      if (!p->replica && !sharded.count(p.get()))
        values_to_host(*p, 0, p->numel(), piece(*p, 0, p->numel()));
  return s;
}

CheckpointWriter::CheckpointWriter(Communicator& world) : comm_(world.split(0, world.rank())) {
  comm_->set_name("checkpoint");
}

CheckpointWriter::~CheckpointWriter() {
  if (thread_.joinable()) thread_.join();
}

double CheckpointWriter::save(const Config& cfg, const TrainState& st, const ParamStore<float>& ps,
                              const std::vector<const Zero1*>& opts, bool write_unsharded,
                              const std::string& tokenizer) {
  const auto t0 = std::chrono::steady_clock::now();
  wait();
  auto snap = std::make_shared<Snapshot>(Snapshot::take(ps, opts, write_unsharded));
  const double blocked =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  thread_ = std::thread([this, cfg, st, snap, tokenizer] {
    watchdog::set_step(st.step, "checkpoint save");  // what this thread's waits are for
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

namespace {

// manifest.yaml of a checkpoint being written in `tmp`: format, position, layout, tokenizer,
// model, config and each shard's size and CRC-32 (written to a temporary name, then renamed).
void write_manifest(const std::string& tmp, const Config& cfg, const TrainState& st,
                    const std::string& tokenizer, int n_ranks) {
  YAML::Emitter y;
  y << YAML::BeginMap << YAML::Key << "format" << YAML::Value << kFormatV2;
  y << YAML::Key << "step" << YAML::Value << st.step << YAML::Key << "tokens" << YAML::Value
    << st.tokens << YAML::Key << "samples" << YAML::Value << st.samples;
  y << YAML::Key << "layout" << YAML::Value << YAML::Flow << YAML::BeginMap << YAML::Key << "world"
    << YAML::Value << n_ranks << YAML::Key << "pp" << YAML::Value << cfg.parallel.pp << YAML::Key
    << "dp" << YAML::Value << cfg.parallel.dp << YAML::Key << "ep" << YAML::Value << cfg.parallel.ep
    << YAML::EndMap;
  y << YAML::Key << "tokenizer" << YAML::Value << tokenizer;
  y << YAML::Key << "model" << YAML::Value << model_node(cfg);
  // nothing random is carried between steps: weights are initialised once from (seed, name) and
  // sample i of the run is a pure function of (seed, i); LR, gamma and lambda are functions of
  // (step, tokens) above
  y << YAML::Key << "rng" << YAML::Value << "stateless (seed " + std::to_string(cfg.run.seed) + ")";
  y << YAML::Key << "config" << YAML::Value << YAML::Literal << config_to_yaml(cfg);
  y << YAML::Key << "shards" << YAML::Value << YAML::BeginSeq;
  for (int r = 0; r < n_ranks; ++r) {
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
}

// tmp becomes final_dir (a re-save of the same step: move the old one aside as step_N.old, swap,
// then drop it). A crash between the two renames leaves step_N.old, which --resume auto uses
// while step_N is missing (checkpoint_dirs); a step_N.old left over from such a crash is
// removed once a new step_N is in place.
void publish(const std::string& tmp, const std::string& final_dir) {
  const std::string old = final_dir + ".old";
  if (fs::exists(final_dir)) {
    fs::remove_all(old);  // a left-over one: final_dir replaced it
    fs::rename(final_dir, old);
  }
  fs::rename(tmp, final_dir);
  fs::remove_all(old);
}

// Keeps the newest `keep` complete checkpoints of run_dir (a step_N.old standing in for step_N
// counts as one; a replaced one goes), and removes every step_N.tmp: saves run one at a time and
// this one is published, so any other is left by a save that crashed.
void prune(const std::string& run_dir, int64_t keep) {
  std::vector<fs::path> stale;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(run_dir + "/checkpoints", ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0 &&
        step_of(name.substr(0, name.size() - 4)) >= 0)
      stale.push_back(e.path());
  }
  auto done = checkpoint_dirs(run_dir + "/checkpoints", &stale, ec);
  if (ec) throw CheckpointError(run_dir + "/checkpoints: cannot list (" + ec.message() + ")");
  std::erase_if(done, [](const auto& d) { return !fs::exists(d.second / "manifest.yaml"); });
  std::sort(done.rbegin(), done.rend());
  for (size_t i = static_cast<size_t>(keep); i < done.size(); ++i) fs::remove_all(done[i].second);
  for (const fs::path& p : stale) fs::remove_all(p);
}

}  // namespace

// Every rank writes its shard into step_N.tmp; rank 0 then writes the manifest with the shards'
// checksums and renames the directory into place. Any failure on any rank removes the .tmp and
// throws on every rank; older checkpoints are untouched.
std::string save_checkpoint(const Config& cfg, const TrainState& st, const Snapshot& snap,
                            const std::string& tokenizer, Communicator& world) {
  const std::string final_dir = step_dir(cfg.run.dir, st.step), tmp = final_dir + ".tmp";
  const int rank = world.rank(), n = world.size();
  static const std::optional<SlowSave> slow = slow_save_from_env();
  int64_t ok = 1;
  std::string err;
  auto all_ok = [&] {  // true on every rank iff true on every rank
    int64_t sum = ok;
    world.all_reduce(&sum, 1);
    ok = sum == n ? 1 : 0;
  };
  auto attempt = [&](auto&& f) {
    try {
      f();
    } catch (const std::exception& e) {
      ok = 0, err = e.what();
    }
  };
  if (rank == 0) {
    std::error_code ec;
    fs::remove_all(tmp, ec);
    fs::create_directories(tmp, ec);
    if (ec) ok = 0, err = tmp + ": cannot create (" + ec.message() + ")";
  }
  all_ok();
  if (!ok) throw CheckpointError(err.empty() ? tmp + ": rank 0 could not create it" : err);
  attempt([&] { write_shard(tmp + "/rank_" + std::to_string(rank) + ".h5", snap, st.step); });
  if (slow && slow->step == st.step)  // tests: a save held in flight (trainer/fault_inject.h)
    std::this_thread::sleep_for(std::chrono::duration<double>(slow->seconds));
  all_ok();
  if (ok && rank == 0)
    attempt([&] {
      write_manifest(tmp, cfg, st, tokenizer, n);
      publish(tmp, final_dir);
      prune(cfg.run.dir, cfg.run.keep_checkpoints);
    });
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

namespace {

// Every step_<N> directory under <run_dir>/checkpoints, newest first, with what is wrong with it
// ("" when it is complete and intact).
std::vector<std::pair<std::string, std::string>> scan_checkpoints(const std::string& run_dir) {
  const std::string root = run_dir + "/checkpoints";
  std::error_code ec;
  if (!fs::is_directory(root, ec)) return {};
  std::vector<std::pair<int64_t, std::string>> cands;
  for (const auto& [step, path] : checkpoint_dirs(root, nullptr, ec))
    cands.emplace_back(step, path.string());
  if (ec) throw CheckpointError(root + ": cannot list (" + ec.message() + ")");
  std::sort(cands.rbegin(), cands.rend());
  std::vector<std::pair<std::string, std::string>> out;
  for (const auto& [step, dir] : cands) {
    std::string bad;
    try {
      bad = verify(dir, nullptr);
    } catch (const std::exception& e) {
      bad = e.what();
    }
    out.emplace_back(dir, bad);
    if (bad.empty()) break;  // older ones are not looked at
  }
  return out;
}

}  // namespace

std::string find_checkpoint(const std::string& run_dir, std::string* warnings) {
  for (const auto& [dir, bad] : scan_checkpoints(run_dir)) {
    if (bad.empty()) return dir;
    if (warnings) *warnings += "skipping checkpoint " + dir + ": " + bad + "\n";
  }
  return "";
}

std::string resolve_resume(const std::string& resume, const std::string& run_dir,
                           std::string* notes) {
  if (resume != "auto") return resume;
  const auto found = scan_checkpoints(run_dir);
  std::string skipped;
  for (const auto& [dir, bad] : found) {
    if (bad.empty()) {
      if (notes) *notes += prefix_lines("moetron: warning: ", skipped);
      return dir;
    }
    skipped += "skipping checkpoint " + dir + ": " + bad + "\n";
  }
  if (found.empty()) {
    if (notes) *notes += "moetron: no checkpoint in " + run_dir + "/checkpoints, starting fresh\n";
    return "";
  }
  std::string why;
  for (const auto& [dir, bad] : found) why += "\n  " + dir + ": " + bad;
  throw CheckpointError("--resume auto: none of the " + std::to_string(found.size()) +
                        " checkpoint(s) in " + run_dir +
                        "/checkpoints is usable, so the run cannot continue (nothing was "
                        "written; move them away or use another run.dir to start fresh):" +
                        why);
}

std::string prefix_lines(const std::string& prefix, const std::string& text) {
  std::string out;
  size_t at = 0;
  while (at < text.size()) {
    const size_t nl = text.find('\n', at);
    const size_t end = nl == std::string::npos ? text.size() : nl;
    out += prefix + text.substr(at, end - at) + "\n";
    at = end + 1;
  }
  return out;
}

// The pieces of every parameter in a checkpoint's shards, indexed from metadata only.
struct CheckpointReader::Impl {
  struct Piece {
    size_t file;          // index into paths/files
    std::string dataset;  // under /params
    int64_t offset, len;
    bool whole;  // a v1 dataset: the whole tensor in its own shape (read only as a whole)
  };
  struct Tensor {
    std::vector<int64_t> shape;
    std::vector<Piece> pieces;  // sorted by offset, tiling [0, numel) exactly
  };
  std::string dir;
  YAML::Node manifest;
  int version = 0;
  std::vector<std::string> paths;
  std::deque<H5> files;  // H5 closes its id on destruction: never copied or moved
  std::map<std::string, Tensor> tensors;
  std::vector<std::string> names;

  // `what`: the start of a verification error ("cannot resume from", "cannot read")
  Impl(const std::string& d, const std::string& what) : dir(d) {
    const std::string bad = verify(dir, &manifest);
    if (!bad.empty()) throw CheckpointError(what + " " + dir + ": " + bad);
    version = manifest["format"].as<std::string>() == kFormatV1 ? 1 : 2;
    for (const auto& s : manifest["shards"]) {
      paths.push_back(dir + "/" + s["file"].as<std::string>());
      files.emplace_back(H5Fopen(paths.back().c_str(), H5F_ACC_RDONLY, H5P_DEFAULT), H5Fclose);
      if (files.back().id < 0) throw CheckpointError(paths.back() + ": cannot open as HDF5");
    }
    for (size_t i = 0; i < files.size(); ++i) index(i);
    for (auto& [name, t] : tensors) check(name, t);
  }

  void index(size_t i) {
    const std::string& path = paths[i];
    H5 g{H5Gopen2(files[i].id, "params", H5P_DEFAULT), H5Gclose};
    if (g.id < 0) throw CheckpointError(path + ": no /params group");
    for (const std::string& link : named_links(g.id, path + ": params")) {
      try {
        if (version == 1) {  // a whole tensor; another shard may hold it too (identical)
          if (tensors.count(link)) continue;
          H5 d{H5Dopen2(g.id, link.c_str(), H5P_DEFAULT), H5Dclose};
          H5 sp{d.id >= 0 ? H5Dget_space(d.id) : -1, H5Sclose};
          hsize_t dims[8];
          const int nd = sp.id >= 0 ? H5Sget_simple_extent_ndims(sp.id) : -1;
          if (nd < 0 || nd > 8) throw CheckpointError("not a tensor");
          H5Sget_simple_extent_dims(sp.id, dims, nullptr);
          Tensor& t = tensors[link];
          t.shape.assign(dims, dims + nd);
          t.pieces.push_back({i, link, 0, numel(t.shape), true});
          continue;
        }
        const size_t hash = link.rfind('#');
        if (hash == std::string::npos || hash + 1 == link.size() ||
            link.find_first_not_of("0123456789", hash + 1) != std::string::npos)
          throw CheckpointError("not a <name>#<offset> piece");
        const std::string name = link.substr(0, hash);
        const std::vector<int64_t> shape = read_attr_ints(g.id, link, "shape");
        const int64_t offset = parse_offset(link.substr(hash + 1)), len = dataset_size(g.id, link);
        if (len < 0 || offset > numel(shape) - len)
          throw CheckpointError("[" + std::to_string(offset) + ", +" + std::to_string(len) +
                                ") lies outside the tensor's shape " + show_shape(shape));
        Tensor& t = tensors[name];
        if (t.pieces.empty()) t.shape = shape;
        if (shape != t.shape)
          throw CheckpointError("its shape differs from that of another piece of " + name + " (" +
                                paths[t.pieces[0].file] + ")");
        t.pieces.push_back({i, link, offset, len, false});
      } catch (const std::exception& e) {
        throw CheckpointError(path + ": params/" + link + ": " + e.what());
      }
    }
  }

  // the <offset> of a "<name>#<offset>" link: digits, at most 2^48
  static int64_t parse_offset(const std::string& digits) {
    if (digits.empty() || digits.size() > 15 ||
        digits.find_first_not_of("0123456789") != std::string::npos)
      throw CheckpointError("'" + digits + "' is not an element offset");
    return std::stoll(digits);
  }
  // the element count of a shape read from a file: each extent in [0, 2^48], the product too
  static int64_t numel(const std::vector<int64_t>& shape) {
    constexpr int64_t kMax = int64_t{1} << 48;
    int64_t n = 1;
    for (int64_t d : shape) {
      if (d < 0 || d > kMax || (d > 0 && n > kMax / d))
        throw CheckpointError("shape " + show_shape(shape) + " is not a tensor's shape");
      n *= d;
    }
    return n;
  }
  static std::string show_shape(const std::vector<int64_t>& shape) {
    std::string s = "[";
    for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + std::to_string(shape[i]);
    return s + "]";
  }

  // the pieces of one tensor must tile it: no gap, no overlap
  void check(const std::string& name, Tensor& t) const {
    std::sort(t.pieces.begin(), t.pieces.end(),
              [](const Piece& a, const Piece& b) { return a.offset < b.offset; });
    auto range = [&](const Piece& p) {
      return paths[p.file] + " (" + name + " [" + std::to_string(p.offset) + ", " +
             std::to_string(p.offset + p.len) + "))";
    };
    const int64_t n = numel(t.shape);
    int64_t at = 0;
    const Piece* prev = nullptr;
    for (const Piece& p : t.pieces) {
      if (p.offset < at)
        throw CheckpointError(range(p) + " overlaps " + range(*prev) + ": a corrupt checkpoint");
      if (p.offset > at)
        throw CheckpointError(dir + ": no shard holds elements [" + std::to_string(at) + ", " +
                              std::to_string(p.offset) + ") of " + name + " (a missing piece)");
      at = p.offset + p.len, prev = &p;
    }
    if (at != n)
      throw CheckpointError(
          at < n ? dir + ": no shard holds elements [" + std::to_string(at) + ", " +
                       std::to_string(n) + ") of " + name + " (a missing piece)"
                 : range(*prev) + " extends past the tensor's " + std::to_string(n) + " elements");
  }

  const Tensor& tensor(const std::string& name) const {
    auto it = tensors.find(name);
    if (it == tensors.end()) throw CheckpointError(dir + ": no shard holds " + name);
    return it->second;
  }

  void read(const std::string& name, int64_t begin, int64_t count, float* out) const {
    const Tensor& t = tensor(name);
    if (begin < 0 || count < 0 || begin + count > numel(t.shape))
      throw CheckpointError(dir + ": " + name + ": elements out of range");
    std::vector<float> whole;
    for (const Piece& p : t.pieces) {
      const int64_t lo = std::max(begin, p.offset), hi = std::min(begin + count, p.offset + p.len);
      if (lo >= hi) continue;
      try {
        H5 g{H5Gopen2(files[p.file].id, "params", H5P_DEFAULT), H5Gclose};
        if (p.whole) {  // v1: read the tensor, then take the range
          float* dst = out + (lo - begin);
          if (lo != p.offset || hi != p.offset + p.len) whole.resize(p.len), dst = whole.data();
          read_dataset(g.id, p.dataset, H5T_NATIVE_FLOAT, dst);
          if (dst != out + (lo - begin))
            std::copy(whole.begin() + (lo - p.offset), whole.begin() + (hi - p.offset),
                      out + (lo - begin));
          continue;
        }
        H5 d{H5Dopen2(g.id, p.dataset.c_str(), H5P_DEFAULT), H5Dclose};
        H5 fsp{d.id >= 0 ? H5Dget_space(d.id) : -1, H5Sclose};
        const hsize_t start = lo - p.offset, n = hi - lo;
        H5 msp{H5Screate_simple(1, &n, nullptr), H5Sclose};
        h5::check(fsp.id >= 0, "cannot open");
        h5::check(H5Sselect_hyperslab(fsp.id, H5S_SELECT_SET, &start, nullptr, &n, nullptr) >= 0,
                  "cannot select [" + std::to_string(start) + ", +" + std::to_string(n) + ")");
        float* dst = out + (lo - begin);
        h5::check(H5Dread(d.id, H5T_NATIVE_FLOAT, msp.id, fsp.id, H5P_DEFAULT, dst) >= 0,
                  "cannot read");
      } catch (const std::exception& e) {
        throw CheckpointError(paths[p.file] + ": params/" + p.dataset + ": " + e.what());
      }
    }
  }
};

CheckpointReader::CheckpointReader(const std::string& dir)
    : impl_(std::make_unique<Impl>(dir, "cannot read")) {
  for (const auto& kv : impl_->tensors) impl_->names.push_back(kv.first);
}
CheckpointReader::~CheckpointReader() = default;
int CheckpointReader::format_version() const { return impl_->version; }
const std::vector<std::string>& CheckpointReader::names() const { return impl_->names; }
bool CheckpointReader::has(const std::string& name) const { return impl_->tensors.count(name); }
const std::vector<int64_t>& CheckpointReader::shape(const std::string& name) const {
  return impl_->tensor(name).shape;
}
void CheckpointReader::read(const std::string& name, int64_t begin, int64_t count,
                            float* out) const {
  impl_->read(name, begin, count, out);
}

namespace {

// The moment pieces "<name>#<offset>#m|v" of every shard for the parameters in `mine` (name ->
// element count): each m with its v, of one size, inside its parameter.
std::vector<Zero1::MomentPiece> read_moments(const CheckpointReader::Impl& ck,
                                             const std::map<std::string, int64_t>& mine) {
  std::vector<Zero1::MomentPiece> pieces;
  for (size_t i = 0; i < ck.files.size(); ++i) {
    H5 g{H5Gopen2(ck.files[i].id, "moments", H5P_DEFAULT), H5Gclose};
    if (g.id < 0) throw CheckpointError(ck.paths[i] + ": no /moments group");
    for (const std::string& link : named_links(g.id, ck.paths[i] + ": moments")) {
      if (link.size() < 2 || link.substr(link.size() - 2) != "#m") continue;
      try {
        const std::string stem = link.substr(0, link.size() - 2);
        const size_t hash = stem.rfind('#');
        if (hash == std::string::npos) throw CheckpointError("not a <name>#<offset>#m piece");
        const auto it = mine.find(stem.substr(0, hash));
        if (it == mine.end()) continue;
        Zero1::MomentPiece piece{
            it->first, CheckpointReader::Impl::parse_offset(stem.substr(hash + 1)), {}, {}};
        const int64_t n = dataset_size(g.id, link);
        if (n < 0 || piece.offset > it->second - n)
          throw CheckpointError("[" + std::to_string(piece.offset) + ", +" + std::to_string(n) +
                                ") lies outside " + it->first + " (" + std::to_string(it->second) +
                                " elements)");
        if (dataset_size(g.id, stem + "#v") != n)
          throw CheckpointError("its #v has another size than its #m");
        piece.m.resize(n), piece.v.resize(n);
        read_dataset(g.id, link, H5T_NATIVE_FLOAT, piece.m.data());
        read_dataset(g.id, stem + "#v", H5T_NATIVE_FLOAT, piece.v.data());
        pieces.push_back(std::move(piece));
      } catch (const std::exception& e) {
        throw CheckpointError(ck.paths[i] + ": moments/" + link + ": " + e.what());
      }
    }
  }
  return pieces;
}

}  // namespace

TrainState load_checkpoint(const std::string& dir, const Config& cfg, ParamStore<float>& ps,
                           const std::vector<Zero1*>& opts, const std::string& tokenizer) {
  CheckpointReader::Impl ck(dir, "cannot resume from");
  const YAML::Node& m = ck.manifest;
  // the same tokenizer and the same model
  const std::string had = m["tokenizer"] ? m["tokenizer"].as<std::string>() : "(none)";
  if (had != tokenizer)
    throw CheckpointError(dir + ": checkpoint was trained on tokenizer '" + had + "', but " +
                          cfg.data.train_path + " uses '" + tokenizer + "'");
  const YAML::Node want = model_node(cfg), have = m["model"];
  if (!have) throw CheckpointError(dir + "/manifest.yaml: model: missing");
  for (const auto& kv : want) {
    const std::string key = kv.first.as<std::string>();
    const std::string a = YAML::Dump(kv.second), b = have[key] ? YAML::Dump(have[key]) : "(absent)";
    if (a != b)
      throw CheckpointError(dir + ": checkpoint has model." + key + " = " + b + ", the config " +
                            cfg.source + " has " + a);
  }
  // each parameter reassembled from the pieces of whichever shards hold it; a group whose
  // master values are sharded reads its owned ranges and gathers (parallel/zero1.h)
  std::set<const Param<float>*> sharded;
  for (Zero1* o : opts)
    if (o->sharded()) sharded.insert(o->params().begin(), o->params().end());
  for (auto& p : ps.all()) {
    if (ck.tensor(p->name).shape != p->value.shape())
      throw CheckpointError(dir + ": " + p->name + " has another shape in the checkpoint");
    if (!sharded.count(p.get())) read_param(ck, *p);
  }
  for (Zero1* o : opts)
    if (o->sharded())
      o->load_owned([&](const Param<float>& p, int64_t offset, int64_t len, float* host) {
        ck.read(p.name, offset, len, host);
      });
  // optimizer moments: every (name, offset) piece of the names this rank holds
  std::map<std::string, int64_t> mine;
  for (auto& p : ps.all()) mine[p->name] = p->numel();
  const std::vector<Zero1::MomentPiece> pieces = read_moments(ck, mine);
  try {
    for (Zero1* o : opts) o->import_moments(pieces);
  } catch (const std::runtime_error& e) {
    throw CheckpointError(dir + ": " + e.what());
  }
  // (collective, so after everything that can fail: a rank that throws leaves no peer waiting)
  for (Zero1* o : opts) o->gather_values();
  TrainState st;
  st.step = m["step"].as<int64_t>(), st.tokens = m["tokens"].as<int64_t>();
  st.samples = m["samples"].as<int64_t>();
  return st;
}

void load_params(ParamStore<float>& params, const CheckpointReader& ck, const std::string& dir,
                 const std::string& whose) {
  for (auto& p : params.all()) {
    if (!ck.has(p->name))
      throw CheckpointError(dir + ": has no parameter " + p->name + " (not a checkpoint of " +
                            whose + ")");
    if (ck.shape(p->name) != p->value.shape())
      throw CheckpointError(dir + ": parameter " + p->name + " has another shape than " + whose);
    read_param(ck, *p);
  }
}

}  // namespace moetron
