#pragma once
// A drop-in directory and plugin cache of their own for a plugin test, with the fixtures of
// tests/plugins copied in (tests only).
#include <doctest/doctest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "flowreg/plugins.hpp"
#include "support/result_text.hpp"

namespace flowreg::test {

namespace fs = std::filesystem;
using namespace std::chrono_literals;

inline const fs::path kFixtures = FLOWREG_FIXTURE_DIR;

inline std::int64_t ctime_ns(const fs::path& file) {
  struct stat st {};
  REQUIRE(stat(file.c_str(), &st) == 0);
  return static_cast<std::int64_t>(st.st_ctim.tv_sec) * 1'000'000'000 + st.st_ctim.tv_nsec;
}

// A drop-in directory (0755) and a plugin cache of their own under a fresh temporary root,
// removed afterwards. `settings` (its dir is set here), the watcher's debounce and the trusted uid
// go to every loader the sandbox makes.
struct Sandbox {
  fs::path root, dir, cache;
  FlowRegistry registry;
  std::unique_ptr<PluginLoader> loader;
  fs::path last_added;

  explicit Sandbox(PluginSettings settings = {}, std::chrono::milliseconds debounce = 50ms,
                   long trusted_uid = -1)
      : settings_(std::move(settings)), debounce_(debounce), trusted_uid_(trusted_uid) {
    char tmpl[] = "/tmp/flowreg_plugin_test_XXXXXX";
    root = mkdtemp(tmpl);
    dir = root / "plugins.d";
    cache = root / "cache";
    fs::create_directory(dir);
    for (const auto& d : {root, dir})
      fs::permissions(d, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                             fs::perms::others_read | fs::perms::others_exec);
    restart();
  }
  ~Sandbox() {
    loader.reset();
    std::error_code ec;
    for (const auto& e : fs::recursive_directory_iterator(root, ec))
      fs::permissions(e.path(), fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(root, ec);
  }
  Sandbox(const Sandbox&) = delete;
  Sandbox& operator=(const Sandbox&) = delete;

  PluginLoaderOptions options() const {
    PluginLoaderOptions o;
    o.settings = settings_;
    o.settings.dir = dir;
    o.settings.scan_timeout = 5s;
    o.cache_dir = cache;
    o.inspector = FLOWREG_BINARY;
    o.debounce = debounce_;
    o.rescan_interval = 0ms;
    o.trusted_uid = trusted_uid_;
    return o;
  }

  // A fresh loader and registry on the same directory and cache: what a restart sees.
  void restart() {
    loader.reset();
    for (const auto& m : registry.modules()) (void)registry.unregister_module(m);
    loader = std::make_unique<PluginLoader>(registry, options());
  }

  // Copies a fixture into the directory. Each file added gets a later inode change time than the
  // one added before it (timestamps are coarse: wait for the clock to move on).
  fs::path add(const std::string& fixture, std::string name = {}) {
    if (name.empty()) name = fixture + ".so";
    const fs::path target = dir / name;
    const auto perms = fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                       fs::perms::others_read;
    fs::copy_file(kFixtures / (fixture + ".so"), target, fs::copy_options::overwrite_existing);
    fs::permissions(target, perms);
    while (!last_added.empty() && last_added != target && fs::exists(last_added) &&
           ctime_ns(target) <= ctime_ns(last_added)) {
      std::this_thread::sleep_for(5ms);
      fs::permissions(target, perms);  // sets the ctime again
    }
    last_added = target;
    return target;
  }

  std::vector<PluginInfo> scan() {
    auto result = loader->scan();
    REQUIRE_MESSAGE(result, flowreg::testing::failure_text(result));
    return *result;
  }

  // Adds the good plugin, then the fixture (as `name` when given), and scans; returns the
  // fixture's path.
  fs::path scan_beside_good(const std::string& fixture, std::string name = {}) {
    add("good");
    const fs::path added = add(fixture, std::move(name));
    scan();
    return added;
  }

  PluginInfo info_of(const fs::path& file) const {
    for (auto& p : loader->plugins())
      if (p.file == file) return p;
    FAIL("no status for " << file);
    return {};
  }

  std::string module_of(std::string_view slug) const {
    const FlowRef flow = registry.get(slug);
    return flow ? flow->module : std::string("(none)");
  }

  std::vector<std::string> slugs() const {
    std::vector<std::string> out;
    for (const auto& f : registry.list()) out.push_back(f->def.slug);
    return out;
  }

 private:
  PluginSettings settings_;
  std::chrono::milliseconds debounce_;
  long trusted_uid_;
};

}  // namespace flowreg::test
