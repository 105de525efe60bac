#pragma once
// Shared by the libFuzzer harnesses: a check that turns a broken property into a finding, and
// the input size every harness accepts at most.

#include <cstddef>
#include <cstdio>
#include <cstdlib>

namespace flowreg::fuzz {

// Inputs above this are ignored: larger ones only slow the search down (and every parser under
// test caps its input far below what libFuzzer would generate).
inline constexpr std::size_t kMaxInputBytes = 64 * 1024;

[[noreturn]] inline void property_failed(const char* what, const char* file, int line) {
  std::fprintf(stderr, "%s:%d: property does not hold: %s\n", file, line, what);
  std::abort();
}

}  // namespace flowreg::fuzz

// Like assert(), but also in builds with NDEBUG: libFuzzer reports the abort as a crash and keeps
// the input.
#define FUZZ_CHECK(condition)         \
  ((condition) ? static_cast<void>(0) \
               : ::flowreg::fuzz::property_failed(#condition, __FILE__, __LINE__))
