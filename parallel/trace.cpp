// The trace recorder's allocation and the Chrome Trace Event writer (see trace.h): nesting and
// lanes per track, flow ids from both ends of a PP message, the clock offsets and the gather.
#include "parallel/trace.h"

#include <unistd.h>

#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <stdexcept>
#include <tuple>

#include "parallel/comm.h"

namespace moetron::trace {

const char* track_name(Track t) {
  static const char* const names[kTracks] = {"step",    "compute",   "pp wait", "progress",
                                             "data",    "optimizer", "host",    "pp send",
                                             "pp recv", "ep",        "dp"};
  return names[static_cast<int>(t)];
}

void Recorder::reserve(size_t capacity) {
  active_ = false;
  if (capacity != cap_) buf_ = capacity ? std::make_unique<Event[]>(capacity) : nullptr;
  cap_ = capacity;
  clear();
}

namespace {

std::string us(int64_t t_ns, int64_t origin_ns) {
  char b[40];
  std::snprintf(b, sizeof b, "%.3f", static_cast<double>(t_ns - origin_ns) * 1e-3);
  return b;
}

std::string escaped(const std::string& s) {
  std::string o;
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    if (static_cast<unsigned char>(c) < 0x20) {
      char b[8];
      std::snprintf(b, sizeof b, "\\u%04x", c);
      o += b;
    } else {
      o += c;
    }
  }
  return o;
}

int tid_of(Track t, int lane) { return (static_cast<int>(t) + 1) * 100 + lane; }

std::string args_of(const Event& e, int64_t peer_world) {
  if (!e.keys) return "";
  std::string o = ",\"args\":{";
  const char* k = e.keys;
  for (int i = 0; i < 4 && *k; ++i) {
    const char* comma = std::strchr(k, ',');
    const std::string key(k, comma ? static_cast<size_t>(comma - k) : std::strlen(k));
    const int64_t v = key == "peer" && peer_world >= 0 ? peer_world : e.arg[i];
    o += (i ? ",\"" : "\"") + key + "\":" + std::to_string(v);
    if (!comma) break;
    k = comma + 1;
  }
  return o + "}";
}

bool is_pp(Track t) { return t == Track::PpSend || t == Track::PpRecv; }

// 53 bits of FNV-1a over a PP message's identity (exact in a JSON reader's double).
int64_t flow_id(const std::array<int64_t, 6>& key) {
  uint64_t h = 1469598103934665603ull;
  for (int64_t v : key)
    for (int b = 0; b < 8; ++b)
      h = (h ^ ((static_cast<uint64_t>(v) >> (8 * b)) & 0xff)) * 1099511628211ull;
  return static_cast<int64_t>(h & ((1ull << 53) - 1));
}

// Per event (sorted by track, then start, longest first): its lane on an in-flight track, or
// whether it is top-level (lane 0) or nested (lane -1) on a tiling track.
std::vector<int> lanes_of(const std::vector<Event>& ev) {
  std::vector<int> lane(ev.size(), 0);
  std::vector<int64_t> ends;  // per lane: the end of its last event
  int64_t top_end = std::numeric_limits<int64_t>::min();
  for (size_t i = 0; i < ev.size(); ++i) {
    if (i == 0 || ev[i].track != ev[i - 1].track)
      ends.clear(), top_end = std::numeric_limits<int64_t>::min();
    if (ev[i].track == Track::Step || tiles(ev[i].track)) {
      lane[i] = ev[i].t0 >= top_end ? 0 : -1;
      top_end = std::max(top_end, ev[i].t1);
      continue;
    }
    size_t l = 0;
    while (l < ends.size() && ends[l] > ev[i].t0) ++l;
    if (l == ends.size()) ends.push_back(0);
    ends[l] = ev[i].t1;
    lane[i] = static_cast<int>(l);
  }
  return lane;
}

std::string metadata(const Process& p, const std::vector<std::pair<Track, int>>& threads) {
  const std::string pid = std::to_string(p.pid);
  std::string o = ",\n{\"name\":\"process_name\",\"ph\":\"M\",\"pid\":" + pid +
                  ",\"args\":{\"name\":\"" + escaped(p.label) + "\"}}";
  o += ",\n{\"name\":\"process_sort_index\",\"ph\":\"M\",\"pid\":" + pid +
       ",\"args\":{\"sort_index\":" + pid + "}}";
  for (const auto& [t, l] : threads) {
    const std::string tid = std::to_string(tid_of(t, l));
    std::string name = track_name(t);
    if (l) name += ' ', name += std::to_string(l + 1);
    o += ",\n{\"name\":\"thread_name\",\"ph\":\"M\",\"pid\":" + pid + ",\"tid\":" + tid +
         ",\"args\":{\"name\":\"" + name + "\"}}";
    o += ",\n{\"name\":\"thread_sort_index\",\"ph\":\"M\",\"pid\":" + pid + ",\"tid\":" + tid +
         ",\"args\":{\"sort_index\":" + tid + "}}";
  }
  return o;
}

// The flow event of a PP message's end: "s" at the send's post, "f" just before the receive's
// completion (binding to the enclosing slice). Keyed by sender, receiver, kind, micro-batch,
// producing stage and how many such messages came before it on this rank.
std::string flow(const Process& p, const Event& e, int tid, int64_t peer, int occurrence,
                 int64_t origin) {
  const bool send = e.track == Track::PpSend;
  const int64_t grad = std::strstr(e.name, "gradient") != nullptr;
  const int64_t from = send ? p.pid : peer, to = send ? peer : p.pid;
  const int64_t id = flow_id({from, to, grad, e.arg[0], e.arg[1], occurrence});
  const int64_t ts = send ? e.t0 : std::max(e.t0, e.t1 - 1);
  return ",\n{\"name\":\"pp " + std::string(grad ? "gradient" : "activation") +
         "\",\"cat\":\"pp\",\"ph\":\"" + (send ? "s" : "f\",\"bp\":\"e") +
         "\",\"id\":" + std::to_string(id) + ",\"pid\":" + std::to_string(p.pid) +
         ",\"tid\":" + std::to_string(tid) + ",\"ts\":" + us(ts, origin) + "}";
}

}  // namespace

