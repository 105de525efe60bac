#include <dlfcn.h>
#include <doctest/doctest.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <condition_variable>
#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include "flowreg/plugins.hpp"
#include "support/process.hpp"

using namespace flowreg;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

const fs::path kFixtures = FLOWREG_FIXTURE_DIR;

// A fresh drop-in directory (0755) with its own plugin cache, removed afterwards.
struct Sandbox {
  fs::path root, dir, cache;
  FlowRegistry registry;
  std::unique_ptr<PluginLoader> loader;

  explicit Sandbox(PluginSettings settings = {}, std::chrono::milliseconds debounce = 50ms,
                   long trusted_uid = -1) {
    char tmpl[] = "/tmp/flowreg_plugin_test_XXXXXX";
    root = mkdtemp(tmpl);
    dir = root / "plugins.d";
    cache = root / "cache";
    fs::create_directory(dir);
    fs::permissions(root, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                              fs::perms::others_read | fs::perms::others_exec);
    fs::permissions(dir, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                             fs::perms::others_read | fs::perms::others_exec);
    settings.dir = dir;
    settings.scan_timeout = 5s;
    PluginLoaderOptions options;
    options.settings = settings;
    options.cache_dir = cache;
    options.inspector = FLOWREG_BINARY;
    options.debounce = debounce;
    options.rescan_interval = 0ms;
    options.trusted_uid = trusted_uid;
    loader = std::make_unique<PluginLoader>(registry, options);
  }
  ~Sandbox() {
    loader.reset();
    std::error_code ec;
    for (const auto& e : fs::recursive_directory_iterator(root, ec))
      fs::permissions(e.path(), fs::perms::owner_all, fs::perm_options::add, ec);
    fs::remove_all(root, ec);
  }

  fs::path add(const std::string& fixture, std::string name = {}) {
    if (name.empty()) name = fixture + ".so";
    const fs::path target = dir / name;
    fs::copy_file(kFixtures / (fixture + ".so"), target, fs::copy_options::overwrite_existing);
    fs::permissions(target, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                                fs::perms::others_read);
    return target;
  }

  std::vector<PluginInfo> scan() {
    auto result = loader->scan();
    REQUIRE_MESSAGE(result, result.error().format());
    return *result;
  }

  PluginInfo info_of(const fs::path& file) const {
    for (auto& p : loader->plugins())
      if (p.file == file) return p;
    FAIL("no status for " << file);
    return {};
  }

  std::vector<std::string> slugs() const {
    std::vector<std::string> out;
    for (const auto& f : registry.list()) out.push_back(f->def.slug);
    return out;
  }
};

// The common proof for a broken file: the host is still here (this code runs), the good plugin
// next to it loaded, the registry holds exactly the good plugin's flow, and the error names the
// file, the stage and the reason.
void check_rejected(const std::string& fixture_or_name, const fs::path& bad, Sandbox& box,
                    PluginStatus status, const std::string& stage, const std::string& reason) {
  CAPTURE(fixture_or_name);
  const PluginInfo info = box.info_of(bad);
  CHECK(info.status == status);
  REQUIRE(info.error);
  CHECK(info.error->stage == stage);
  CHECK_MESSAGE(info.error->message.find(reason) != std::string::npos, info.error->message);
  CHECK(info.describe_error().starts_with(bad.string() + ": [" + stage + "] "));
  CHECK(box.slugs() == std::vector<std::string>{"good_flow"});
  CHECK(box.info_of(box.dir / "good.so").status == PluginStatus::loaded);
}

void check_fixture(const std::string& fixture, PluginStatus status, const std::string& stage,
                   const std::string& reason) {
  Sandbox box;
  box.add("good");
  const fs::path bad = box.add(fixture);
  box.scan();
  check_rejected(fixture, bad, box, status, stage, reason);
}

}  // namespace

