// Pool<E>: reusable entries — the pipeline executor's micro-batch states, gradient sets and
// message buffers (parallel/pipeline.h), the local dispatcher's wires (model/dispatch.h). An entry
// is taken, used and given back; a deque keeps entries where they are, so a taken entry's address
// holds while others are made. Free entries keep their memory; trim() frees idle entries' memory
// (they become bare) and a bare entry fills again on its next use.
// Entries whose buffers depend on what they serve (a micro-batch state of one pipeline stage or
// another: other layers, the head, an MTP module) are taken with take_for(use): an entry that
// served another use is emptied first, so it never holds the buffers of two uses at once — what
// the memory plan counts (trainer/plan.h: a state at its own stage's bytes).
#pragma once

#include <algorithm>
#include <deque>
#include <iterator>
#include <utility>
#include <vector>

namespace moetron {

template <class E>
struct Pool {
  std::deque<E> items;
  std::vector<int> free, bare;
  std::vector<int> uses;  // take_for's: what each entry last served (-1: nothing yet)
  E& operator[](int i) { return items[static_cast<size_t>(i)]; }
  // A free entry, else a bare one, else a new one made from `make` (E's constructor arguments).
  template <class... A>
  int take(A&&... make) {
    for (std::vector<int>* l : {&free, &bare})
      if (!l->empty()) {
        const int i = l->back();
        l->pop_back();
        return i;
      }
    items.emplace_back(std::forward<A>(make)...);
    return static_cast<int>(items.size()) - 1;
  }
  // A free entry that last served `use`, else the entry take() gives, emptied: a free one that
  // served another use (its memory freed, to fill again for this one: the entries held stay
  // take()'s), a bare one, or a new one.
  int take_for(int use) {
    const auto same =
        std::find_if(free.rbegin(), free.rend(), [&](int j) { return uses[j] == use; });
    int i = -1;
    if (same != free.rend()) {
      i = *same;
      free.erase(std::next(same).base());
    } else {
      i = take();
      items[static_cast<size_t>(i)] = E{};
    }
    uses.resize(items.size(), -1);
    uses[static_cast<size_t>(i)] = use;
    return i;
  }
  void give(int i) { free.push_back(i); }
  int held() const { return static_cast<int>(items.size() - bare.size()); }
  void trim(int keep) {  // frees idle entries while more than `keep` hold memory
    while (held() > keep && !free.empty()) {
      items[static_cast<size_t>(free.back())] = E{};
      bare.push_back(free.back());
      free.pop_back();
    }
  }
};

}  // namespace moetron