std::string format_process(const Process& p, int64_t origin_ns) {
  // by track, start, longest first; ties in recording order (a stable order by index: std::sort,
  // as GCC 12's std::stable_sort buffer trips ASan's alloc-dealloc check)
  std::vector<size_t> order(p.events.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::sort(order.begin(), order.end(), [&](size_t i, size_t j) {
    const Event &a = p.events[i], &b = p.events[j];
    return std::tie(a.track, a.t0, b.t1, i) < std::tie(b.track, b.t0, a.t1, j);
  });
  std::vector<Event> ev;
  ev.reserve(order.size());
  for (size_t i : order) ev.push_back(p.events[i]);
  const std::vector<int> lane = lanes_of(ev);
  std::vector<std::pair<Track, int>> threads;
  std::map<std::tuple<int, int64_t, bool, int64_t, int64_t>, int> seen;  // PP messages so far
  std::string body;
  for (size_t i = 0; i < ev.size(); ++i) {
    const Event& e = ev[i];
    const int l = std::max(lane[i], 0);
    if (std::find(threads.begin(), threads.end(), std::make_pair(e.track, l)) == threads.end())
      threads.emplace_back(e.track, l);
    const char* cat = e.track == Track::Step ? "step"
                      : !tiles(e.track)      ? "comm"
                      : lane[i] == 0         ? "part"
                                             : "detail";
    int64_t peer = -1;
    if (is_pp(e.track))
      peer = p.pp_world.empty() ? e.arg[2] : p.pp_world.at(static_cast<size_t>(e.arg[2]));
    const int tid = tid_of(e.track, l);
    body += ",\n{\"name\":\"" + escaped(e.name ? e.name : "?") + "\",\"cat\":\"" + cat +
            "\",\"ph\":\"X\",\"pid\":" + std::to_string(p.pid) + ",\"tid\":" + std::to_string(tid) +
            ",\"ts\":" + us(e.t0, origin_ns) + ",\"dur\":" + us(e.t1, e.t0) + args_of(e, peer) +
            "}";
    if (is_pp(e.track)) {
      const bool grad = std::strstr(e.name, "gradient") != nullptr;
      const int n = seen[{static_cast<int>(e.track), peer, grad, e.arg[0], e.arg[1]}]++;
      body += flow(p, e, tid, peer, n, origin_ns);
    }
  }
  std::sort(threads.begin(), threads.end());
  return metadata(p, threads) + body;
}

void write_chrome_trace(const std::string& path, const std::vector<std::string>& fragments,
                        const std::string& other) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f << "{\"traceEvents\":[";
  bool first = true;
  for (const std::string& s : fragments) {
    if (s.size() < 2) continue;
    f.write(s.data() + (first ? 2 : 0), static_cast<std::streamsize>(s.size() - (first ? 2 : 0)));
    first = false;
  }
  f << "\n],\"displayTimeUnit\":\"ms\",\"otherData\":{" << other << "}}\n";
  f.flush();
  if (!f) throw std::runtime_error(path + ": writing the trace failed");
}

