// The flow catalogue (catalog/flow_catalog.hpp) on real plugins: the fixtures of tests/plugins in
// a drop-in directory of the test's own, and YAML flows beside them under each policy.
#include "catalog/flow_catalog.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <string>
#include <vector>

#include "support/result_text.hpp"
#include "unit/plugin_sandbox.hpp"

using namespace flowreg;
using detail::FlowCatalog;
using detail::UnresolvedHandlers;
using flowreg::test::Sandbox;

namespace {

// A configuration whose YAML flows use good.so's handler "good.echo", and, with `typo`, one step
// that names "good.ecoh", which nothing exports.
Config yaml_flows(const Sandbox& box, bool typo) {
  std::string text =
      "module: from_yaml\n"
      "flows:\n"
      "  - slug: yaml_echo\n"
      "    steps:\n"
      "      - {slug: one, handler: good.echo}\n";
  if (typo)
    text +=
        "  - slug: yaml_typo\n"
        "    steps:\n"
        "      - {slug: first, handler: good.echo}\n"
        "      - {slug: second, handler: good.ecoh, depends_on: [first]}\n";
  auto config = parse_config(text, box.root / "flows.yaml");
  REQUIRE_MESSAGE(config, flowreg::testing::failure_text(config));
  config->plugins.dir = box.dir;
  return *config;
}

FlowCatalog load(const Sandbox& box) {
  auto catalog = FlowCatalog::load_plugins(box.options());
  REQUIRE_MESSAGE(catalog, flowreg::testing::failure_text(catalog));
  return std::move(*catalog);
}

std::vector<std::string> slugs(const FlowCatalog& catalog) {
  std::vector<std::string> out;
  for (const auto& f : catalog.registry->list()) out.push_back(f->def.slug);
  return out;
}

}  // namespace

