// The trace recorder and its Chrome Trace Event writer (parallel/trace.h): a fixed capacity with
// overflow counted, no allocation once reserved (global operator new is counted in this binary),
// nothing recorded while off; the file parses as JSON (a small parser below), slices nest (cat
// "part" / "detail"), overlapping in-flight events get lanes, PP sends and receives get the same
// flow id on both ends (peers through the pipeline group's world ranks), labels are escaped.
#include <gtest/gtest.h>

#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <new>
#include <sstream>
#include <string>
#include <vector>

#include "parallel/trace.h"

namespace {
std::atomic<int64_t> g_allocations{0};
}  // namespace

// The replacements pair malloc with free; GCC, seeing both inlined, takes them for a mismatch.
#pragma GCC diagnostic ignored "-Wmismatched-new-delete"
void* operator new(size_t n) {
  ++g_allocations;
  if (void* p = std::malloc(n ? n : 1)) return p;
  throw std::bad_alloc();
}
void operator delete(void* p) noexcept { std::free(p); }
void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace moetron::trace {
namespace {

// ---- a small JSON reader: enough to prove the file is JSON and to look into it ----
struct Json {
  enum Kind { Null, Bool, Number, String, Array, Object } kind = Null;
  double num = 0;
  std::string str;
  std::vector<Json> items;
  std::map<std::string, Json> members;
  const Json& operator[](const std::string& k) const { return members.at(k); }
  bool has(const std::string& k) const { return members.count(k) > 0; }
};

class Parser {
 public:
  explicit Parser(const std::string& s) : s_(s) {}
  Json document() {
    Json v = value();
    space();
    if (i_ != s_.size()) fail("trailing text");
    return v;
  }

 private:
  [[noreturn]] void fail(const std::string& what) {
    throw std::runtime_error("JSON: " + what + " at " + std::to_string(i_));
  }
  void space() {
    while (i_ < s_.size() && std::isspace(static_cast<unsigned char>(s_[i_]))) ++i_;
  }
  bool eat(char c) {
    space();
    if (i_ < s_.size() && s_[i_] == c) return ++i_, true;
    return false;
  }
  std::string string() {
    if (!eat('"')) fail("expected a string");
    std::string o;
    while (i_ < s_.size() && s_[i_] != '"') {
      if (static_cast<unsigned char>(s_[i_]) < 0x20) fail("control character in a string");
      if (s_[i_] == '\\') {
        const char e = s_.at(++i_);
        if (e == 'u') {
          o += static_cast<char>(std::stoi(s_.substr(i_ + 1, 4), nullptr, 16));
          i_ += 4;
        } else {
          if (std::string("\"\\/bfnrt").find(e) == std::string::npos) fail("bad escape");
          o += e;
        }
        ++i_;
      } else {
        o += s_[i_++];
      }
    }
    if (!eat('"')) fail("unterminated string");
    return o;
  }
  Json value() {
    space();
    Json v;
    if (i_ >= s_.size()) fail("expected a value");
    const char c = s_[i_];
    if (c == '{') {
      v.kind = Json::Object, ++i_;
      if (eat('}')) return v;
      do {
        const std::string k = string();
        if (!eat(':')) fail("expected ':'");
        if (v.members.count(k)) fail("duplicate key " + k);
        v.members[k] = value();
      } while (eat(','));
      if (!eat('}')) fail("expected '}'");
    } else if (c == '[') {
      v.kind = Json::Array, ++i_;
      if (eat(']')) return v;
      do v.items.push_back(value());
      while (eat(','));
      if (!eat(']')) fail("expected ']'");
    } else if (c == '"') {
      v.kind = Json::String, v.str = string();
    } else if (s_.compare(i_, 4, "true") == 0 || s_.compare(i_, 5, "false") == 0) {
      v.kind = Json::Bool, v.num = c == 't', i_ += c == 't' ? 4 : 5;
    } else if (s_.compare(i_, 4, "null") == 0) {
      i_ += 4;
    } else {
      size_t used = 0;
      v.kind = Json::Number, v.num = std::stod(s_.substr(i_, 40), &used);
      if (used == 0 || !(std::isdigit(static_cast<unsigned char>(c)) || c == '-')) fail("value");
      i_ += used;
    }
    return v;
  }
  const std::string& s_;
  size_t i_ = 0;
};

Json parse_file(const std::string& path) {
  std::ifstream f(path);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();
  return Parser(text).document();
}

std::string temp_path(const char* name) { return ::testing::TempDir() + name; }

// ---- the recorder ----

TEST(TraceRecorder, FixedCapacityCountsWhatItDrops) {
  Recorder rec;
  rec.reserve(4);
  rec.set_active(true);
  for (int i = 0; i < 10; ++i) rec.record(Event{i + 1, i + 2, "e", nullptr, {}, Track::Host});
  EXPECT_EQ(rec.size(), 4u);
  EXPECT_EQ(rec.capacity(), 4u);
  EXPECT_EQ(rec.dropped(), 6);
  EXPECT_EQ(rec.begin()[3].t0, 4);
  rec.clear();
  EXPECT_EQ(rec.size(), 0u);
  EXPECT_EQ(rec.dropped(), 0);
  EXPECT_EQ(rec.capacity(), 4u);
}

TEST(TraceRecorder, NothingWhileOffOrUnreserved) {
  Recorder rec;
  rec.set_active(true);  // no room: stays off
  EXPECT_FALSE(rec.active());
  rec.reserve(8);
  rec.record(Event{1, 2, "off", nullptr, {}, Track::Host});
  EXPECT_EQ(rec.size(), 0u);
  // the process recorder's helpers: off means no stamp and no slice
  recorder().reserve(8);
  EXPECT_EQ(stamp(), 0);
  span(Track::Host, "x", 5, 6);
  { const Scope s(Track::Host, "y"); }
  EXPECT_EQ(recorder().size(), 0u);
  recorder().set_active(true);
  span(Track::Host, "begun while off", 0, 6);  // a start of 0: not recorded
  EXPECT_EQ(recorder().size(), 0u);
  {
    const Paused off;
    span(Track::Host, "paused", 5, 6);
  }
  EXPECT_EQ(recorder().size(), 0u);
  EXPECT_TRUE(recorder().active());
  recorder().reserve(0);
}

TEST(TraceRecorder, NoAllocationOnceReserved) {
  recorder().reserve(100);
  recorder().set_active(true);
  const int64_t before = g_allocations.load();
  for (int i = 0; i < 1000; ++i) {  // ten times the capacity
    const int64_t t0 = stamp();
    span_since(Track::Compute, "F", t0, "mb,stage", i, 0);
    Event e = pending(Track::PpSend, "send activation", "mb,stage,peer,bytes", i, 0, 1, 64);
    complete(e);
    const Scope s(Track::Host, "scope");
  }
  EXPECT_EQ(g_allocations.load() - before, 0);
  EXPECT_EQ(recorder().size(), 100u);
  EXPECT_EQ(recorder().dropped(), 2900);
  recorder().reserve(0);
}

// ---- the file ----

std::vector<const Json*> of(const Json& doc, const std::string& ph) {
  std::vector<const Json*> out;
  for (const Json& e : doc["traceEvents"].items)
    if (e["ph"].str == ph) out.push_back(&e);
  return out;
}

TEST(TraceWriter, NestingLanesFlowsAndValidJson) {
  Process a{0, "rank 0 (pp 0, \"q\"\\)", {}, 0, {0, 2}};  // pipeline group: world ranks 0, 2
  a.events = {
      {1000, 9000, "step", "step,eval_us", {3, 0}, Track::Step},
      {1000, 5000, "F", "mb,stage,mb2,stage2", {0, 0, -1, -1}, Track::Compute},
      {1500, 2500, "F piece", "layer", {1}, Track::Compute},  // nested in F
      {5000, 9000, "AdamW, all-gather", nullptr, {}, Track::Optimizer},
      {2000, 4000, "dispatch", "seq", {7}, Track::Ep},
      {3000, 6000, "combine", "seq", {8}, Track::Ep},  // overlaps: a second lane
      {5000, 7000, "send activation", "mb,stage,peer,bytes", {0, 0, 1, 4096}, Track::PpSend},
  };
  Process b{2, "rank 2", {}, 0, {0, 2}};
  b.events = {
      {5500, 8000, "recv activation", "mb,stage,peer,bytes", {0, 0, 0, 4096}, Track::PpRecv}};
  const std::string path = temp_path("trace_writer.json");
  write_chrome_trace(path, {format_process(a, 1000), format_process(b, 1000)}, "\"ranks\":2");
  const Json doc = parse_file(path);
  EXPECT_EQ(doc["otherData"]["ranks"].num, 2);
  std::map<std::pair<int, int>, std::string> thread;
  std::map<int, std::string> process;
  for (const Json* m : of(doc, "M")) {
    if ((*m)["name"].str == "thread_name")
      thread[{int((*m)["pid"].num), int((*m)["tid"].num)}] = (*m)["args"]["name"].str;
    if ((*m)["name"].str == "process_name")
      process[int((*m)["pid"].num)] = (*m)["args"]["name"].str;
  }
  EXPECT_EQ(process.at(0), "rank 0 (pp 0, \"q\"\\)");
  EXPECT_EQ(process.at(2), "rank 2");
  std::map<std::string, const Json*> x;
  for (const Json* e : of(doc, "X")) {
    x[(*e)["name"].str] = e;
    EXPECT_TRUE(thread.count({int((*e)["pid"].num), int((*e)["tid"].num)})) << (*e)["name"].str;
  }
  ASSERT_EQ(x.size(), 8u);
  EXPECT_EQ((*x["F"])["cat"].str, "part");
  EXPECT_EQ((*x["F piece"])["cat"].str, "detail");
  EXPECT_EQ((*x["F piece"])["tid"].num, (*x["F"])["tid"].num);
  EXPECT_EQ((*x["AdamW, all-gather"])["cat"].str, "part");
  EXPECT_EQ((*x["step"])["cat"].str, "step");
  EXPECT_EQ((*x["dispatch"])["cat"].str, "comm");
  EXPECT_EQ((*x["F"])["ts"].num, 0.0);
  EXPECT_EQ((*x["F"])["dur"].num, 4.0);  // microseconds
  EXPECT_EQ((*x["F"])["args"]["mb2"].num, -1);
  const int ep1 = int((*x["dispatch"])["tid"].num), ep2 = int((*x["combine"])["tid"].num);
  EXPECT_NE(ep1, ep2);
  EXPECT_EQ(thread.at({0, ep1}), "ep");
  EXPECT_EQ(thread.at({0, ep2}), "ep 2");
  // the send's peer is pipeline rank 1 = world rank 2; the flow joins the two ends
  EXPECT_EQ((*x["send activation"])["args"]["peer"].num, 2);
  EXPECT_EQ((*x["recv activation"])["args"]["peer"].num, 0);
  const std::vector<const Json*> s = of(doc, "s"), f = of(doc, "f");
  ASSERT_EQ(s.size(), 1u);
  ASSERT_EQ(f.size(), 1u);
  EXPECT_EQ((*s[0])["id"].num, (*f[0])["id"].num);
  EXPECT_EQ((*s[0])["pid"].num, 0);
  EXPECT_EQ((*f[0])["pid"].num, 2);
  EXPECT_EQ((*f[0])["bp"].str, "e");
  EXPECT_EQ((*s[0])["tid"].num, (*x["send activation"])["tid"].num);
  EXPECT_EQ((*f[0])["tid"].num, (*x["recv activation"])["tid"].num);
  std::remove(path.c_str());
}

TEST(TraceWriter, RepeatedMessagesGetDistinctFlows) {
  // the same (micro-batch, stage) message twice (two traced steps): two flows, matched in order
  Process a{0, "a", {}, 0, {}}, b{1, "b", {}, 0, {}};
  for (int k = 0; k < 2; ++k) {
    const int64_t t = 10000 * (k + 1);
    a.events.push_back(
        {t, t + 100, "send gradient", "mb,stage,peer,bytes", {1, 1, 1, 8}, Track::PpSend});
    b.events.push_back(
        {t + 50, t + 300, "recv gradient", "mb,stage,peer,bytes", {1, 1, 0, 8}, Track::PpRecv});
  }
  const std::string path = temp_path("trace_repeat.json");
  write_chrome_trace(path, {format_process(a, 0), format_process(b, 0)}, "");
  const Json doc = parse_file(path);
  const std::vector<const Json*> s = of(doc, "s"), f = of(doc, "f");
  ASSERT_EQ(s.size(), 2u);
  ASSERT_EQ(f.size(), 2u);
  EXPECT_NE((*s[0])["id"].num, (*s[1])["id"].num);
  for (int k = 0; k < 2; ++k) {  // in time order on both sides
    EXPECT_EQ((*s[k])["id"].num, (*f[k])["id"].num);
    EXPECT_LT((*s[k])["ts"].num, (*f[k])["ts"].num);
  }
  std::remove(path.c_str());
}

TEST(TraceWriter, UnwritablePathThrows) {
  EXPECT_THROW(write_chrome_trace("/nonexistent-dir/trace.json", {}, ""), std::runtime_error);
}

}  // namespace
}  // namespace moetron::trace
