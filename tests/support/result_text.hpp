#pragma once
// The message of a check on a Result: its error, or nothing while it holds a value. Write
// REQUIRE_MESSAGE(r, failure_text(r)), not REQUIRE_MESSAGE(r, r.error().format()): doctest
// also evaluates the message of a passing check when it reports successes (`-s`), and error() of
// a Result that holds a value is undefined behaviour (it threw std::bad_alloc and aborted the
// run).
#include <string>

#include "flowreg/error.hpp"

namespace flowreg::testing {

template <class T>
std::string failure_text(const Result<T>& r) {
  return r ? std::string() : r.error().format();
}

}  // namespace flowreg::testing
