// Data sources from text (see sources.h).
#include "data/sources.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <sstream>

#include "data/token_file.h"

namespace moetron::data {

namespace {

bool ends_with(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// One path -> the files of its source, in stream order.
std::vector<std::string> expand(const std::string& path, const std::string& what) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) throw DataError(what + ": " + path + ": no such file or directory");
  if (!fs::is_directory(st)) return {path};
  std::vector<std::string> indexes, shards;
  for (const auto& e : fs::directory_iterator(path, ec)) {
    const std::string p = e.path().string();
    if (!e.is_regular_file()) continue;
    if (ends_with(p, ".index.json"))
      indexes.push_back(p);
    else if (ends_with(p, ".h5"))
      shards.push_back(p);
  }
  if (ec) throw DataError(what + ": " + path + ": cannot list directory: " + ec.message());
  std::vector<std::string>& files = indexes.empty() ? shards : indexes;
  if (files.empty())
    throw DataError(what + ": " + path +
                    ": directory holds no token shards (*.h5) or shard indexes (*.index.json)");
  std::sort(files.begin(), files.end());
  return files;
}

}  // namespace

std::vector<SourceSpec> parse_sources(const std::string& setting, const std::string& what) {
  std::istringstream in(setting);
  std::vector<std::string> words;
  for (std::string w; in >> w;) words.push_back(w);
  if (words.empty()) throw DataError(what + ": no data path given");
  if (words.size() == 1) return {SourceSpec{words[0], expand(words[0], what), 1.0}};
  if (words.size() % 2 != 0)
    throw DataError(what + ": expected one path or pairs \"WEIGHT PATH ...\", got " +
                    std::to_string(words.size()) + " words in '" + setting + "'");
  std::vector<SourceSpec> out;
  for (size_t i = 0; i < words.size(); i += 2) {
    double w = 0;
    size_t used = 0;
    try {
      w = std::stod(words[i], &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used != words[i].size() || !std::isfinite(w) || w <= 0)
      throw DataError(what + ": the weight of " + words[i + 1] +
                      " must be a positive number, got '" + words[i] + "'");
    out.push_back(SourceSpec{words[i + 1], expand(words[i + 1], what), w});
  }
  return out;
}

}  // namespace moetron::data
