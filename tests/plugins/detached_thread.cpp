// Starts a thread in its constructor that runs the plugin's code for its first five seconds and
// that nobody joins: unmapping this plugin meanwhile (a replacement, the end of the process) makes
// that thread return into unmapped code.
#include <atomic>
#include <chrono>
#include <flowreg/sdk.hpp>
#include <thread>

namespace {
std::atomic<unsigned long> ticks{0};
void tick() {
  const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(5);
  while (std::chrono::steady_clock::now() < end) {
    ticks.fetch_add(1, std::memory_order_relaxed);
    std::this_thread::sleep_for(std::chrono::microseconds(20));
  }
}
struct StartThread {
  StartThread() { std::thread(tick).detach(); }
} start_thread;
}  // namespace

FLOWREG_PLUGIN(detached_thread) {
  plugin.handler("ticks", [](const flowreg::sdk::json&) {
    return flowreg::sdk::json(ticks.load(std::memory_order_relaxed));
  });
  plugin.flow("detached_thread_flow").step("only", "ticks");
}
