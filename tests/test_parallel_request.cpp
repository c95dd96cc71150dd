// parallel/comm.h's Request: the completion step runs once, whichever of wait() and test() finds
// the operation complete; a pending Request is waited for when it is dropped or assigned over;
// and a dropped Request whose wait fails while an exception is already unwinding the stack (a
// failed communicator fails every wait) lets that first exception through instead of ending the
// process in std::terminate.
#include <gtest/gtest.h>

#include <stdexcept>

#include "parallel/comm.h"

namespace moetron {
namespace {

TEST(Request, CompletesOnceWhicheverFindsItDone) {
  int polls = 0, completions = 0;
  Request r([&](bool block) {
    ++polls;
    if (!block && polls < 3) return false;
    ++completions;
    return true;
  });
  EXPECT_FALSE(r.test());
  EXPECT_FALSE(r.test());
  EXPECT_TRUE(r.test());
  EXPECT_TRUE(r.test());
  r.wait();
  EXPECT_EQ(polls, 3);
  EXPECT_EQ(completions, 1);
  EXPECT_TRUE(Request().test());
}

TEST(Request, DroppingOrAssigningOverAPendingRequestWaitsForIt) {
  int waited = 0;
  {
    Request r([&](bool block) { return block && ++waited > 0; });
    Request other([&](bool block) { return block && ++waited > 0; });
    r = std::move(other);  // the first is waited for here
    EXPECT_EQ(waited, 1);
  }  // the second here
  EXPECT_EQ(waited, 2);
}

TEST(Request, AFailedWaitWhileAnErrorUnwindsLetsTheFirstErrorThrough) {
  int waited = 0;
  const auto failing = [&](bool) -> bool {
    ++waited;
    throw std::runtime_error("the communicator has failed");
  };
  try {
    Request r(failing);
    throw std::logic_error("the first error");
  } catch (const std::logic_error& e) {
    EXPECT_STREQ(e.what(), "the first error");
  }
  EXPECT_EQ(waited, 1);  // it was waited for, and its failure dropped
  // with nothing unwinding, a failed wait throws from wait() as before
  Request r(failing);
  EXPECT_THROW(r.wait(), std::runtime_error);
}

}  // namespace
}  // namespace moetron
