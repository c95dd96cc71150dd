// bench_schedules: the pipeline bubble table (SPEC-deepseek-v3 §4.7), computed by replaying each
// generated schedule under the cost model of parallel/schedule.h — the same op lists the
// executor runs, no separate formula code.
//
// Costs, per chunk of L/PP layers: F = 1, B = 2 (full backward: input 1 + weight 1), W = 1, and
// F&B = 3 (no overlap gain) or 2 (the pair's all-to-all fully hidden and its compute 2/3); p2p
// latency 0. DualPipeV runs on PP devices too, with 2*PP stages of half the layers, so its chunk
// costs are halved: every row does the same work per device.
// Columns:
//   bubble     max over ranks of idle time, in units of F (the §4.7 "Bubble" column)
//   formula    the §4.7 expression for it (DualPipeV: PP = 2*devices stages, halved costs)
//   frac       sum of idle / (ranks * makespan), an executor that waits only for its receives
//   strict     the same with the DualPipe reference's commit (every message before each compute)
//   peak       activations in flight, max over ranks, in chunks (= the validated bound)
//   act        peak activation memory per device relative to 1F1B's rank 0 (PP chunks of L/PP)
// Usage: bench_schedules          (markdown table on stdout)
//        bench_schedules PP C F B W FB
//                                  one layout under given op costs (e.g. measured ones, in
//                                  seconds: metrics.jsonl's op means): makespan, bubble and idle
//                                  fraction of each schedule, DualPipeV's chunk costs halved
#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "parallel/schedule.h"

using namespace moetron::pipeline;

namespace {

double formula(const std::string& kind, int pp, const Costs& c) {
  if (kind == "1f1b") return (pp - 1) * (c.F + c.B);
  if (kind == "zb1p") return (pp - 1) * (c.F + c.B - 2 * c.W);
  const int stages = kind == "dualpipev" ? 2 * pp : pp;
  return (stages / 2.0 - 1) * (c.FB + c.B - 3 * c.W);
}

}  // namespace

// One layout, measured costs: each schedule's replay.
int one_layout(int pp, int C, const Costs& measured) {
  std::printf("| schedule | PP | micro-batches | makespan | bubble | idle frac |\n");
  std::printf("|---|---|---|---|---|---|\n");
  for (const std::string kind : {"1f1b", "zb1p", "dualpipe", "dualpipev"}) {
    const double scale = kind == "dualpipev" ? 0.5 : 1.0;
    const Costs c{measured.F * scale, measured.B * scale, measured.W * scale, measured.FB * scale,
                  0};
    const SimResult r = simulate(make_schedule(kind, pp, C), c);
    std::printf("| %s | %d | %d | %.3f | %.3f | %.3f |\n", kind.c_str(), pp, C, r.makespan,
                r.bubble, r.bubble_fraction);
  }
  return 0;
}

int main(int argc, char** argv) {
  if (argc == 7)
    return one_layout(
        std::atoi(argv[1]), std::atoi(argv[2]),
        Costs{std::atof(argv[3]), std::atof(argv[4]), std::atof(argv[5]), std::atof(argv[6]), 0});
  if (argc != 1) {
    std::fprintf(stderr, "usage: bench_schedules [PP C F B W FB]\n");
    return 2;
  }
  std::printf(
      "| schedule | PP | micro-batches | F&B | bubble | formula | frac | strict | peak | act |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|---|\n");
  for (int pp : {4, 8})
    for (int mult : {2, 4, 8})
      for (double fb : {3.0, 2.0})
        for (const std::string kind : {"1f1b", "zb1p", "dualpipe", "dualpipev"}) {
          const bool v = kind == "dualpipev";
          if (fb != 3.0 && (kind == "1f1b" || kind == "zb1p")) continue;  // no pairs
          const int C = mult * pp;
          const double scale = v ? 0.5 : 1.0;  // DualPipeV chunks hold half the layers
          const Costs c{1 * scale, 2 * scale, 1 * scale, fb * scale, 0};
          const Schedule s = make_schedule(kind, pp, C);
          const SimResult r = simulate(s, c);
          const SimResult strict = simulate(s, c, /*strict_commit=*/true);
          const std::vector<int> peak = peak_in_flight(s);
          const int pk = *std::max_element(peak.begin(), peak.end());
          std::printf(
              "| %s | %d | %d | %s | %.2f | %.2f | %.3f | %.3f | %d | %.3f |\n", kind.c_str(), pp,
              C, kind == "1f1b" || kind == "zb1p" ? "-" : (fb == 3.0 ? "F+B" : "2F"), r.bubble,
              formula(kind, pp, c), r.bubble_fraction, strict.bubble_fraction, pk, pk * scale / pp);
        }
  return 0;
}
