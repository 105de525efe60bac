#include <dlfcn.h>
#include <doctest/doctest.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <condition_variable>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <future>
#include <thread>

#include "flowreg/plugins.hpp"
#include "plugin/elf_reader.hpp"
#include "plugin/plugin_library.hpp"
#include "support/process.hpp"
#include "unit/plugin_sandbox.hpp"

using namespace flowreg;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

const fs::path kFixtures = FLOWREG_FIXTURE_DIR;

using flowreg::test::Sandbox;

// The common proof for a broken file: the host is still here (this code runs), the good plugin
// next to it loaded, the registry holds exactly the good plugin's flow, and the error names the
// file, the stage and the reason.
void check_rejected(const std::string& fixture_or_name, const fs::path& bad, Sandbox& box,
                    PluginStatus status, const std::string& stage, const std::string& reason) {
  CAPTURE(fixture_or_name);
  const PluginInfo info = box.info_of(bad);
  CHECK(info.status == status);
  REQUIRE(info.error);
  CHECK(to_string(info.error->stage) == stage);
  CHECK_MESSAGE(info.error->message.find(reason) != std::string::npos, info.error->message);
  CHECK(info.describe_error().starts_with(bad.string() + ": [" + stage + "] "));
  CHECK(box.slugs() == std::vector<std::string>{"good_flow"});
  CHECK(box.info_of(box.dir / "good.so").status == PluginStatus::loaded);
}

void check_fixture(const std::string& fixture, PluginStatus status, const std::string& stage,
                   const std::string& reason) {
  Sandbox box;
  const fs::path bad = box.scan_beside_good(fixture);
  check_rejected(fixture, bad, box, status, stage, reason);
}

