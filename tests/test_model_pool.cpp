// Pool<E> (model/pool.h), the pipeline executor's pools of micro-batch states and gradient sets:
// take_for(use) never hands out an entry holding another use's contents — it reuses a free entry
// of the same use, else takes what take() would (a free entry of another use, emptied, and only
// that one; a bare one; a new one), so it holds no more entries than take() would.
#include <gtest/gtest.h>

#include <vector>

#include "model/pool.h"

namespace moetron {
namespace {

using Entry = std::vector<int>;  // an entry's "buffers": what it last served, or empty

int take_and_fill(Pool<Entry>& p, int use) {
  const int i = p.take_for(use);
  EXPECT_TRUE(p[i].empty() || p[i] == Entry{use}) << "entry " << i << " taken for " << use;
  p[i] = Entry{use};
  return i;
}

TEST(Pool, TakeForNeverHandsOutAnotherUsesEntry) {
  Pool<Entry> p;
  const int a = take_and_fill(p, 1), b = take_and_fill(p, 1), c = take_and_fill(p, 2);
  p.give(a), p.give(c), p.give(b);    // free: a, c, b
  EXPECT_EQ(take_and_fill(p, 2), c);  // the same use's entry, though not the last given
  EXPECT_EQ(take_and_fill(p, 0), b);  // none of use 0: the last free one is emptied...
  EXPECT_EQ(p[a], Entry{1});          // ...and only that one
  EXPECT_EQ(p.items.size(), 3u);      // no new entry while a free one can serve
  p.give(b);                          // free: a (use 1), b (use 0)
  EXPECT_EQ(take_and_fill(p, 1), a);  // its own use's entry, contents kept
  p.give(a);                          // free: b (use 0), a (use 1)
  p.trim(2);                          // a's contents freed: it becomes bare
  EXPECT_EQ(p.held(), 2);
  EXPECT_EQ(take_and_fill(p, 3), b);  // a free entry (emptied) before the bare one fills...
  EXPECT_EQ(p.held(), 2);             // ...so the entries held stay as many as take()'s
  EXPECT_EQ(take_and_fill(p, 1), a);  // then the bare one
  EXPECT_EQ(take_and_fill(p, 4), 3);  // nothing free: a new entry
  EXPECT_EQ(p.items.size(), 4u);
}

}  // namespace
}  // namespace moetron
