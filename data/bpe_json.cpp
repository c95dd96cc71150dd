// Byte-level BPE tokenizer (see bpe.h), part 3 of 3: reading and writing Hugging Face's
// tokenizer.json.
//
// Writing (to_json) prints the file by hand so that its layout is fixed: one added token, vocab
// entry or merge per line, vocab in id order, merges as "a b" (or [a, b] when a token holds a
// space). Reading (from_json) checks the parts of the file in order (model type, normalizer,
// pre-tokenizer, decoder, model options, vocab, merges, added tokens) and rejects what moetron
// cannot reproduce exactly; every message starts with the file's name. Added tokens get the ids
// HF's AddedVocabulary would give them, and a file that says otherwise is rejected.
#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

#include "data/bpe.h"
#include "data/bpe_impl.h"

namespace moetron::data {

namespace {

using nlohmann::json;
using Impl = BpeTokenizer::Impl;

std::string json_str(std::string_view s) { return json(std::string(s)).dump(); }

// Errors of one file: "ORIGIN: message".
struct Fail {
  const std::string& origin;
  DataError operator()(const std::string& msg) const { return DataError(origin + ": " + msg); }
};

json parse_json(std::string_view text, const std::string& origin) {
  try {
    return json::parse(text);
  } catch (const json::exception& e) {
    throw DataError(origin + ": not valid JSON: " + e.what());
  }
}

// The "model" object of the file, checked to be BPE.
const json& bpe_model(const json& j, const Fail& fail) {
  if (!j.is_object()) throw fail("not a JSON object (expected a Hugging Face tokenizer.json)");
  if (!j.contains("model") || !j["model"].is_object()) throw fail("missing \"model\" object");
  const json& model = j["model"];
  if (!model.contains("type") || !model["type"].is_string())
    throw fail("model has no \"type\" (only \"BPE\" is supported)");
  if (model["type"] != "BPE")
    throw fail("model type \"" + model["type"].get<std::string>() +
               "\" is not supported (only byte-level \"BPE\")");
  return model;
}

// normalizer (none: null or an empty Sequence), pre_tokenizer, decoder, post_processor.
void read_pipeline(const json& j, Impl* m, const Fail& fail) {
  if (j.contains("normalizer") && !j["normalizer"].is_null()) {
    const json& n = j["normalizer"];
    if (!(n.is_object() && n.value("type", "") == "Sequence" && n.contains("normalizers") &&
          n["normalizers"].is_array() && n["normalizers"].empty()))
      throw fail("normalizer " + n.dump().substr(0, 200) + " is not supported (only none)");
    m->normalizer_json = n.dump();
  }
  if (!j.contains("pre_tokenizer") || j["pre_tokenizer"].is_null())
    throw fail("no pre_tokenizer: only byte-level BPE (a ByteLevel pre-tokenizer) is supported");
  try {
    m->pre = PreTokenizer::from_json(j["pre_tokenizer"]);
  } catch (const std::invalid_argument& e) {
    throw fail(e.what());
  }
  if (j.contains("decoder") && !j["decoder"].is_null()) {
    const json& d = j["decoder"];
    if (!d.is_object() || d.value("type", "") != "ByteLevel")
      throw fail("decoder " + d.dump().substr(0, 200) + " is not supported (only ByteLevel)");
    m->decoder_json = d.dump();
  }
  if (j.contains("post_processor")) m->post_processor_json = j["post_processor"].dump();
}

// dropout, continuing_subword_prefix, end_of_word_suffix, byte_fallback: only their no-op values;
// ignore_merges.
void read_model_options(const json& model, Impl* m, const Fail& fail) {
  auto null_or = [&](const char* key, auto ok) {
    return !model.contains(key) || model[key].is_null() || ok(model[key]);
  };
  if (!null_or("dropout", [](const json& v) { return v.is_number() && v.get<double>() == 0; }))
    throw fail("model.dropout is not supported");
  for (const char* key : {"continuing_subword_prefix", "end_of_word_suffix"})
    if (!null_or(key, [](const json& v) { return v.is_string() && v.get<std::string>().empty(); }))
      throw fail(std::string("model.") + key + " is not supported");
  if (!null_or("byte_fallback", [](const json& v) { return v.is_boolean() && !v.get<bool>(); }))
    throw fail("model.byte_fallback is not supported");
  if (model.contains("ignore_merges") && model["ignore_merges"].is_boolean())
    m->ignore_merges = model["ignore_merges"].get<bool>();
}

// model.vocab into tokens / vocab / in_model / used; returns the number of entries.
size_t read_vocab(const json& model, Impl* m, const Fail& fail) {
  if (!model.contains("vocab") || !model["vocab"].is_object())
    throw fail("model.vocab is missing or not an object");
  uint32_t max_id = 0;
  std::vector<std::pair<uint32_t, std::string>> entries;
  for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it) {
    if (!it.value().is_number_unsigned() || it.value().get<uint64_t>() >= (uint64_t{1} << 31))
      throw fail("model.vocab[" + json(it.key()).dump() + "] is not a valid id");
    const auto id = it.value().get<uint32_t>();
    entries.emplace_back(id, it.key());
    max_id = std::max(max_id, id);
  }
  if (entries.empty()) throw fail("model.vocab is empty");
  const size_t model_size = entries.size();
  m->tokens.assign(max_id + 1, std::string());
  m->in_model.assign(max_id + 1, 0);
  m->used.assign(max_id + 1, 0);
  for (auto& [id, tok] : entries) {
    if (m->used[id])
      throw fail("model.vocab: id " + std::to_string(id) + " is given to both " +
                 json(m->tokens[id]).dump() + " and " + json(tok).dump());
    m->used[id] = m->in_model[id] = 1;
    m->vocab.emplace(tok, id);
    m->tokens[id] = std::move(tok);
  }
  return model_size;
}

// Merge r of the file: "a b" or ["a", "b"].
std::pair<std::string, std::string> merge_tokens(const json& e, size_t r, const Fail& fail) {
  if (e.is_string()) {
    const std::string s = e.get<std::string>();
    const size_t sp = s.find(' ');
    if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
      throw fail("model.merges[" + std::to_string(r) + "] " + e.dump() +
                 " is not two tokens separated by one space");
    return {s.substr(0, sp), s.substr(sp + 1)};
  }
  if (e.is_array() && e.size() == 2 && e[0].is_string() && e[1].is_string())
    return {e[0].get<std::string>(), e[1].get<std::string>()};
  throw fail("model.merges[" + std::to_string(r) + "] is neither \"a b\" nor [a, b]");
}

// model.merges as id pairs and the ids they make.
void read_merges(const json& model, Impl* m, const Fail& fail) {
  if (!model.contains("merges") || !model["merges"].is_array())
    throw fail("model.merges is missing or not an array");
  const json& merges = model["merges"];
  m->merges.reserve(merges.size());
  m->merge_ids.reserve(merges.size());
  for (size_t r = 0; r < merges.size(); ++r) {
    const json& e = merges[r];
    const auto [a, b] = merge_tokens(e, r, fail);
    auto ia = m->vocab.find(a), ib = m->vocab.find(b), iab = m->vocab.find(a + b);
    if (ia == m->vocab.end() || ib == m->vocab.end() || iab == m->vocab.end())
      throw fail("model.merges[" + std::to_string(r) + "] " + e.dump() + ": " +
                 json(ia == m->vocab.end()   ? a
                      : ib == m->vocab.end() ? b
                                             : a + b)
                     .dump() +
                 " is not in the vocab");
    m->merges.emplace_back(ia->second, ib->second);
    m->merge_ids.push_back(iab->second);
  }
}

// One entry of added_tokens (its id is checked by read_added_tokens).
AddedToken added_token(const json& t, const Fail& fail) {
  if (!t.is_object() || !t.contains("content") || !t["content"].is_string() || !t.contains("id") ||
      !t["id"].is_number_unsigned())
    throw fail("added_tokens: entry " + t.dump().substr(0, 200) + " lacks id or content");
  AddedToken a;
  a.content = t["content"].get<std::string>();
  a.special = t.value("special", false);
  a.normalized = t.value("normalized", !a.special);
  if (a.content.empty()) throw fail("added_tokens: empty content");
  for (const char* key : {"lstrip", "rstrip", "single_word"})
    if (t.value(key, false))
      throw fail("added token " + json(a.content).dump() + ": " + key + " is not supported");
  return a;
}

// Records added token a (id already assigned) in the tables.
void add_token(Impl* m, AddedToken a) {
  const uint32_t id = a.id;
  if (id >= m->tokens.size()) {
    m->tokens.resize(id + 1);
    m->in_model.resize(id + 1, 0);
    m->used.resize(id + 1, 0);
  }
  if (!m->in_model[id]) m->tokens[id] = a.content;
  m->used[id] = 1;
  m->added.push_back(std::move(a));
}

// added_tokens, with HF's id assignment (AddedVocabulary::add_tokens): a token in the vocab keeps
// its id, a repeated one is dropped (HF keeps the first), a new one gets the next id after the
// vocab and the added tokens so far.
void read_added_tokens(const json& j, size_t model_size, Impl* m, const Fail& fail) {
  if (!j.contains("added_tokens") || j["added_tokens"].is_null()) return;
  if (!j["added_tokens"].is_array()) throw fail("added_tokens is not an array");
  std::optional<uint32_t> max_added;
  for (const json& t : j["added_tokens"]) {
    AddedToken a = added_token(t, fail);
    const auto file_id = t["id"].get<uint64_t>();
    uint32_t id;
    if (auto it = m->vocab.find(a.content); it != m->vocab.end()) {
      id = it->second;
    } else if (auto it2 = std::find_if(m->added.begin(), m->added.end(),
                                       [&](const AddedToken& x) { return x.content == a.content; });
               it2 != m->added.end()) {
      continue;  // a repeated added token: HF keeps the first
    } else {
      id = max_added && *max_added >= model_size ? *max_added + 1
                                                 : static_cast<uint32_t>(model_size);
    }
    if (file_id != id)
      throw fail("added token " + json(a.content).dump() + " has id " + std::to_string(file_id) +
                 " but Hugging Face would give it id " + std::to_string(id));
    a.id = id;
    max_added = max_added ? std::max(*max_added, id) : id;
    add_token(m, std::move(a));
  }
}

}  // namespace