// What a restarted host's loader is given for `box`: its directory and plugin cache, and the real
// inspector.
PluginLoaderOptions restart_options(const Sandbox& box) {
  PluginLoaderOptions options;
  options.settings.dir = box.dir;
  options.settings.scan_timeout = 5s;
  options.cache_dir = box.cache;
  options.inspector = FLOWREG_BINARY;
  return options;
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
    CHECK(info.abi == "1.1");
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

  TEST_CASE("every plugin stage reads back from the name to_string gives it; other text is none") {
    const std::vector<std::pair<PluginStage, std::string>> names = {
        {PluginStage::file, "file"},
        {PluginStage::permissions, "permissions"},
        {PluginStage::size, "size"},
        {PluginStage::elf, "elf"},
        {PluginStage::allowlist, "allowlist"},
        {PluginStage::symbol, "symbol"},
        {PluginStage::stage, "stage"},
        {PluginStage::inspect, "inspect"},
        {PluginStage::load, "load"},
        {PluginStage::abi, "abi"},
        {PluginStage::definition, "definition"},
        {PluginStage::registration, "register"}};
    // Plain names, not structured bindings: CAPTURE and CHECK capture them in lambdas, which
    // clang 14 refuses for bindings.
    for (const auto& entry : names) {
      const PluginStage stage = entry.first;
      const std::string& name = entry.second;
      CAPTURE(name);
      CHECK(to_string(stage) == name);
      CHECK(plugin_stage_from_string(name) == stage);
    }
    CHECK_FALSE(plugin_stage_from_string("registration"));
    CHECK_FALSE(plugin_stage_from_string(""));
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
    CHECK((info.error->stage == PluginStage::elf || info.error->stage == PluginStage::inspect));
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
                  "was built for plugin ABI 2.1; this flowreg supports ABI 1.0 to 1.1");
  }

  TEST_CASE("a plugin of a newer ABI minor is refused, naming both versions") {
    check_fixture("abi_minor_newer", PluginStatus::rejected, "abi",
                  "was built for plugin ABI 1.2, newer than this flowreg's 1.1");
  }

  TEST_CASE("a definition that throws is rejected with the exception's message") {
    check_fixture("throwing_definition", PluginStatus::rejected, "definition",
                  "definition exploded");
  }

  TEST_CASE("an invalid definition is rejected with every problem") {
    Sandbox box;
    const fs::path bad = box.scan_beside_good("invalid_definition");
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
    const fs::path bad = box.scan_beside_good("duplicate_module", "zz_duplicate.so");
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
    check_fixture("entry_hang", PluginStatus::quarantined, "inspect",
                  "did not finish loading within 5000 ms");
  }

  TEST_CASE(
      "quarantine holds that exact content, survives a restart, and ends when the file changes") {
    Sandbox box;
    const fs::path bad = box.scan_beside_good("static_crash", "flaky.so");
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
    CHECK(box.info_of(bad).error->stage == PluginStage::abi);  // still visible
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
    CHECK(info.error->stage == PluginStage::permissions);
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
    CHECK(info.error->stage == PluginStage::permissions);
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
    CHECK(box.info_of(big).error->stage == PluginStage::size);
    CHECK(box.info_of(big).error->message.find("the limit (plugins.max_bytes) is 1000") !=
          std::string::npos);

    PluginSettings listed;
    listed.sha256_allowlist = {std::string(64, 'a')};
    Sandbox box2(listed);
    const fs::path file = box2.add("other");
    box2.scan();
    CHECK(box2.info_of(file).error->stage == PluginStage::allowlist);
  }

  TEST_CASE("plugins check runs every stage and registers nothing") {
    Sandbox box;
    box.add("good");
    box.scan();
    const PluginInfo clash = box.loader->check(kFixtures / "slug_clash.so");
    CHECK(clash.status == PluginStatus::rejected);
    CHECK(clash.error->stage == PluginStage::registration);
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
    CHECK(list[0]["abi"] == "1.1");
    CHECK(list[0]["sha256"].get<std::string>().size() == 64);
    CHECK(list[0]["flows"] == nlohmann::json::array({"good_flow"}));
    CHECK(list[1]["status"] == "rejected");
    CHECK(list[1]["error"]["stage"] == "abi");
    CHECK(run({"plugins", "check", (kFixtures / "other.so").string()}).first == 0);
    auto [bad_status, bad_out] = run({"plugins", "check", (kFixtures / "other.so").string(),
                                      (kFixtures / "abi_major_next.so").string()});
    CHECK(bad_status == 1);
    CHECK(bad_out.find("abi_major_next.so: [abi] was built for plugin ABI 2.1") !=
          std::string::npos);
  }
}

namespace {

// Runs the flowreg binary with `args` in `cwd`; returns the exit code (128 + signal when killed)
// and the largest resident size it reached, in KiB.
std::pair<int, long> run_measured(const std::vector<std::string>& args, const fs::path& cwd) {
  std::vector<std::string> argv{FLOWREG_BINARY};
  argv.insert(argv.end(), args.begin(), args.end());
  std::vector<char*> raw;
  for (auto& a : argv) raw.push_back(a.data());
  raw.push_back(nullptr);
  const pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    const int null = open("/dev/null", O_WRONLY);
    if (null < 0 || dup2(null, 1) < 0 || dup2(null, 2) < 0 || chdir(cwd.c_str()) != 0) _exit(126);
    execv(raw[0], raw.data());
    _exit(127);
  }
  int status = 0;
  struct rusage usage {};
  REQUIRE(wait4(pid, &status, 0, &usage) == pid);
  return {WIFSIGNALED(status) ? 128 + WTERMSIG(status) : WEXITSTATUS(status), usage.ru_maxrss};
}

