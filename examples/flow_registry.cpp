// The flow registry API in use: load the plugins of a directory and the flows of a YAML file into
// a FlowRegistry, hear its changes, look a flow up by slug and call one of its handlers.
//
//   flow_registry_example PLUGIN_DIR FLOWS.yaml
//
// The program is also its own plugin inspector: the loader runs `EXE __inspect FILE` in a child
// process before a plugin is loaded in this one.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <flowreg/config.hpp>
#include <flowreg/flow_registry.hpp>
#include <flowreg/plugins.hpp>
#include <string>
#include <string_view>

namespace fs = std::filesystem;

namespace {

int fail(const std::string& what) {
  std::fprintf(stderr, "flow_registry_example: %s\n", what.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc == 3 && std::string_view(argv[1]) == "__inspect")
    return flowreg::PluginLoader::inspect_main(argv[2]);
  if (argc != 3) return fail("usage: flow_registry_example PLUGIN_DIR FLOWS.yaml");

  flowreg::FlowRegistry registry;
  // Every change, after readers can see it, in order.
  auto subscription = registry.subscribe([](const flowreg::ModuleEvent& e) {
    std::printf("event: module %s %s (%zu flows)\n", e.module.c_str(),
                std::string(to_string(e.kind)).c_str(), e.flows.size());
  });

  // The plugins: each file is checked and inspected in a child before it is loaded here.
  const fs::path cache =
      fs::temp_directory_path() / ("flowreg-example-" + std::to_string(::getpid()));
  flowreg::PluginLoaderOptions options;
  options.settings.dir = argv[1];
  options.cache_dir = cache;
  options.inspector = fs::canonical("/proc/self/exe");
  flowreg::PluginLoader loader(registry, options);
  auto plugins = loader.scan();
  if (!plugins) return fail(plugins.error().format());
  for (const auto& p : *plugins)
    std::printf("plugin %s: %s\n", p.file.filename().c_str(),
                std::string(to_string(p.status)).c_str());

  // The flows of a YAML file, registered as one module: all of them or none.
  auto config = flowreg::load_config(argv[2]);
  if (!config) return fail(config.error().format());
  flowreg::Module yaml{config->module, config->file.string(), config->flows, nullptr};
  if (auto ok = registry.register_module(std::move(yaml)); !ok) return fail(ok.error().format());

  // Lookups by slug take no lock; get() keeps the flow (and its plugin's code) alive.
  for (const auto& flow : registry.list())
    std::printf("flow %s@%s from module %s, %zu steps\n", flow->def.slug.c_str(),
                flow->version.c_str(), flow->module.c_str(), flow->def.steps.size());
  const flowreg::FlowRef word_count = registry.get("word_count");
  if (!word_count) return fail("word_count is not registered");

  // A step's handler, called directly (a worker does this for each claimed task).
  const auto& first = word_count->def.steps.front();
  const flowreg::HandlerRef handler = loader.handler(first.handler);
  if (!handler) return fail("no plugin exports " + first.handler);
  const auto outcome = handler.invoke(R"({"text": "one two\nthree"})");
  std::printf("%s -> %s\n", first.handler.c_str(), outcome.body.c_str());

  // Unregistering is atomic too; the subscription hears it.
  if (auto ok = registry.unregister_module(config->module, "example done"); !ok)
    return fail(ok.error().format());
  loader.stop();
  std::error_code ignored;
  fs::remove_all(cache, ignored);
  return outcome.status == flowreg::HandlerOutcome::Status::ok ? 0 : 1;
}
