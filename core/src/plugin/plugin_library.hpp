#pragma once
// A loaded plugin library: the only place that includes Boost.DLL.
//
// Thread-safety: invoke() may be called concurrently (the ABI requires plugins to be thread-safe);
// the rest is immutable after open(). The library is unloaded when the LoadedPlugin is destroyed:
// keep it in a shared_ptr held by everything that may still call into it.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <tl/expected.hpp>
#include <vector>

#include "flowreg/plugins.hpp"

namespace flowreg::detail {

// Checks a file's exported symbols without running any of its code.
tl::expected<void, PluginError> check_exports(const std::filesystem::path& file);

class LoadedPlugin {
 public:
  // dlopen (RTLD_NOW | RTLD_LOCAL), ABI checks, describe(). The returned definition is the text
  // the plugin described itself with, not yet parsed (see parse_plugin_definition).
  static tl::expected<std::shared_ptr<LoadedPlugin>, PluginError> open(
      const std::filesystem::path& file);

  ~LoadedPlugin();
  LoadedPlugin(const LoadedPlugin&) = delete;
  LoadedPlugin& operator=(const LoadedPlugin&) = delete;

  const std::string& definition() const noexcept { return definition_; }
  const std::string& abi() const noexcept { return abi_; }
  const std::string& fingerprint() const noexcept { return fingerprint_; }
  const std::filesystem::path& file() const noexcept { return file_; }

  // Runs handler number `index`. Never throws what the plugin throws (the SDK cannot let it out).
  HandlerOutcome invoke(std::uint32_t index, std::string_view input,
                        std::string_view context) const;

 private:
  struct Impl;
  explicit LoadedPlugin(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  std::string definition_, abi_, fingerprint_;
  std::filesystem::path file_;
};

}  // namespace flowreg::detail
