// Writes several lines to stderr, one of them not UTF-8 (a Latin-1 byte), then aborts while being
// loaded: its quarantine record must keep the whole report.
#include <cstdio>
#include <cstdlib>
#include <flowreg/sdk.hpp>

namespace {
struct Noisy {
  Noisy() {
    std::fputs("noisy: first line\nnoisy: second line, caf\xe9\nnoisy: third line\n", stderr);
    std::fflush(stderr);
    std::abort();
  }
} noisy;
}  // namespace

FLOWREG_PLUGIN(noisy_crash) {}