std::string BpeTokenizer::to_json() const {
  const Impl& m = *impl_;
  std::string s;
  s.reserve(m.tokens.size() * 40 + m.merges.size() * 40 + 4096);
  s += "{\n  \"version\": \"1.0\",\n  \"truncation\": null,\n  \"padding\": null,\n";
  s += "  \"added_tokens\": [";
  for (size_t i = 0; i < m.added.size(); ++i) {
    const auto& t = m.added[i];
    s += i ? ",\n    " : "\n    ";
    s += "{\"id\": " + std::to_string(t.id) + ", \"content\": " + json_str(t.content) +
         ", \"single_word\": false, \"lstrip\": false, \"rstrip\": false, \"normalized\": " +
         (t.normalized ? "true" : "false") + ", \"special\": " + (t.special ? "true" : "false") +
         "}";
  }
  s += m.added.empty() ? "],\n" : "\n  ],\n";
  s += "  \"normalizer\": " + m.normalizer_json + ",\n";
  s += "  \"pre_tokenizer\": " + m.pre.to_json().dump() + ",\n";
  s += "  \"post_processor\": " + m.post_processor_json + ",\n";
  s += "  \"decoder\": " + m.decoder_json + ",\n";
  s += "  \"model\": {\n    \"type\": \"BPE\",\n    \"dropout\": null,\n    \"unk_token\": null,\n";
  s += "    \"continuing_subword_prefix\": null,\n    \"end_of_word_suffix\": null,\n";
  s += "    \"fuse_unk\": false,\n    \"byte_fallback\": false,\n    \"ignore_merges\": ";
  s += m.ignore_merges ? "true" : "false";
  s += ",\n    \"vocab\": {";
  bool first = true;
  for (size_t id = 0; id < m.tokens.size(); ++id) {
    if (!m.in_model[id]) continue;
    s += first ? "\n      " : ",\n      ";
    first = false;
    s += json_str(m.tokens[id]) + ": " + std::to_string(id);
  }
  s += "\n    },\n    \"merges\": [";
  for (size_t r = 0; r < m.merges.size(); ++r) {
    s += r ? ",\n      " : "\n      ";
    const std::string& a = m.tokens[m.merges[r].first];
    const std::string& b = m.tokens[m.merges[r].second];
    if (a.find(' ') == std::string::npos && b.find(' ') == std::string::npos)
      s += json_str(a + " " + b);
    else {
      s += '[';
      s += json_str(a);
      s += ", ";
      s += json_str(b);
      s += ']';
    }
  }
  s += "\n    ]\n  }\n}\n";
  return s;
}

