// Crashes while being loaded, in a static initializer: before any flowreg code could intervene.
#include <csignal>
#include <flowreg/sdk.hpp>

namespace {
struct Boom {
  Boom() { std::raise(SIGSEGV); }
} boom;
}  // namespace

FLOWREG_PLUGIN(static_crash) {}
