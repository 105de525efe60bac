#include "plugin/plugin_library.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <boost/dll/library_info.hpp>
#include <boost/dll/shared_library.hpp>

#include "flowreg/plugin_abi.h"
#include "util/strings.hpp"

namespace flowreg::detail {

namespace {

PluginError fail(std::string stage, std::string message) {
  return PluginError{std::move(stage), std::move(message)};
}

// Copies a plugin-owned buffer and gives it back to the plugin. Text from a plugin is made valid
// UTF-8 here, where it enters the host.
std::string take(const flowreg_plugin_v1& abi, flowreg_buffer& buffer) {
  std::string out = buffer.data ? utf8_valid(std::string_view(buffer.data, buffer.size)) : "";
  if (buffer.data) abi.release(&buffer);
  return out;
}

}  // namespace

tl::expected<void, PluginError> check_exports(const std::filesystem::path& file) {
  std::vector<std::string> symbols;
  try {
    boost::dll::library_info info(file, /*throw_if_not_native=*/true);
    symbols = info.symbols(FLOWREG_PLUGIN_SECTION);
  } catch (const std::exception& e) {
    return tl::unexpected(
        fail("elf", fmt::format("is not a loadable ELF shared object ({})", e.what())));
  }
  if (std::find(symbols.begin(), symbols.end(), FLOWREG_PLUGIN_SYMBOL) == symbols.end())
    return tl::unexpected(fail(
        "symbol", fmt::format("exports no '{}' symbol in section '{}': not a flowreg plugin (build "
                              "it with FLOWREG_PLUGIN from flowreg/sdk.hpp)",
                              FLOWREG_PLUGIN_SYMBOL, FLOWREG_PLUGIN_SECTION)));
  return {};
}

struct LoadedPlugin::Impl {
  boost::dll::shared_library library;
  const flowreg_plugin_v1* abi = nullptr;
};

LoadedPlugin::LoadedPlugin(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

LoadedPlugin::~LoadedPlugin() = default;  // unloads the library last, after every use

tl::expected<std::shared_ptr<LoadedPlugin>, PluginError> LoadedPlugin::open(
    const std::filesystem::path& file) {
  if (auto exports = check_exports(file); !exports) return tl::unexpected(exports.error());

  auto impl = std::make_unique<Impl>();
  try {
    impl->library.load(file, boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local);
  } catch (const std::exception& e) {
    return tl::unexpected(fail("load", fmt::format("cannot be loaded: {}", e.what())));
  }
  flowreg_plugin_entry entry = nullptr;
  try {
    entry = impl->library.get_alias<const flowreg_plugin_v1*()>(FLOWREG_PLUGIN_SYMBOL);
  } catch (const std::exception& e) {
    return tl::unexpected(fail(
        "symbol", fmt::format("has no usable '{}' symbol: {}", FLOWREG_PLUGIN_SYMBOL, e.what())));
  }
  const flowreg_plugin_v1* abi = entry ? entry() : nullptr;
  if (!abi) return tl::unexpected(fail("abi", "its entry point returned no descriptor"));

  // The header first; nothing else is read before it is known to be ours and of our major.
  if (abi->magic != FLOWREG_PLUGIN_MAGIC)
    return tl::unexpected(
        fail("abi", fmt::format("has the magic value {:#018x}, not flowreg's "
                                "{:#018x}: not a flowreg plugin, or a corrupt one",
                                abi->magic, FLOWREG_PLUGIN_MAGIC)));
  const std::string version = fmt::format("{}.{}", abi->abi_major, abi->abi_minor);
  if (abi->abi_major != FLOWREG_ABI_MAJOR)
    return tl::unexpected(fail(
        "abi", fmt::format("was built for plugin ABI {}; this flowreg supports ABI {}.0 to {}.{}: "
                           "rebuild the plugin against this flowreg's SDK",
                           version, FLOWREG_ABI_MAJOR, FLOWREG_ABI_MAJOR, FLOWREG_ABI_MINOR)));
  if (abi->abi_minor > FLOWREG_ABI_MINOR)
    return tl::unexpected(fail(
        "abi", fmt::format("was built for plugin ABI {}, newer than this flowreg's {}.{}: upgrade "
                           "flowreg or rebuild the plugin against this flowreg's SDK",
                           version, FLOWREG_ABI_MAJOR, FLOWREG_ABI_MINOR)));
  if (abi->struct_size < sizeof(flowreg_plugin_v1))
    return tl::unexpected(
        fail("abi", fmt::format("has a {}-byte descriptor; ABI {} needs {} bytes", abi->struct_size,
                                version, sizeof(flowreg_plugin_v1))));
  if (!abi->describe || !abi->invoke || !abi->release)
    return tl::unexpected(fail("abi", "its descriptor lacks describe, invoke or release"));
  impl->abi = abi;

  flowreg_buffer buffer{nullptr, 0};
  const int32_t status = abi->describe(&buffer);
  std::string text = take(*abi, buffer);
  if (status != FLOWREG_OK)
    return tl::unexpected(fail("definition", fmt::format("failed to describe itself: {}", text)));
  // Not parsed here: the text is untrusted, and parse_plugin_definition bounds it first.
  auto plugin = std::shared_ptr<LoadedPlugin>(new LoadedPlugin(std::move(impl)));
  plugin->definition_ = std::move(text);
  plugin->abi_ = version;
  plugin->fingerprint_ = abi->fingerprint ? utf8_valid(abi->fingerprint) : "";
  plugin->file_ = file;
  return plugin;
}

HandlerOutcome LoadedPlugin::invoke(std::uint32_t index, std::string_view input,
                                    std::string_view context) const {
  const flowreg_plugin_v1& abi = *impl_->abi;
  flowreg_buffer buffer{nullptr, 0};
  const int32_t status =
      abi.invoke(index, input.data(), input.size(), context.data(), context.size(), &buffer);
  std::string body = take(abi, buffer);
  switch (status) {
    case FLOWREG_OK:
      return {HandlerOutcome::Status::ok, std::move(body)};
    case FLOWREG_RETRY:
      return {HandlerOutcome::Status::retry, std::move(body)};
    case FLOWREG_PERMANENT:
      return {HandlerOutcome::Status::permanent, std::move(body)};
    default:
      return {HandlerOutcome::Status::permanent,
              fmt::format("plugin {} answered status {} for handler {}: {}", file_.string(), status,
                          index, body)};
  }
}

}  // namespace flowreg::detail
