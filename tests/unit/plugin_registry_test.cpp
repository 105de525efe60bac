// A module name or flow slug contested by two plugin files belongs to the incumbent, whatever the
// files are called, across restarts, and passes to the waiting file as soon as it is free; and
// `plugins check` compares files, not the strings that name them.
#include <doctest/doctest.h>

#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>
#include <thread>
#include <vector>

#include "flowreg/plugins.hpp"
#include "support/process.hpp"
#include "unit/plugin_sandbox.hpp"

using namespace flowreg;
using namespace std::chrono_literals;
using flowreg::test::ctime_ns;
using flowreg::test::kFixtures;
using flowreg::test::Sandbox;
namespace fs = std::filesystem;

namespace {

// `file` waits for `name` (a slug or a module name) held by `holder`, and says so.
void check_waiting(const Sandbox& box, const fs::path& file, const std::string& expected) {
  const PluginInfo info = box.info_of(file);
  CHECK(info.status == PluginStatus::waiting);
  CHECK(to_string(info.status) == "waiting");
  REQUIRE(info.error);
  CHECK(info.error->stage == PluginStage::registration);
  CHECK_MESSAGE(info.error->message.find(expected) != std::string::npos, info.error->message);
}

std::string slug_held_by_good(const Sandbox& box) {
  return "waiting for slug 'good_flow' held by module 'good' (" + (box.dir / "good.so").string() +
         ")";
}

}  // namespace

