#pragma once
// A loaded plugin library: the only place that includes Boost.DLL.
//
// Thread-safety: invoke() may be called concurrently (the ABI requires plugins to be thread-safe);
// the rest is immutable after open().
//
// Lifetime: a LoadedPlugin is shared by everything that may still call into it (shared_ptr), but
// its code is never unloaded: the library is opened with RTLD_NODELETE and stays mapped for the
// life of the process. A plugin may leave code running that nobody holds a reference to (a thread
// started by its constructor, a callback registered with a library, a thread_local destructor);
// unmapping it would crash the process at some later point, for example when a new version
// replaces it or at exit. What is released with the last reference is the lock on the staged copy
// (so the cache may prune it) and the bookkeeping, never the code.

#include <cstdint>
#include <filesystem>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <tl/expected.hpp>
#include <vector>

#include "flowreg/plugins.hpp"

namespace flowreg::detail {

// Reads `file` (at most `max_bytes`) and checks it with check_plugin_elf (elf_reader.hpp): an ELF
// shared object for this machine exporting the flowreg entry symbol. No plugin code runs.
tl::expected<void, PluginError> check_exports(const std::filesystem::path& file,
                                              std::uint64_t max_bytes);

class LoadedPlugin {
 public:
  // dlopen (RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE), ABI checks, describe(). The returned definition
  // is the text the plugin described itself with, not yet parsed (see parse_plugin_definition).
  // REQUIRES: the caller checked the file's bytes (check_plugin_elf). `held_fd`, when not -1, is a
  // descriptor of `file` that the plugin owns from now on and closes when it is destroyed (the
  // loader's lock on the staged copy). `source` names the plugin in messages (the file the user
  // dropped in; default: `file`).
  static tl::expected<std::shared_ptr<LoadedPlugin>, PluginError> open(
      const std::filesystem::path& file, int held_fd = -1, std::string source = {});

  ~LoadedPlugin();
  LoadedPlugin(const LoadedPlugin&) = delete;
  LoadedPlugin& operator=(const LoadedPlugin&) = delete;

  const std::string& definition() const noexcept { return definition_; }
  const std::string& abi() const noexcept { return abi_; }
  const std::string& fingerprint() const noexcept { return fingerprint_; }
  const std::filesystem::path& file() const noexcept { return file_; }

  // The handlers' names ("module.handler", by index) once the definition is checked, for messages.
  // REQUIRES: the plugin is not yet shared with other threads.
  void name_handlers(std::vector<std::string> names) { handler_names_ = std::move(names); }
  const std::vector<std::string>& handler_names() const noexcept { return handler_names_; }

  // Runs handler number `index`. Never lets out what the plugin throws: a plugin not built with the
  // SDK may throw through the C boundary; that is caught here and reported as a permanent failure
  // naming the file, the function and the handler.
  HandlerOutcome invoke(std::uint32_t index, std::string_view input,
                        std::string_view context) const;

 private:
  struct Impl;
  explicit LoadedPlugin(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  std::string definition_, abi_, fingerprint_;
  std::filesystem::path file_;
  std::string source_;
  std::vector<std::string> handler_names_;  // for messages: "module.handler" by index
};

}  // namespace flowreg::detail