namespace {

constexpr int kClockTag = 31001, kFragmentTag = 31002;

// This rank's steady clock minus rank 0's: 0 on rank 0's host (one CLOCK_MONOTONIC); elsewhere
// the minimum-round-trip sample of 8 ping-pongs with rank 0 (Cristian).
int64_t clock_offset(Communicator& world) {
  const int W = world.size(), me = world.rank();
  std::array<char, 64> host{};
  gethostname(host.data(), host.size() - 1);
  std::vector<char> hosts(host.size() * static_cast<size_t>(W));
  world.all_gather(host.data(), hosts.data(), host.size(), CommDType::Bytes);
  auto remote = [&](int r) {
    return std::strncmp(hosts.data(), hosts.data() + host.size() * static_cast<size_t>(r),
                        host.size()) != 0;
  };
  int64_t offset = 0;
  for (int r = 1; r < W; ++r) {
    if (!remote(r)) continue;
    int64_t best_rtt = std::numeric_limits<int64_t>::max();
    for (int i = 0; i < 8; ++i) {
      int64_t t = 0;
      if (me == 0) {
        world.recv(&t, sizeof t, r, kClockTag);
        t = now_ns();
        world.send(&t, sizeof t, r, kClockTag);
      } else if (me == r) {
        const int64_t a = now_ns();
        world.send(&t, sizeof t, 0, kClockTag);
        world.recv(&t, sizeof t, 0, kClockTag);
        const int64_t b = now_ns();
        if (b - a < best_rtt) best_rtt = b - a, offset = (a + b) / 2 - t;
      }
    }
  }
  return offset;
}

std::string json_list(const std::vector<int64_t>& v) {
  std::string o = "[";
  for (size_t i = 0; i < v.size(); ++i) {
    if (i) o += ',';
    o += std::to_string(v[i]);
  }
  return o + "]";
}

}  // namespace

Written write_merged(Communicator& world, const std::string& path, const std::string& label,
                     const std::vector<int>& pp_world) {
  Recorder& rec = recorder();
  rec.set_active(false);
  const int W = world.size(), me = world.rank();
  const int64_t offset = clock_offset(world);
  Process p{me, label, {}, rec.dropped(), pp_world};
  int64_t first = std::numeric_limits<int64_t>::max();
  for (const Event& e : rec) {
    Event x = e;
    x.t0 -= offset, x.t1 -= offset;
    first = std::min(first, x.t0);
    p.events.push_back(x);
  }
  int64_t neg_origin = -first;  // the earliest event of any rank is time 0
  world.all_reduce(&neg_origin, 1, ReduceOp::Max);
  const std::string mine = format_process(p, -neg_origin);
  const int64_t local[4] = {static_cast<int64_t>(mine.size()), static_cast<int64_t>(rec.size()),
                            rec.dropped(), offset};
  std::vector<int64_t> all(4 * static_cast<size_t>(W));
  world.all_gather(local, all.data(), 4, CommDType::I64);
  Written w;
  std::vector<int64_t> offsets;
  for (int r = 0; r < W; ++r) {
    w.events.push_back(all[4 * r + 1]), w.dropped.push_back(all[4 * r + 2]);
    offsets.push_back(all[4 * r + 3]);
  }
  std::string error;
  if (me != 0) {
    world.send(mine.data(), mine.size(), 0, kFragmentTag);
  } else {
    std::vector<std::string> fragments{mine};
    for (int r = 1; r < W; ++r) {
      std::string s(static_cast<size_t>(all[4 * r]), '\0');
      world.recv(s.data(), s.size(), r, kFragmentTag);
      fragments.push_back(std::move(s));
    }
    try {
      write_chrome_trace(path, fragments,
                         "\"ranks\":" + std::to_string(W) +
                             ",\"capacity_per_rank\":" + std::to_string(rec.capacity()) +
                             ",\"events_per_rank\":" + json_list(w.events) +
                             ",\"dropped_per_rank\":" + json_list(w.dropped) +
                             ",\"clock_offset_ns\":" + json_list(offsets));
    } catch (const std::exception& e) {
      error = e.what();
    }
  }
  rec.clear();
  int64_t failed = !error.empty();  // every rank returns or throws together
  world.all_reduce(&failed, 1, ReduceOp::Max);
  if (failed) throw std::runtime_error(error.empty() ? "rank 0 could not write " + path : error);
  return w;
}

}  // namespace moetron::trace