TEST_SUITE("flow_catalog") {
  TEST_CASE("loads the plugins of the directory and reports every file, loaded or not") {
    Sandbox box;
    box.add("good");
    box.add("no_symbol");
    const FlowCatalog catalog = load(box);
    REQUIRE(catalog.plugins.size() == 2);
    const auto status_of = [&](const std::string& name) {
      for (const auto& p : catalog.plugins)
        if (p.file.filename() == name) return p.status;
      FAIL("no status for " << name);
      return PluginStatus::loaded;
    };
    CHECK(status_of("good.so") == PluginStatus::loaded);
    CHECK(status_of("no_symbol.so") == PluginStatus::rejected);
    CHECK(slugs(catalog) == std::vector<std::string>{"good_flow"});
    CHECK(catalog.loader->handler("good.echo"));
  }

  TEST_CASE("a plugins directory that does not exist gives a catalogue without plugins") {
    Sandbox box;
    auto options = box.options();
    options.settings.dir = box.root / "absent";
    auto catalog = FlowCatalog::load_plugins(options);
    REQUIRE_MESSAGE(catalog, flowreg::testing::failure_text(catalog));
    CHECK(catalog->plugins.empty());
    CHECK(catalog->registry->size() == 0);
  }

  TEST_CASE("both policies register YAML flows whose handlers resolve, as one module") {
    for (const auto policy : {UnresolvedHandlers::refuse, UnresolvedHandlers::accept}) {
      CAPTURE(static_cast<int>(policy));
      Sandbox box;
      box.add("good");
      FlowCatalog catalog = load(box);
      const Config config = yaml_flows(box, false);
      auto added = catalog.add_flows(config, policy);
      REQUIRE_MESSAGE(added, flowreg::testing::failure_text(added));
      CHECK(slugs(catalog) == std::vector<std::string>{"good_flow", "yaml_echo"});
      const FlowRef flow = catalog.registry->get("yaml_echo");
      REQUIRE(flow);
      CHECK(flow->module == "from_yaml");
      CHECK(flow->source == (box.root / "flows.yaml").string());
    }
  }

  TEST_CASE(
      "refuse: a handler no loaded plugin exports registers none of the file's flows and names "
      "each such step, with a hint") {
    Sandbox box;
    box.add("good");
    FlowCatalog catalog = load(box);
    auto added = catalog.add_flows(yaml_flows(box, true), UnresolvedHandlers::refuse);
    REQUIRE_FALSE(added);
    CHECK(added.error().code == Errc::invalid_definition);
    CHECK(added.error().message == (box.root / "flows.yaml").string() +
                                       ": 1 handler(s) not found in the plugins of " +
                                       box.dir.string());
    REQUIRE(added.error().details.size() == 1);
    CHECK(added.error().details[0].where.file == (box.root / "flows.yaml").string());
    CHECK(added.error().details[0].message ==
          "flow 'yaml_typo': step 'second': handler 'good.ecoh' is not exported by any loaded "
          "plugin (did you mean 'good.echo'?)");
    CHECK(slugs(catalog) == std::vector<std::string>{"good_flow"});
    CHECK(catalog.registry->modules() == std::vector<std::string>{"good"});
  }

  TEST_CASE(
      "accept: a handler no loaded plugin exports does not keep the flows out; it stays "
      "unresolved") {
    Sandbox box;
    box.add("good");
    FlowCatalog catalog = load(box);
    auto added = catalog.add_flows(yaml_flows(box, true), UnresolvedHandlers::accept);
    REQUIRE_MESSAGE(added, flowreg::testing::failure_text(added));
    CHECK(slugs(catalog) == std::vector<std::string>{"good_flow", "yaml_echo", "yaml_typo"});
    CHECK_FALSE(catalog.loader->handler("good.ecoh"));
    CHECK(detail::unresolved_handlers(yaml_flows(box, true), *catalog.loader, catalog.plugins)
              .size() == 1);
  }

  TEST_CASE("without plugins, refuse names every step and accept registers the flows") {
    Sandbox box;
    SUBCASE("refuse") {
      FlowCatalog catalog = load(box);
      auto added = catalog.add_flows(yaml_flows(box, true), UnresolvedHandlers::refuse);
      REQUIRE_FALSE(added);
      // No loaded plugin exports anything: no hint either.
      CHECK(added.error().details.size() == 3);
      CHECK(added.error().details[0].message ==
            "flow 'yaml_echo': step 'one': handler 'good.echo' is not exported by any loaded "
            "plugin");
      CHECK(catalog.registry->size() == 0);
    }
    SUBCASE("accept") {
      FlowCatalog catalog = load(box);
      auto added = catalog.add_flows(yaml_flows(box, true), UnresolvedHandlers::accept);
      REQUIRE_MESSAGE(added, flowreg::testing::failure_text(added));
      CHECK(slugs(catalog) == std::vector<std::string>{"yaml_echo", "yaml_typo"});
    }
  }

  TEST_CASE("a YAML flow whose slug a plugin holds is refused under both policies") {
    for (const auto policy : {UnresolvedHandlers::refuse, UnresolvedHandlers::accept}) {
      CAPTURE(static_cast<int>(policy));
      Sandbox box;
      box.add("good");
      FlowCatalog catalog = load(box);
      auto config = parse_config(
          "module: from_yaml\nflows: [{slug: good_flow, steps: [{slug: s, handler: good.echo}]}]\n",
          box.root / "clash.yaml");
      REQUIRE(config);
      auto added = catalog.add_flows(*config, policy);
      REQUIRE_FALSE(added);
      CHECK(added.error().code == Errc::duplicate_slug);
      CHECK(catalog.registry->modules() == std::vector<std::string>{"good"});
    }
  }

  TEST_CASE("a configuration without flows adds no module") {
    Sandbox box;
    box.add("good");
    FlowCatalog catalog = load(box);
    Config config;
    config.module = "from_yaml";
    REQUIRE(catalog.add_flows(config, UnresolvedHandlers::refuse));
    CHECK(catalog.registry->modules() == std::vector<std::string>{"good"});
  }
}