void BpeTokenizer::save(const std::string& path) const {
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
    if (!f) throw DataError(path + ": cannot write tokenizer (" + std::strerror(errno) + ")");
    const std::string s = to_json();
    f.write(s.data(), static_cast<std::streamsize>(s.size()));
    f.close();
    if (!f) throw DataError(path + ": write failed");
  }
  std::error_code ec;
  std::filesystem::rename(tmp, path, ec);
  if (ec) throw DataError(path + ": cannot rename " + tmp + ": " + ec.message());
}

BpeTokenizer BpeTokenizer::load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw DataError(path + ": cannot open tokenizer (" + std::strerror(errno) + ")");
  std::stringstream ss;
  ss << f.rdbuf();
  if (f.bad()) throw DataError(path + ": read failed");
  return from_json(ss.str(), path);
}

BpeTokenizer BpeTokenizer::from_json(std::string_view text, const std::string& origin) {
  const json j = parse_json(text, origin);
  const Fail fail{origin};
  const json& model = bpe_model(j, fail);
  auto m = std::make_shared<Impl>();
  read_pipeline(j, m.get(), fail);
  read_model_options(model, m.get(), fail);
  const size_t model_size = read_vocab(model, m.get(), fail);
  read_merges(model, m.get(), fail);
  read_added_tokens(j, model_size, m.get(), fail);
  m->special.assign(m->tokens.size(), 0);
  for (const auto& a : m->added)
    if (a.special) m->special[a.id] = 1;
  m->finish(origin);
  return BpeTokenizer(m);
}

}  // namespace moetron::data
