// Plugin loading benchmarks (a bench command; prints its figures).
//
//   plugin_bench scan [N]      time to scan and register N plugins (default 100), with and without
//                              the child-process inspection
//   plugin_bench latency [K]   time from a plugin file landing in a watched directory (rename) to
//                              its flows being visible to lookups, K samples (default 40), p50/p99,
//                              with a 50 ms and the default 500 ms debounce
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <vector>

#include "flowreg/plugins.hpp"

using namespace flowreg;
using namespace std::chrono_literals;
namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;

namespace {

std::string read_all(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

// A copy of the bench plugin made unique by a trailer after the end of the ELF image.
void write_variant(const std::string& bytes, const fs::path& target, std::size_t n) {
  std::ofstream out(target, std::ios::binary);
  out << bytes << "variant-" << n << "-" << getpid() << "-"
      << Clock::now().time_since_epoch().count();
  out.close();
  fs::permissions(target, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                              fs::perms::others_read);
}

fs::path fresh_dir(const char* name) {
  const fs::path dir = fs::temp_directory_path() /
                       (std::string("flowreg_bench_") + name + "_" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir / "plugins");
  fs::permissions(dir / "plugins", fs::perms::owner_all | fs::perms::group_read |
                                       fs::perms::group_exec | fs::perms::others_read |
                                       fs::perms::others_exec);
  return dir;
}

PluginLoaderOptions options_for(const fs::path& dir, bool inspect,
                                std::chrono::milliseconds debounce) {
  PluginLoaderOptions o;
  o.settings.dir = dir / "plugins";
  o.cache_dir = dir / "cache";
  o.inspector = inspect ? fs::path(FLOWREG_BINARY) : fs::path();
  o.debounce = debounce;
  o.rescan_interval = 0ms;
  return o;
}

int bench_scan(std::size_t n) {
  const std::string bytes = read_all(BENCH_PLUGIN);
  for (bool inspect : {true, false}) {
    const fs::path dir = fresh_dir("scan");
    for (std::size_t i = 0; i < n; ++i)
      write_variant(bytes, dir / "plugins" / ("plugin_" + std::to_string(i) + ".so"), i);
    FlowRegistry registry;
    PluginLoader loader(registry, options_for(dir, inspect, 500ms));
    const auto start = Clock::now();
    auto scanned = loader.scan();
    const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
    std::size_t loaded = 0;
    for (const auto& p : *scanned) loaded += p.status == PluginStatus::loaded;
    std::printf(
        "scan: %zu plugins (%zu loaded, %zu flows registered), inspection %s: %.3f s "
        "(%.2f ms per plugin)\n",
        n, loaded, registry.size(), inspect ? "on " : "off", seconds,
        seconds * 1000.0 / static_cast<double>(n));
    fs::remove_all(dir);
    if (loaded != n) return 1;
  }
  return 0;
}

int bench_latency(std::size_t samples, std::chrono::milliseconds debounce) {
  const std::string bytes = read_all(BENCH_PLUGIN);
  const fs::path dir = fresh_dir("latency");
  FlowRegistry registry;
  PluginLoader loader(registry, options_for(dir, true, debounce));
  std::mutex mutex;
  std::condition_variable cv;
  std::size_t registered = 0;
  auto subscription = registry.subscribe([&](const ModuleEvent& e) {
    if (e.kind != ModuleEvent::Kind::registered) return;
    std::lock_guard lock(mutex);
    ++registered;
    cv.notify_all();
  });
  if (!loader.watch()) return 1;
  std::vector<double> ms;
  for (std::size_t i = 0; i < samples; ++i) {
    const fs::path tmp = dir / "plugins" / ".incoming.tmp";
    write_variant(bytes, tmp, i);
    std::unique_lock lock(mutex);
    const std::size_t before = registered;
    const auto start = Clock::now();
    fs::rename(tmp, dir / "plugins" / ("p" + std::to_string(i) + ".so"));
    if (!cv.wait_for(lock, 60s, [&] { return registered > before; })) {
      std::printf("latency: sample %zu never became visible\n", i);
      return 1;
    }
    ms.push_back(std::chrono::duration<double, std::milli>(Clock::now() - start).count());
  }
  loader.stop();
  std::sort(ms.begin(), ms.end());
  auto pct = [&](double p) {
    return ms[std::min(ms.size() - 1,
                       static_cast<std::size_t>(p * static_cast<double>(ms.size())))];
  };
  std::printf(
      "latency: file renamed into the directory -> flows visible, debounce %lld ms, %zu "
      "samples: p50 %.1f ms, p99 %.1f ms, min %.1f ms, max %.1f ms\n",
      static_cast<long long>(debounce.count()), ms.size(), pct(0.50), pct(0.99), ms.front(),
      ms.back());
  fs::remove_all(dir);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  spdlog::set_level(spdlog::level::warn);
  const std::string what = argc > 1 ? argv[1] : "all";
  const std::size_t n = argc > 2 ? std::stoul(argv[2]) : 0;
  int status = 0;
  if (what == "scan" || what == "all") status |= bench_scan(n ? n : 100);
  if (what == "latency" || what == "all") {
    status |= bench_latency(n ? n : 40, 50ms);
    status |= bench_latency(n ? n : 20, 500ms);
  }
  return status;
}
