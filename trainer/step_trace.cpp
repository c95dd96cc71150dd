// run.trace_steps in the training loop (see step_trace.h).
#include "trainer/step_trace.h"

#include <algorithm>
#include <numeric>
#include <ostream>
#include <string>

#include "parallel/trace.h"
#include "trainer/run.h"

namespace moetron {

StepTrace::StepTrace(const Run& r) : steps_(r.cfg.run.trace_steps) {
  for (int64_t s : steps_)
    if (s > r.state.step) {
      first_ = s;
      break;
    }
  if (first_ == 0) return;
  trace::recorder().reserve(kCapacity);
  trace::recorder().set_active(traced(r.state.step + 1));
}

bool StepTrace::traced(int64_t step) const {
  return std::binary_search(steps_.begin(), steps_.end(), step);
}

void StepTrace::step_done(int64_t step, const StepClock& clock, double eval_seconds) {
  if (first_ == 0) return;
  const int64_t t1 = trace::ns(clock.end());
  trace::span(trace::Track::Step, "step", trace::ns(clock.begin()), t1, "step,eval_us", step,
              static_cast<int64_t>(eval_seconds * 1e6));
  trace::recorder().set_active(traced(step + 1) && !written_);
  trace::span_since(trace::Track::Host, "step accounting", t1);
}

bool StepTrace::due(int64_t step, bool last) const {
  return first_ > 0 && !written_ && step >= first_ && (step >= steps_.back() || last);
}

void StepTrace::write(Run& r, std::ostream& log) {
  const RankGrid& g = r.grid;
  std::vector<int> pp_world;
  for (int p = 0; p < g.pp; ++p) pp_world.push_back(g.rank_of(p, g.dp_rank));
  const std::string label = "rank " + std::to_string(r.world->rank()) + " (pp " +
                            std::to_string(g.pp_rank) + ", dp " + std::to_string(g.dp_rank) +
                            ", ep " + std::to_string(g.ep_rank) + ")";
  const std::string path = r.cfg.run.dir + "/trace.json";
  const trace::Written w = trace::write_merged(*r.world, path, label, pp_world);
  written_ = true;
  if (!r.rank0) return;
  const int64_t events = std::accumulate(w.events.begin(), w.events.end(), int64_t{0});
  const int64_t dropped = std::accumulate(w.dropped.begin(), w.dropped.end(), int64_t{0});
  log << "moetron: trace of " << steps_.size() << " step(s) written to " << path << " (" << events
      << " events on " << w.events.size() << " ranks, " << dropped
      << " dropped; open it in ui.perfetto.dev)\n";
  if (dropped > 0)
    log << "moetron: warning: the trace dropped " << dropped << " events: a rank's buffer holds "
        << kCapacity << "; trace fewer steps (run.trace_steps)\n";
}

}  // namespace moetron