TEST_SUITE("plugin_registry") {
  TEST_CASE(
      "regression: a newcomer that sorts first took the slug of the plugin that held it; now it "
      "waits, also across a restart") {
    Sandbox box;
    box.add("good");
    box.scan();
    const fs::path newcomer = box.add("slug_clash", "a_clash.so");
    box.scan();
    check_waiting(box, newcomer, slug_held_by_good(box));
    CHECK(box.module_of("good_flow") == "good");
    CHECK_FALSE(box.registry.get("clash_own_flow"));  // nothing half-registered

    // A restart after the incumbent was replaced by a new copy (so that it is now the newer file
    // of the two): it keeps its slug, from the owners recorded in the cache.
    box.add("good");
    REQUIRE(ctime_ns(box.dir / "good.so") > ctime_ns(newcomer));
    box.restart();
    box.scan();
    CHECK(box.info_of(box.dir / "good.so").status == PluginStatus::loaded);
    check_waiting(box, newcomer, slug_held_by_good(box));
    CHECK(box.module_of("good_flow") == "good");
  }

  TEST_CASE(
      "after a restart an incumbent that now claims another incumbent's slug waits for it, even "
      "when it is read first") {
    Sandbox box;
    const fs::path changed = box.scan_beside_good("other", "a_changed.so");
    REQUIRE(box.module_of("other_flow") == "other");
    // While flowreg is down, a_changed.so becomes a plugin that also declares good_flow, and then
    // good.so is updated: a_changed.so is now the older file of the two incumbents.
    box.loader.reset();
    box.add("slug_clash", "a_changed.so");
    box.add("good");
    box.restart();
    box.scan();
    CHECK(box.module_of("good_flow") == "good");
    check_waiting(box, changed, slug_held_by_good(box));
  }

  TEST_CASE("on a first start the file installed first takes a contested slug, whatever its name") {
    for (const std::string name : {"a_clash.so", "z_clash.so"}) {
      CAPTURE(name);
      Sandbox box;
      const fs::path newcomer = box.scan_beside_good("slug_clash", name);
      check_waiting(box, newcomer, slug_held_by_good(box));
      CHECK(box.module_of("good_flow") == "good");
    }
    // And the other way round: the clash was there first.
    Sandbox box;
    const fs::path first = box.add("slug_clash", "z_clash.so");
    box.add("good");
    box.scan();
    CHECK(box.info_of(first).status == PluginStatus::loaded);
    check_waiting(box, box.dir / "good.so",
                  "waiting for slug 'good_flow' held by module 'clash' (" + first.string() + ")");
  }

  TEST_CASE("removing the owner hands the slug to the waiting file at once (scan)") {
    Sandbox box;
    const fs::path newcomer = box.scan_beside_good("slug_clash", "a_clash.so");
    REQUIRE(box.info_of(newcomer).status == PluginStatus::waiting);
    fs::remove(box.dir / "good.so");
    box.scan();
    CHECK(box.info_of(newcomer).status == PluginStatus::loaded);
    CHECK_FALSE(box.info_of(newcomer).error);
    CHECK(box.module_of("good_flow") == "clash");
    CHECK(box.module_of("clash_own_flow") == "clash");
    CHECK(box.loader->handler("clash.noop"));
    // The new owner is the incumbent from now on: a restart with the old owner back keeps it.
    box.add("good");
    box.restart();
    box.scan();
    CHECK(box.module_of("good_flow") == "clash");
    check_waiting(box, box.dir / "good.so", "waiting for slug 'good_flow' held by module 'clash'");
  }

  TEST_CASE("removing the owner hands the slug to the waiting file at once (watcher)") {
    Sandbox box;
    box.add("good");
    const fs::path newcomer = box.add("slug_clash", "a_clash.so");
    REQUIRE(box.loader->watch());
    auto eventually = [&](auto condition) {
      for (int i = 0; i < 3000 && !condition(); ++i) std::this_thread::sleep_for(10ms);
      return condition();
    };
    REQUIRE(eventually([&] { return box.loader->plugins().size() == 2; }));
    REQUIRE(box.info_of(newcomer).status == PluginStatus::waiting);
    CHECK(box.module_of("good_flow") == "good");
    fs::remove(box.dir / "good.so");
    CHECK(eventually([&] { return box.module_of("good_flow") == "clash"; }));
    CHECK(box.info_of(newcomer).status == PluginStatus::loaded);
    box.loader->stop();
  }

  TEST_CASE("an owner that stops declaring the slug frees it for the waiting file") {
    Sandbox box;
    const fs::path newcomer = box.scan_beside_good("slug_clash", "a_clash.so");
    REQUIRE(box.info_of(newcomer).status == PluginStatus::waiting);
    box.add("other", "good.so");  // the file now holds module 'other', without good_flow
    box.scan();
    CHECK(box.module_of("other_flow") == "other");
    CHECK(box.module_of("good_flow") == "clash");
    CHECK(box.info_of(newcomer).status == PluginStatus::loaded);
  }

  TEST_CASE("a module name contested by two files stays with its holder, then passes on") {
    Sandbox box;
    const fs::path impostor = box.scan_beside_good("duplicate_module", "a_duplicate.so");
    check_waiting(box, impostor,
                  "waiting for module name 'good' held by " + (box.dir / "good.so").string());
    CHECK(box.module_of("good_flow") == "good");
    CHECK_FALSE(box.registry.get("impostor_flow"));
    box.restart();
    box.scan();
    check_waiting(box, impostor, "waiting for module name 'good'");
    fs::remove(box.dir / "good.so");
    box.scan();
    CHECK(box.info_of(impostor).status == PluginStatus::loaded);
    CHECK(box.module_of("impostor_flow") == "good");
    CHECK_FALSE(box.registry.get("good_flow"));
  }

  TEST_CASE(
      "a held name is an Errc::duplicate_slug or duplicate_module error, a refusal Errc::plugin") {
    Sandbox box;
    box.add("good");
    const fs::path slug = box.add("slug_clash", "a_clash.so");
    const fs::path name = box.add("duplicate_module", "b_duplicate.so");
    const fs::path not_elf = box.dir / "c_not_elf.so";
    std::ofstream(not_elf) << "this is not a shared object\n";
    box.scan();
    REQUIRE(box.info_of(slug).error);
    CHECK(box.info_of(slug).error->code == Errc::duplicate_slug);
    REQUIRE(box.info_of(name).error);
    CHECK(box.info_of(name).error->code == Errc::duplicate_module);
    REQUIRE(box.info_of(not_elf).error);
    CHECK(box.info_of(not_elf).error->code == Errc::plugin);
    CHECK(box.info_of(not_elf).error->stage == PluginStage::elf);
  }

  TEST_CASE("plugins check says that a file would wait, in the words of a waiting file") {
    Sandbox box;
    box.add("good");
    box.scan();
    const PluginInfo clash = box.loader->check(kFixtures / "slug_clash.so");
    REQUIRE(clash.error);
    CHECK(clash.error->stage == PluginStage::registration);
    CHECK(clash.error->code == Errc::duplicate_slug);
    CHECK(clash.error->message == "would wait for slug 'good_flow' held by module 'good' (" +
                                      (box.dir / "good.so").string() + ")");
    const PluginInfo name = box.loader->check(kFixtures / "duplicate_module.so");
    REQUIRE(name.error);
    CHECK(name.error->code == Errc::duplicate_module);
    CHECK(name.error->message ==
          "would wait for module name 'good' held by " + (box.dir / "good.so").string());
  }

  TEST_CASE("plugins list and its --json show a waiting file and what it waits for") {
    Sandbox box;
    box.add("good");
    box.add("slug_clash", "a_clash.so");
    const auto listed = flowreg::test::run_process(
        {FLOWREG_BINARY, "--plugins", box.dir.string(), "plugins", "list", "--json"},
        box.root.string());
    REQUIRE(listed.exit_code == 0);
    const auto list = nlohmann::json::parse(listed.out);
    REQUIRE(list.size() == 2);
    CHECK(list[0]["file"] == (box.dir / "a_clash.so").string());
    CHECK(list[0]["status"] == "waiting");
    CHECK(list[0]["error"]["stage"] == "register");
    CHECK(list[0]["error"]["message"] == slug_held_by_good(box));
    CHECK(list[1]["status"] == "loaded");
    const auto text = flowreg::test::run_process(
        {FLOWREG_BINARY, "--plugins", box.dir.string(), "plugins", "list"}, box.root.string());
    CHECK(text.out.find("a_clash.so  waiting  module=clash") != std::string::npos);
    CHECK(text.out.find("[register] " + slug_held_by_good(box)) != std::string::npos);
  }

  TEST_CASE(
      "regression: plugins check FILE with a relative plugins directory reported the file as "
      "conflicting with itself") {
    Sandbox box;
    box.add("good");
    std::ofstream(box.root / "flowreg.yaml") << "plugins:\n  dir: plugins.d\n";
    for (const std::vector<std::string>& dir_args :
         {std::vector<std::string>{"--plugins", "plugins.d"},
          std::vector<std::string>{"--plugins", "./plugins.d/"},
          std::vector<std::string>{"--config", "flowreg.yaml"}}) {
      for (const std::string& file :
           {std::string("plugins.d/good.so"), (box.dir / "good.so").string()}) {
        CAPTURE(dir_args[1]);
        CAPTURE(file);
        std::vector<std::string> args{FLOWREG_BINARY};
        args.insert(args.end(), dir_args.begin(), dir_args.end());
        args.insert(args.end(), {"plugins", "check", file});
        const auto checked = flowreg::test::run_process(args, box.root.string());
        CHECK_MESSAGE(checked.exit_code == 0, checked.out << checked.err);
        CHECK(checked.out == file + ": ok (module good, abi 1.1, flows: good_flow)\n");
      }
    }
    // A different file of the same module still conflicts.
    const auto other =
        flowreg::test::run_process({FLOWREG_BINARY, "--plugins", "plugins.d", "plugins", "check",
                                    (kFixtures / "duplicate_module.so").string()},
                                   box.root.string());
    CHECK(other.exit_code != 0);
    CHECK(
        other.err.find("[register] would wait for module name 'good' held by plugins.d/good.so") !=
        std::string::npos);
  }
}
