// Pool<E>: reusable entries — the pipeline executor's micro-batch states, gradient sets and
// message buffers (parallel/pipeline.h), the local dispatcher's wires (model/dispatch.h). An entry
// is taken, used and given back; a deque keeps entries where they are, so a taken entry's address
// holds while others are made. Free entries keep their memory; trim() frees idle entries' memory
// (they become bare) and a bare entry fills again on its next use.
#pragma once

#include <deque>
#include <utility>
#include <vector>

namespace moetron {

template <class E>
struct Pool {
  std::deque<E> items;
  std::vector<int> free, bare;
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
