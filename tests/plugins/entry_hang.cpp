// Never returns from its entry point.
#include <chrono>
#include <flowreg/sdk.hpp>
#include <thread>

FLOWREG_PLUGIN(hang) {
  for (;;) std::this_thread::sleep_for(std::chrono::seconds(1));
}