TEST_SUITE("plugin_loader") {
  TEST_CASE("a good plugin loads, registers its flows and exposes its handlers") {
    Sandbox box;
    const fs::path file = box.add("good");
    const auto infos = box.scan();
    REQUIRE(infos.size() == 1);
    const PluginInfo& info = infos[0];
    CHECK(info.status == PluginStatus::loaded);
    CHECK_FALSE(info.error);
    CHECK(info.module == "good");
    CHECK(info.abi == "1.0");
    CHECK(info.sha256.size() == 64);
    CHECK(info.fingerprint.starts_with("flowreg-sdk "));
    CHECK(info.flows == std::vector<std::string>{"good_flow"});
    CHECK(info.handlers.front() == "good.echo");
    const RegisteredFlow* flow = box.registry.find("good_flow");
    REQUIRE(flow);
    CHECK(flow->module == "good");
    CHECK(flow->source == file.string());
    CHECK(flow->def.options.max_attempts == 2);
    CHECK(flow->def.steps[1].handler == "good.echo");
    // The staged copy is private and read-only, named by content hash.
    struct stat st {};
    REQUIRE(stat((box.cache / (info.sha256 + ".so")).c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0444);
    REQUIRE(stat(box.cache.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0700);
  }

  TEST_CASE(
      "handler outcomes cross the boundary: output, retry, permanent, and exceptions caught") {
    Sandbox box;
    box.add("good");
    box.scan();
    auto echo = box.loader->handler("good.echo");
    REQUIRE(echo);
    auto ok = echo.invoke(R"({"a":[1,2]})");
    CHECK(ok.status == HandlerOutcome::Status::ok);
    CHECK(nlohmann::json::parse(ok.body) == nlohmann::json::parse(R"({"a":[1,2]})"));
    auto context = box.loader->handler("good.context")
                       .invoke("null", R"({"run_id":"r1","step":"s","attempt":3,"task_index":7})");
    CHECK(nlohmann::json::parse(context.body) ==
          nlohmann::json::parse(R"({"run_id":"r1","step":"s","attempt":3,"task_index":7})"));
    auto retry = box.loader->handler("good.retry").invoke("{}");
    CHECK(retry.status == HandlerOutcome::Status::retry);
    CHECK(retry.body == "try later");
    auto permanent = box.loader->handler("good.permanent").invoke("{}");
    CHECK(permanent.status == HandlerOutcome::Status::permanent);
    CHECK(permanent.body == "never");
    auto thrown = box.loader->handler("good.throws").invoke("{}");
    CHECK(thrown.status == HandlerOutcome::Status::retry);
    CHECK(thrown.body.find("handler 'good.throws' threw") != std::string::npos);
    CHECK(thrown.body.find("oops") != std::string::npos);
    CHECK(box.loader->handler("good.throws_int").invoke("{}").body.find("non-standard exception") !=
          std::string::npos);
    auto bad_json = echo.invoke("{not json");
    CHECK(bad_json.status == HandlerOutcome::Status::permanent);
    CHECK(bad_json.body.find("JSON error") != std::string::npos);
    CHECK_FALSE(box.loader->handler("good.nope"));
    CHECK_FALSE(box.loader->handler("nomodule.echo"));
    CHECK_FALSE(box.loader->handler("noqualifier"));
  }

  TEST_CASE("a file that is not ELF is rejected before anything loads it") {
    Sandbox box;
    box.add("good");
    const fs::path bad = box.dir / "not_elf.so";
    std::ofstream(bad) << "this is not a shared object\n";
    box.scan();
    check_rejected("not_elf", bad, box, PluginStatus::rejected, "elf", "is not an ELF file");
  }

  TEST_CASE("a truncated plugin does not take the host down") {
    Sandbox box;
    box.add("good");
    const fs::path bad = box.add("other", "truncated.so");
    fs::resize_file(bad, 3000);
    box.scan();
    const PluginInfo info = box.info_of(bad);
    CHECK(info.status != PluginStatus::loaded);
    REQUIRE(info.error);
    // Depending on where the cut falls, the ELF reader refuses it or the inspection child dies.
    CHECK((info.error->stage == "elf" || info.error->stage == "inspect"));
    CHECK(box.slugs() == std::vector<std::string>{"good_flow"});
  }

  TEST_CASE("a shared library without the flowreg_plugin symbol is rejected") {
    check_fixture("no_symbol", PluginStatus::rejected, "symbol",
                  "exports no 'flowreg_plugin' symbol");
  }

  TEST_CASE("a wrong magic value is rejected before any other field is trusted") {
    check_fixture("wrong_magic", PluginStatus::rejected, "abi",
                  "has the magic value 0x0123456789abcdef, not flowreg's 0x31474552574f4c46");
  }

  TEST_CASE("a plugin of the next ABI major is refused, naming both versions") {
    check_fixture("abi_major_next", PluginStatus::rejected, "abi",
                  "was built for plugin ABI 2.0; this flowreg supports ABI 1.0 to 1.0");
  }

  TEST_CASE("a plugin of a newer ABI minor is refused, naming both versions") {
    check_fixture("abi_minor_newer", PluginStatus::rejected, "abi",
                  "was built for plugin ABI 1.1, newer than this flowreg's 1.0");
  }

  TEST_CASE("a definition that throws is rejected with the exception's message") {
    check_fixture("throwing_definition", PluginStatus::rejected, "definition",
                  "definition exploded");
  }

  TEST_CASE("an invalid definition is rejected with every problem") {
    Sandbox box;
    box.add("good");
    const fs::path bad = box.add("invalid_definition");
    box.scan();
    check_rejected("invalid_definition", bad, box, PluginStatus::rejected, "definition",
                   "dependency cycle a -> b -> a");
    CHECK(box.info_of(bad).error->message.find("step 'c' depends on unknown step 'missing'") !=
          std::string::npos);
  }

  TEST_CASE("a slug already taken by another plugin is refused; the first one keeps it") {
    check_fixture("slug_clash", PluginStatus::waiting, "register",
                  "waiting for slug 'good_flow' held by module 'good'");
  }

  TEST_CASE("a second file declaring an existing module name is refused, naming the other file") {
    Sandbox box;
    box.add("good");
    const fs::path bad = box.add("duplicate_module", "zz_duplicate.so");
    box.scan();
    check_rejected("duplicate_module", bad, box, PluginStatus::waiting, "register",
                   "waiting for module name 'good' held by " + (box.dir / "good.so").string());
  }

  TEST_CASE("a crash in a static initializer is quarantined; the host survives") {
    check_fixture("static_crash", PluginStatus::quarantined, "inspect",
                  "crashed the inspection process while loading");
  }

  TEST_CASE("an abort in the entry point is quarantined") {
    check_fixture("entry_abort", PluginStatus::quarantined, "inspect",
                  "crashed the inspection process while loading");
  }

  TEST_CASE("a hang in the entry point is cut off and quarantined") {
    Sandbox box;
    box.add("good");
    const fs::path bad = box.add("entry_hang");
    box.scan();
    check_rejected("entry_hang", bad, box, PluginStatus::quarantined, "inspect",
                   "did not finish loading within 5000 ms");
  }

  TEST_CASE(
      "quarantine holds that exact content, survives a restart, and ends when the file changes") {
    Sandbox box;
    box.add("good");
    const fs::path bad = box.add("static_crash", "flaky.so");
    box.scan();
    REQUIRE(box.info_of(bad).status == PluginStatus::quarantined);
    // A new loader (a restart) knows the quarantine from the cache directory, without inspecting.
    PluginLoaderOptions options;
    options.settings.dir = box.dir;
    options.cache_dir = box.cache;
    options.inspector = "/nonexistent/inspector";  // would fail loudly if it were run
    FlowRegistry registry2;
    PluginLoader loader2(registry2, options);
    auto again = loader2.scan();
    REQUIRE(again);
    bool quarantined = false;
    for (const auto& p : *again)
      if (p.file == bad) quarantined = p.status == PluginStatus::quarantined;
    CHECK(quarantined);
    // The file changes into a good plugin: it loads.
    box.add("other", "flaky.so");
    box.scan();
    CHECK(box.info_of(bad).status == PluginStatus::loaded);
    CHECK(box.registry.find("other_flow"));
  }

  TEST_CASE("a rejected file keeps its error until it is fixed or removed") {
    Sandbox box;
    const fs::path bad = box.add("wrong_magic", "fixme.so");
    box.scan();
    REQUIRE(box.info_of(bad).error);
    box.scan();
    CHECK(box.info_of(bad).error->stage == "abi");  // still visible
    box.add("other", "fixme.so");
    box.scan();
    CHECK_FALSE(box.info_of(bad).error);
    fs::remove(bad);
    box.scan();
    CHECK(box.loader->plugins().empty());
    CHECK(box.registry.size() == 0);
  }

  TEST_CASE("a world-writable plugin is refused with the chmod to run, unless allowed") {
    Sandbox box;
    box.add("good");
    const fs::path bad = box.add("other");
    fs::permissions(bad, fs::perms::all);
    box.scan();
    check_rejected("world_writable", bad, box, PluginStatus::rejected, "permissions",
                   "is writable by everyone (mode 0777): run `chmod go-w " + bad.string() + "`");
    PluginSettings unsafe;
    unsafe.allow_unsafe = true;
    Sandbox allowed(unsafe);
    const fs::path file = allowed.add("other");
    fs::permissions(file, fs::perms::all);
    allowed.scan();
    CHECK(allowed.info_of(file).status == PluginStatus::loaded);
  }

  TEST_CASE("a group-writable directory is refused") {
    Sandbox box;
    const fs::path file = box.add("other");
    fs::permissions(box.dir, fs::perms::group_write, fs::perm_options::add);
    box.scan();
    const PluginInfo info = box.info_of(file);
    REQUIRE(info.error);
    CHECK(info.error->stage == "permissions");
    CHECK(info.error->message.find("plugin directory " + box.dir.string() +
                                   " is writable by its group") != std::string::npos);
  }

  TEST_CASE("a plugin owned by another user is refused with the chown to run") {
    // As root: the file really belongs to someone else. Otherwise: this process's files stand for
    // another user's, by trusting a different uid (root's files are always trusted).
    const bool root = geteuid() == 0;
    Sandbox box({}, 50ms, root ? -1 : static_cast<long>(geteuid()) + 1);
    const fs::path bad = box.add("other");
    if (root) REQUIRE(chown(bad.c_str(), 65534, 65534) == 0);
    box.scan();
    const PluginInfo info = box.info_of(root ? bad : box.dir / "other.so");
    REQUIRE(info.error);
    CHECK(info.error->stage == "permissions");
    CHECK(info.error->message.find(
              root ? "is owned by uid 65534, not by root or the user running flowreg"
                   : "is owned by uid") != std::string::npos);
    CHECK(box.registry.size() == 0);
  }

  TEST_CASE("a symlink is refused unless allowed") {
    Sandbox box;
    box.add("good");
    const fs::path target = box.root / "elsewhere.so";
    fs::copy_file(kFixtures / "other.so", target);
    const fs::path link = box.dir / "link.so";
    fs::create_symlink(target, link);
    box.scan();
    check_rejected("symlink", link, box, PluginStatus::rejected, "file", "is a symbolic link");
    PluginSettings settings;
    settings.allow_symlinks = true;
    Sandbox allowed(settings);
    fs::copy_file(kFixtures / "other.so", allowed.root / "elsewhere.so");
    fs::create_symlink(allowed.root / "elsewhere.so", allowed.dir / "link.so");
    allowed.scan();
    CHECK(allowed.info_of(allowed.dir / "link.so").status == PluginStatus::loaded);
  }

  TEST_CASE("a FIFO named like a plugin is refused without blocking") {
    Sandbox box;
    box.add("good");
    const fs::path fifo = box.dir / "pipe.so";
    REQUIRE(mkfifo(fifo.c_str(), 0644) == 0);
    auto scanned = std::async(std::launch::async, [&] { return box.loader->scan(); });
    REQUIRE(scanned.wait_for(30s) == std::future_status::ready);
    // A FIFO is not even a candidate file for the directory scan, or is refused as one.
    const auto result = scanned.get();
    REQUIRE(result);
    for (const auto& p : *result)
      if (p.file == fifo) CHECK(p.error->message.find("FIFO") != std::string::npos);
    CHECK(box.slugs() == std::vector<std::string>{"good_flow"});
  }

  TEST_CASE("files over the size limit and outside the sha256 allowlist are refused") {
    PluginSettings small;
    small.max_bytes = 1000;
    Sandbox box(small);
    const fs::path big = box.add("other");
    box.scan();
    CHECK(box.info_of(big).error->stage == "size");
    CHECK(box.info_of(big).error->message.find("the limit (plugins.max_bytes) is 1000") !=
          std::string::npos);

    PluginSettings listed;
    listed.sha256_allowlist = {std::string(64, 'a')};
    Sandbox box2(listed);
    const fs::path file = box2.add("other");
    box2.scan();
    CHECK(box2.info_of(file).error->stage == "allowlist");
  }

  TEST_CASE("plugins check runs every stage and registers nothing") {
    Sandbox box;
    box.add("good");
    box.scan();
    const PluginInfo clash = box.loader->check(kFixtures / "slug_clash.so");
    CHECK(clash.status == PluginStatus::rejected);
    CHECK(clash.error->stage == "register");
    const PluginInfo fine = box.loader->check(kFixtures / "other.so");
    CHECK(fine.status == PluginStatus::loaded);
    CHECK(fine.module == "other");
    CHECK_FALSE(box.registry.find("other_flow"));
  }

  TEST_CASE("the CLI: plugins list --json and plugins check exit codes") {
    Sandbox box;
    box.add("good");
    box.add("wrong_magic");
    auto run = [&](std::vector<std::string> args) {
      args.insert(args.begin(), {FLOWREG_BINARY, "--plugins", box.dir.string()});
      auto r = flowreg::test::run_process(args, box.root.string());
      return std::pair{r.exit_code, r.out + r.err};
    };
    auto listed = flowreg::test::run_process(
        {FLOWREG_BINARY, "--plugins", box.dir.string(), "plugins", "list", "--json"},
        box.root.string());
    const int list_status = listed.exit_code;
    const std::string list_out = listed.out;
    REQUIRE(list_status == 0);
    const auto list = nlohmann::json::parse(list_out);
    REQUIRE(list.size() == 2);
    CHECK(list[0]["module"] == "good");
    CHECK(list[0]["status"] == "loaded");
    CHECK(list[0]["error"].is_null());
    CHECK(list[0]["abi"] == "1.0");
    CHECK(list[0]["sha256"].get<std::string>().size() == 64);
    CHECK(list[0]["flows"] == nlohmann::json::array({"good_flow"}));
    CHECK(list[1]["status"] == "rejected");
    CHECK(list[1]["error"]["stage"] == "abi");
    CHECK(run({"plugins", "check", (kFixtures / "other.so").string()}).first == 0);
    auto [bad_status, bad_out] = run({"plugins", "check", (kFixtures / "other.so").string(),
                                      (kFixtures / "abi_major_next.so").string()});
    CHECK(bad_status == 1);
    CHECK(bad_out.find("abi_major_next.so: [abi] was built for plugin ABI 2.0") !=
          std::string::npos);
  }
}

namespace {

// Collects registry events and lets a test wait for one.
struct EventLog {
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<ModuleEvent> events;
  FlowRegistry::Subscription subscription;

  explicit EventLog(FlowRegistry& registry)
      : subscription(registry.subscribe([this](const ModuleEvent& e) {
          std::lock_guard lock(mutex);
          events.push_back(e);
          changed.notify_all();
        })) {}

  // Waits (deadlock guard only) until `count` events of `kind` for `module` have been seen.
  bool wait_for(ModuleEvent::Kind kind, const std::string& module, std::size_t count = 1) {
    std::unique_lock lock(mutex);
    return changed.wait_for(lock, 60s, [&] { return this->count(kind, module) >= count; });
  }
  std::size_t count(ModuleEvent::Kind kind, const std::string& module) {
    return static_cast<std::size_t>(
        std::count_if(events.begin(), events.end(),
                      [&](const ModuleEvent& e) { return e.kind == kind && e.module == module; }));
  }
};

bool is_mapped(const fs::path& file) {
  void* handle = dlopen(file.c_str(), RTLD_NOW | RTLD_NOLOAD);
  if (!handle) return false;
  dlclose(handle);  // drop the reference RTLD_NOLOAD just took
  return true;
}

bool wait_until_exists(const fs::path& file) {
  for (int i = 0; i < 30000 && !fs::exists(file); ++i) std::this_thread::sleep_for(2ms);
  return fs::exists(file);
}

}  // namespace

TEST_SUITE("plugin_reload") {
  TEST_CASE(
      "a plugin renamed over a loaded one reloads; a running call finishes on the old code, "
      "which is released afterwards") {
    Sandbox box;
    EventLog log(box.registry);
    const fs::path file = box.add("reload_v1", "reload.so");
    REQUIRE(box.loader->watch());
    REQUIRE(log.wait_for(ModuleEvent::Kind::registered, "reload"));
    REQUIRE(box.registry.find("reload_flow")->def.description == "version 1");
    const std::string v1_sha = box.info_of(file).sha256;
    const fs::path v1_copy = box.cache / (v1_sha + ".so");
    REQUIRE(is_mapped(v1_copy));

    // A call of v1 that runs until the test opens its gate.
    const fs::path started = box.root / "started", gate = box.root / "gate";
    HandlerOutcome old_result;
    std::thread running(
        [h = box.loader->handler("reload.slow"), &old_result, started, gate]() mutable {
          old_result = h.invoke(nlohmann::json{{"started", started}, {"wait_for", gate}}.dump());
          h = HandlerRef{};  // the last reference to v1 goes with the call
        });
    REQUIRE(wait_until_exists(started));

    // v2 arrives the safe way: written under a name the loader ignores, then renamed over v1.
    fs::copy_file(kFixtures / "reload_v2.so", box.dir / ".reload.so.tmp");
    fs::rename(box.dir / ".reload.so.tmp", file);
    REQUIRE(log.wait_for(ModuleEvent::Kind::replaced, "reload"));

    // New work runs v2, at once, while the v1 call is still running.
    CHECK(box.registry.find("reload_flow")->def.description == "version 2");
    auto fresh = box.loader->handler("reload.slow").invoke("{}");
    CHECK(nlohmann::json::parse(fresh.body)["version"] == 2);
    CHECK(is_mapped(v1_copy));  // still in use

    std::ofstream(gate) << "open\n";
    running.join();
    CHECK(nlohmann::json::parse(old_result.body)["version"] == 1);
    CHECK_FALSE(is_mapped(v1_copy));  // released after its last call ended
    CHECK(is_mapped(box.cache / (box.info_of(file).sha256 + ".so")));
    box.loader->stop();
  }

  TEST_CASE("a new file is loaded and a removed file unregisters its flows while watching") {
    Sandbox box;
    EventLog log(box.registry);
    REQUIRE(box.loader->watch());
    const fs::path file = box.add("other");
    REQUIRE(log.wait_for(ModuleEvent::Kind::registered, "other"));
    CHECK(box.registry.find("other_flow"));
    fs::remove(file);
    REQUIRE(log.wait_for(ModuleEvent::Kind::unregistered, "other"));
    CHECK_FALSE(box.registry.find("other_flow"));
    CHECK(box.loader->plugins().empty());
    box.loader->stop();
  }

  TEST_CASE("a rejected plugin loads once its permissions are fixed, while watching") {
    Sandbox box;
    EventLog log(box.registry);
    const fs::path file = box.add("other");
    fs::permissions(file, fs::perms::others_write, fs::perm_options::add);
    REQUIRE(box.loader->watch());
    // The initial scan has been delivered when the rejection is visible.
    for (int i = 0; i < 30000 && box.loader->plugins().empty(); ++i)
      std::this_thread::sleep_for(2ms);
    REQUIRE(box.info_of(file).error);
    CHECK(box.info_of(file).error->stage == "permissions");
    fs::permissions(file, fs::perms::others_write, fs::perm_options::remove);  // the advised chmod
    REQUIRE(log.wait_for(ModuleEvent::Kind::registered, "other"));
    CHECK(box.info_of(file).status == PluginStatus::loaded);
    box.loader->stop();
  }

  TEST_CASE("a file copied in slowly is loaded once, complete") {
    Sandbox box({}, 100ms);
    EventLog log(box.registry);
    REQUIRE(box.loader->watch());
    std::ifstream in(kFixtures / "other.so", std::ios::binary);
    const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const fs::path file = box.dir / "slow.so";
    {
      // Twelve chunks, 25 ms apart: the copy takes longer than the debounce, each pause is shorter.
      std::ofstream out(file, std::ios::binary);
      const std::size_t chunk = bytes.size() / 12 + 1;
      for (std::size_t at = 0; at < bytes.size(); at += chunk) {
        out.write(bytes.data() + at,
                  static_cast<std::streamsize>(std::min(chunk, bytes.size() - at)));
        out.flush();
        std::this_thread::sleep_for(25ms);
      }
    }
    REQUIRE(log.wait_for(ModuleEvent::Kind::registered, "other"));
    const PluginInfo info = box.info_of(file);
    CHECK(info.status == PluginStatus::loaded);
    box.loader->stop();
    // Never seen half-written: nothing was quarantined, it registered exactly once.
    CHECK(log.count(ModuleEvent::Kind::registered, "other") == 1);
    CHECK_FALSE(fs::exists(box.cache / "quarantine"));
  }
}
