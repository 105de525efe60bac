// Benchmark plugin: one binary, many modules. Its module name comes from the file it was loaded
// from (flowreg loads a private copy named by content hash), so copies that differ by a trailing
// byte are distinct modules: "p_<first 16 hex digits of the hash>", with one flow "<module>_flow".
#include <dlfcn.h>

#include <flowreg/sdk.hpp>
#include <string>

namespace {

void define(flowreg::sdk::Plugin& plugin) {
  plugin.handler("noop", [](const flowreg::sdk::json&) { return flowreg::sdk::json(nullptr); });
  plugin.flow(plugin.module() + "_flow").step("only", "noop");
}

const flowreg_plugin_v1* bench_entry() noexcept {
  static const std::string module = [] {
    Dl_info info{};
    dladdr(reinterpret_cast<void*>(&define), &info);
    std::string file = info.dli_fname ? info.dli_fname : "unknown";
    file = file.substr(file.rfind('/') + 1);
    return "p_" + file.substr(0, 16);
  }();
  return flowreg::sdk::detail::entry(module.c_str(), &define);
}

}  // namespace

BOOST_DLL_ALIAS_SECTIONED(bench_entry, flowreg_plugin, flowreg)