std::string read_all(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

// A copy of a fixture with `n` bytes appended: the same plugin, another content (another sha256).
fs::path add_variant(Sandbox& box, const std::string& fixture, int n, const std::string& name) {
  const fs::path tmp = box.dir / ("." + name + ".tmp");
  fs::copy_file(kFixtures / (fixture + ".so"), tmp, fs::copy_options::overwrite_existing);
  std::ofstream(tmp, std::ios::binary | std::ios::app)
      << std::string(static_cast<std::size_t>(n), '\0');
  fs::permissions(tmp, fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read |
                           fs::perms::others_read);
  fs::rename(tmp, box.dir / name);  // atomically, as a careful deployment does
  return box.dir / name;
}

// The process is gone (or a zombie nobody reaped yet: it runs no more code).
bool process_gone(pid_t pid) {
  if (kill(pid, 0) != 0) return true;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  const auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] == 'Z';
}

std::vector<std::string> staged_copies(const fs::path& cache) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(cache))
    if (e.path().extension() == ".so") out.push_back(e.path().stem().string());
  std::sort(out.begin(), out.end());
  return out;
}

}  // namespace

TEST_SUITE("plugin_loader") {
  TEST_CASE(
      "malformed ELF files are rejected at stage elf, naming the problem; the host survives") {
    check_fixture("elf_zero_shstrndx", PluginStatus::rejected, "elf",
                  "has no usable section-name table (e_shstrndx is 0");
    check_fixture("elf_empty_shstrtab", PluginStatus::rejected, "elf",
                  "has an empty or invalid section-name table");
    check_fixture("elf_huge_shstrtab", PluginStatus::rejected, "elf",
                  "has a section-name table of 1073741824 bytes");
    check_fixture("elf_truncated", PluginStatus::rejected, "elf", "truncated");
    // Without a NUL at their end, every name lookup in them would scan the whole table.
    check_fixture("elf_shstrtab_no_nul", PluginStatus::rejected, "elf",
                  "that does not end in a NUL byte");
    check_fixture("elf_dynstr_no_nul", PluginStatus::rejected, "elf",
                  "has a dynamic string table (section");
  }

  TEST_CASE("a plugin for another architecture is rejected naming that architecture") {
    check_fixture("elf_machine_aarch64", PluginStatus::rejected, "elf",
                  "is an ELF file for AArch64 (64-bit, little-endian); this flowreg runs on "
                  "64-bit little-endian x86-64");
  }

  TEST_CASE("regression: a section-name table claiming 1 GiB made the host allocate it") {
    // Compared with the same command on a file the ELF check rejects for another reason, so that
    // the measure holds for any build (a sanitized one starts far bigger).
    Sandbox box;
    const fs::path huge = box.add("elf_huge_shstrtab");
    const fs::path truncated = box.add("elf_truncated");
    // The plugins directory stays empty: `plugins check` loads it first.
    const fs::path empty = box.root / "empty.d";
    fs::create_directory(empty);
    fs::permissions(empty, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                               fs::perms::others_read | fs::perms::others_exec);
    auto check = [&](const fs::path& file) {
      return run_measured({"--plugins", empty.string(), "plugins", "check", file.string()},
                          box.root);
    };
    // Plain names, not structured bindings: CHECK_MESSAGE captures them in a lambda, which clang
    // 14 refuses for bindings.
    const std::pair<int, long> baseline = check(truncated);
    const std::pair<int, long> measured = check(huge);
    const int baseline_status = baseline.first;
    const long baseline_kib = baseline.second;
    const int status = measured.first;
    const long max_rss_kib = measured.second;
    CHECK(baseline_status == 1);
    CHECK(status == 1);  // rejected, not crashed
    CHECK_MESSAGE(max_rss_kib < baseline_kib + 128 * 1024,
                  "peak resident size " << max_rss_kib << " KiB, " << baseline_kib
                                        << " KiB for a file rejected without it");
  }

  TEST_CASE(
      "regression: plugins stripped with --strip-unneeded or linked with --discard-locals "
      "were not flowreg plugins") {
    for (const std::string fixture :
         {"stripped_other", "discard_locals", "strip_all", "stripped_text"}) {
      CAPTURE(fixture);
      Sandbox box;
      const fs::path file = box.add(fixture);
      box.scan();
      const PluginInfo info = box.info_of(file);
      CHECK_MESSAGE(info.status == PluginStatus::loaded, info.describe_error());
    }
  }

  TEST_CASE("the ELF reader refuses every cut of a shared object and reads nothing outside it") {
    // A small shared object (16 KiB), cut at every byte.
    const std::string bytes = read_all(kFixtures / "no_symbol.so");
    REQUIRE(bytes.size() > 4096);
    const auto whole = detail::inspect_elf(bytes);
    REQUIRE(whole);
    CHECK_FALSE(whole->exports_entry);
    CHECK(detail::check_plugin_elf(bytes).error().stage == PluginStage::symbol);
    for (std::size_t cut = 0; cut < bytes.size(); ++cut) {
      // A heap copy of exactly the cut length: AddressSanitizer sees any read past its end.
      const std::unique_ptr<char[]> copy(new char[cut + 1]);
      std::memcpy(copy.get(), bytes.data(), cut);
      const auto facts = detail::inspect_elf(std::string_view(copy.get(), cut));
      CAPTURE(cut);
      REQUIRE_FALSE(facts);
      REQUIRE(facts.error().stage == PluginStage::elf);
    }
  }

  TEST_CASE(
      "regression: a plugin that crashes only in a multi-threaded process passed "
      "inspection and crashed the threaded host") {
    // This process is multi-threaded while it scans, as a worker is.
    std::promise<void> done;
    std::thread other([f = done.get_future()]() mutable { f.wait(); });
    Sandbox box;
    const fs::path bad = box.scan_beside_good("threads_crash");
    done.set_value();
    other.join();
    check_rejected("threads_crash", bad, box, PluginStatus::quarantined, "inspect",
                   "crashed the inspection process while loading");
  }

  TEST_CASE("regression: a process forked by a plugin's constructor outlived the scan") {
    Sandbox box;
    const fs::path pids = box.root / "forked";
    fs::create_directory(pids);
    setenv("FLOWREG_TEST_FORK_DIR", pids.c_str(), 1);
    const fs::path bad = box.scan_beside_good("fork_child");
    unsetenv("FLOWREG_TEST_FORK_DIR");
    check_rejected("fork_child", bad, box, PluginStatus::quarantined, "inspect",
                   "started a process that was still running after loading");
    std::vector<pid_t> forked;
    for (const auto& e : fs::directory_iterator(pids))
      forked.push_back(static_cast<pid_t>(std::stol(e.path().filename().string())));
    REQUIRE_FALSE(forked.empty());  // the fixture did fork
    for (const pid_t pid : forked) {
      CAPTURE(pid);
      bool gone = false;
      for (int i = 0; i < 1000 && !(gone = process_gone(pid)); ++i)
        std::this_thread::sleep_for(10ms);
      CHECK(gone);
      if (!gone) kill(pid, SIGKILL);  // leave nothing behind even when failing
    }
  }

  TEST_CASE(
      "regression: a process forked by a plugin's constructor was still running after plugins "
      "list had returned (1 run in 2)") {
    // fork_child keeps the forked process in the inspection's process group; fork_daemon's leaves
    // it (fork, setsid, fork). Each is checked by pid the moment the command has returned: what
    // the plugin started at load must have ended with the load, not be about to.
    for (const std::string fixture : {"fork_child", "fork_daemon"}) {
      CAPTURE(fixture);
      Sandbox box;
      box.add(fixture);
      const fs::path pids = box.root / "forked";
      setenv("FLOWREG_TEST_FORK_DIR", pids.c_str(), 1);
      int left_running = 0;
      for (int i = 0; i < 20; ++i) {
        CAPTURE(i);
        // A fresh data directory each time: inspected anew, never from a quarantine.
        std::error_code ec;
        fs::remove_all(box.root / ".flowreg", ec);
        fs::remove_all(pids, ec);
        fs::create_directory(pids);
        const auto r = flowreg::test::run_process(
            {FLOWREG_BINARY, "--plugins", box.dir.string(), "plugins", "list", "--json"},
            box.root.string());
        std::vector<pid_t> forked;
        for (const auto& e : fs::directory_iterator(pids))
          forked.push_back(static_cast<pid_t>(std::stol(e.path().filename().string())));
        for (const pid_t pid : forked)
          if (!process_gone(pid)) {
            ++left_running;
            MESSAGE("still running after plugins list returned: pid " << pid);
            kill(pid, SIGKILL);  // leave nothing behind, even when failing
          }
        REQUIRE(r.exit_code == 0);
        REQUIRE_FALSE(forked.empty());  // the fixture did fork
        const auto listed = nlohmann::json::parse(r.out);
        REQUIRE(listed.size() == 1);
        CHECK_MESSAGE(listed[0]["status"] == "quarantined", listed[0].dump());
        CHECK(listed[0]["error"]["stage"] == "inspect");
        CHECK(listed[0]["error"]["message"].get<std::string>().find(
                  "started a process that was still running after loading") != std::string::npos);
      }
      unsetenv("FLOWREG_TEST_FORK_DIR");
      CHECK(left_running == 0);
    }
  }

  TEST_CASE(
      "regression: replacing a plugin whose constructor started a thread crashed the "
      "process when the old version was unloaded") {
    Sandbox box;
    const fs::path file = box.add("detached_thread", "thread.so");
    box.scan();
    REQUIRE(box.info_of(file).status == PluginStatus::loaded);
    for (int version = 1; version <= 5; ++version) {
      add_variant(box, "detached_thread", version, "thread.so");
      box.scan();
      REQUIRE(box.info_of(file).status == PluginStatus::loaded);
      std::this_thread::sleep_for(50ms);  // every old version's thread runs on
    }
    const auto ticks = box.loader->handler("detached_thread.ticks").invoke("null");
    CHECK(ticks.status == HandlerOutcome::Status::ok);
    // Still here: no version's code was unmapped under its thread.
  }

  TEST_CASE("regression: plugins list crashed at exit with a plugin that started a thread") {
    Sandbox box;
    box.add("detached_thread");
    for (int i = 0; i < 20; ++i) {
      CAPTURE(i);
      // A fresh data directory each time: inspected and loaded anew, never from a quarantine.
      std::error_code ec;
      fs::remove_all(box.root / ".flowreg", ec);
      const auto r = flowreg::test::run_process(
          {FLOWREG_BINARY, "--plugins", box.dir.string(), "plugins", "list", "--json"},
          box.root.string());
      REQUIRE(r.exit_code == 0);
      const auto listed = nlohmann::json::parse(r.out);
      REQUIRE(listed.size() == 1);
      REQUIRE_MESSAGE(listed[0]["status"] == "loaded", listed[0].dump());
    }
  }

  TEST_CASE(
      "regression: a plugin that crashes flowreg while loading (not the inspection child) "
      "crash-looped it; after 2 crashes it is quarantined") {
    Sandbox box;
    box.add("host_crash");
    auto list = [&] {
      return flowreg::test::run_process(
          {FLOWREG_BINARY, "--plugins", box.dir.string(), "plugins", "list", "--json"},
          box.root.string());
    };
    // Killed by SIGSEGV (under AddressSanitizer: its report, then exit status 1), twice.
    CHECK(list().exit_code != 0);
    CHECK(list().exit_code != 0);
    const auto third = list();
    REQUIRE(third.exit_code == 0);
    const auto listed = nlohmann::json::parse(third.out);
    REQUIRE(listed.size() == 1);
    CHECK(listed[0]["status"] == "quarantined");
    CHECK(listed[0]["error"]["stage"] == "load");
    CHECK(listed[0]["error"]["message"] ==
          "crashed flowreg while loading (2 times); quarantined until the file changes");
    // It stays quarantined, and nothing is left in the journal.
    CHECK(list().exit_code == 0);
    const fs::path journal = box.root / ".flowreg" / "plugin-cache" / "journal";
    CHECK((!fs::exists(journal) || fs::is_empty(journal)));
  }

  TEST_CASE(
      "regression: a plugin without the SDK that throws from describe() through the C ABI "
      "aborted the process") {
    // In this process, without the inspection child: the host itself must contain it.
    const fs::path file = kFixtures / "raw_throw_describe.so";
    auto opened = detail::LoadedPlugin::open(file);
    REQUIRE_FALSE(opened);
    CHECK(opened.error().stage == PluginStage::definition);
    CHECK(opened.error().message.find("function \"describe\" of plugin " + file.string() +
                                      " threw std::runtime_error: \"raw describe exploded\"") !=
          std::string::npos);
    // Through the loader, with the inspection child: rejected, not quarantined.
    Sandbox box;
    const fs::path bad = box.scan_beside_good("raw_throw_describe");
    check_rejected("raw_throw_describe", bad, box, PluginStatus::rejected, "definition",
                   "function \"describe\" of plugin " + bad.string() +
                       " threw std::runtime_error: \"raw describe exploded\"");
  }

  TEST_CASE(
      "regression: a plugin without the SDK that throws from invoke() through the C ABI "
      "aborted the worker") {
    Sandbox box;
    const fs::path file = box.add("raw_throw_invoke");
    box.scan();
    REQUIRE_MESSAGE(box.info_of(file).status == PluginStatus::loaded,
                    box.info_of(file).describe_error());
    const auto thrown = box.loader->handler("raw.throws").invoke("{}");
    CHECK(thrown.status == HandlerOutcome::Status::permanent);
    CHECK_MESSAGE(thrown.body.find("handler 'raw.throws': function \"invoke\" of plugin " +
                                   file.string() + " threw") != std::string::npos,
                  thrown.body);
    CHECK(thrown.body.find("threw std::runtime_error: \"raw invoke exploded\"") !=
          std::string::npos);
    const auto thrown_int = box.loader->handler("raw.throws_int").invoke("{}");
    CHECK(thrown_int.status == HandlerOutcome::Status::permanent);
    CHECK(thrown_int.body.find("threw an exception of type int") != std::string::npos);
    const auto bad_release = box.loader->handler("raw.bad_release").invoke("{}");
    CHECK(bad_release.status == HandlerOutcome::Status::permanent);
    CHECK(bad_release.body.find("function \"release\"") != std::string::npos);
    CHECK(bad_release.body.find("raw release exploded") != std::string::npos);
  }

  TEST_CASE("a load that succeeds clears the content's count of crashes (they count in a row)") {
    Sandbox box;
    const fs::path file = box.add("good");
    box.scan();
    const std::string sha = box.info_of(file).sha256;
    REQUIRE(sha.size() == 64);
    // One earlier death while loading it, as the journal of a killed process leaves it.
    const fs::path crashes = box.cache / "crashes" / sha;
    fs::create_directories(crashes);
    std::ofstream(crashes / "1-2-3.json") << "{}\n";
    FlowRegistry registry;
    PluginLoader restarted(registry, restart_options(box));
    REQUIRE(restarted.scan());
    CHECK(restarted.plugins().front().status == PluginStatus::loaded);
    CHECK_FALSE(fs::exists(crashes));
  }

  TEST_CASE(
      "regression: the plugin cache's own files nested 100,000 levels deep crashed the loader") {
    // owners.json and a journal record left by a dead process: parsed without a depth bound, then
    // copied (owners) or written out again (the record) by functions that recurse once per level.
    // Truncated files and invalid UTF-8 are unreadable the same way: ignored, nothing counted.
    Sandbox box;
    const fs::path file = box.add("good");
    box.scan();
    REQUIRE(box.info_of(file).status == PluginStatus::loaded);
    const std::string deep = std::string(100'000, '[') + std::string(100'000, ']');
    const std::string record_head =
        R"({"kind": "plugin-load", "sha256": ")" + std::string(64, 'a') + R"(", "x": )";
    struct Hostile {
      const char* what;
      std::string owners, record;
    };
    for (const Hostile& h : {
             Hostile{"100,000 levels", R"({"x": {"module": "m", "flows": )" + deep + "}}\n",
                     record_head + deep + "}\n"},
             Hostile{"truncated", R"({"x": {"module": "m", "fl)", record_head + "[1, 2"},
             Hostile{"invalid UTF-8", "{\"x\xff\": {\"module\": \"m\xfe\"}}\n",
                     record_head + "\"\xff\xfe\"}\n"},
         }) {
      CAPTURE(h.what);
      std::ofstream(box.cache / "owners.json") << h.owners;
      fs::create_directories(box.cache / "journal");
      std::ofstream(box.cache / "journal" / "999999-1-0.json") << h.record;
      FlowRegistry registry;
      PluginLoader restarted(registry, restart_options(box));
      REQUIRE(restarted.scan());
      CHECK(restarted.plugins().front().status == PluginStatus::loaded);
      // The record was unreadable, so it counted no crash against any content.
      CHECK_FALSE(fs::exists(box.cache / "crashes" / std::string(64, 'a')));
    }
  }

  TEST_CASE(
      "regression: a buffer size chosen by the plugin was copied before any limit (1 TiB claimed "
      "over 3 bytes read past the buffer)") {
    Sandbox box;
    const fs::path file = box.add("raw_throw_invoke");
    box.scan();
    REQUIRE(box.info_of(file).status == PluginStatus::loaded);
    const auto lying = box.loader->handler("raw.lying_size").invoke("{}");
    CHECK(lying.status == HandlerOutcome::Status::permanent);
    CHECK_MESSAGE(lying.body.find("returned a buffer of 1099511627776 bytes, over the limit of "
                                  "134217728 bytes") != std::string::npos,
                  lying.body);
  }

  TEST_CASE("regression: raising plugins.scan_timeout was ignored for a quarantined hang") {
    PluginSettings short_timeout;
    Sandbox box(short_timeout);
    PluginLoaderOptions options;
    options.settings.dir = box.dir;
    options.cache_dir = box.cache;
    options.inspector = FLOWREG_BINARY;
    const fs::path bad = box.add("entry_hang");
    auto status_with = [&](std::chrono::milliseconds timeout) {
      options.settings.scan_timeout = timeout;
      FlowRegistry registry;
      PluginLoader loader(registry, options);
      auto scanned = loader.scan();
      REQUIRE(scanned);
      REQUIRE(scanned->size() == 1);
      return scanned->front();
    };
    const PluginInfo first = status_with(1s);
    CHECK(first.status == PluginStatus::quarantined);
    CHECK(first.error->message.find("did not finish loading within 1000 ms") != std::string::npos);
    const PluginInfo same = status_with(1s);  // the same limit: the quarantine holds
    CHECK(same.error->message == first.error->message);
    const PluginInfo raised = status_with(2500ms);  // a longer limit: inspected again, with it
    CHECK(raised.status == PluginStatus::quarantined);
    CHECK_MESSAGE(
        raised.error->message.find("did not finish loading within 2500 ms") != std::string::npos,
        raised.error->message);
    (void)bad;
  }

  TEST_CASE(
      "regression: raising plugins.scan_timeout in the configuration file still reported the old "
      "limit") {
    Sandbox box;
    box.add("entry_hang");
    auto list_with = [&](const std::string& timeout) {
      std::ofstream(box.root / "flowreg.yaml")
          << "plugins:\n  dir: plugins.d\n  scan_timeout: " << timeout << "\n";
      const auto r = flowreg::test::run_process(
          {FLOWREG_BINARY, "--config", (box.root / "flowreg.yaml").string(), "plugins", "list"},
          box.root.string());
      CHECK(r.exit_code == 0);
      return r.out;
    };
    const std::string first = list_with("1500ms");
    CHECK_MESSAGE(first.find("did not finish loading within 1500 ms") != std::string::npos, first);
    const std::string raised = list_with("3s");
    CHECK_MESSAGE(raised.find("did not finish loading within 3000 ms") != std::string::npos,
                  raised);
  }

  TEST_CASE("regression: quarantine records kept only the first line of a multi-line reason") {
    Sandbox box;
    const fs::path bad = box.add("noisy_crash");
    box.scan();
    const PluginInfo info = box.info_of(bad);
    REQUIRE(info.status == PluginStatus::quarantined);
    const std::string reason = info.error->message;
    CHECK(
        reason.find("noisy: first line\nnoisy: second line, caf\xEF\xBF\xBD\nnoisy: third line") !=
        std::string::npos);
    // A restart reads the record back whole, without inspecting again.
    PluginLoaderOptions options;
    options.settings.dir = box.dir;
    options.cache_dir = box.cache;
    options.inspector = "/nonexistent/inspector";
    FlowRegistry registry;
    PluginLoader restarted(registry, options);
    auto again = restarted.scan();
    REQUIRE(again);
    REQUIRE(again->size() == 1);
    CHECK(again->front().status == PluginStatus::quarantined);
    CHECK(again->front().error->message == reason);
  }

  TEST_CASE("a quarantine record of the older two-line text format is still honoured") {
    Sandbox box;
    const fs::path file = box.add("other");
    box.scan();
    const std::string sha = box.info_of(file).sha256;
    fs::create_directories(box.cache / "quarantine");
    std::ofstream(box.cache / "quarantine" / (sha + ".txt"))
        << "inspect\ncrashed the inspection process while loading: it was killed by signal 11 "
           "(Segmentation fault); quarantined until the file changes\n";
    PluginLoaderOptions options;
    options.settings.dir = box.dir;
    options.cache_dir = box.cache;
    FlowRegistry registry;
    PluginLoader restarted(registry, options);
    auto again = restarted.scan();
    REQUIRE(again);
    REQUIRE(again->size() == 1);
    CHECK(again->front().status == PluginStatus::quarantined);
    CHECK(again->front().error->stage == PluginStage::inspect);
    CHECK(again->front().error->message.starts_with("crashed the inspection process"));
  }

  TEST_CASE("regression: the plugin cache was never pruned; it keeps only what is in use") {
    Sandbox box;
    const fs::path file = box.add("other", "other.so");
    box.add("static_crash");  // quarantined: its record stays, its staged copy goes
    box.scan();
    for (int version = 1; version <= 5; ++version) {
      add_variant(box, "other", version, "other.so");
      box.scan();
      REQUIRE(box.info_of(file).status == PluginStatus::loaded);
    }
    CHECK(staged_copies(box.cache) == std::vector<std::string>{box.info_of(file).sha256});
    const std::string crashed = box.info_of(box.dir / "static_crash.so").sha256;
    CHECK(fs::exists(box.cache / "quarantine" / (crashed + ".json")));
    CHECK(box.info_of(box.dir / "static_crash.so").status == PluginStatus::quarantined);
  }
}

namespace {

// Collects registry events and lets a test wait for one.
struct EventLog {
  std::mutex mutex;
  std::condition_variable changed;
  std::vector<ModuleEvent> events;
  Subscription subscription;

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
      "which stays mapped afterwards") {
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
    // Never unloaded, even after its last call ended: a plugin may leave code running that no
    // reference tracks (a thread it started), so plugin code stays mapped for the process's life.
    CHECK(is_mapped(v1_copy));
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
    CHECK(box.info_of(file).error->stage == PluginStage::permissions);
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
