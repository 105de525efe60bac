// Linked into every harness: silences logging, so that a run prints libFuzzer's progress and
// findings only, never a line per input.

#include <spdlog/spdlog.h>

extern "C" int LLVMFuzzerInitialize(int* /*argc*/, char*** /*argv*/) {
  spdlog::set_level(spdlog::level::off);
  return 0;
}
