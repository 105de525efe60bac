#include "plugin/plugin_library.hpp"

#include <cxxabi.h>
#include <dlfcn.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <boost/dll/shared_library.hpp>
#include <cstdlib>
#include <type_traits>
#include <typeinfo>

#include "flowreg/plugin_abi.h"
#include "plugin/elf_reader.hpp"
#include "util/strings.hpp"

namespace flowreg::detail {

namespace {

PluginError fail(PluginStage stage, std::string message) {
  return plugin_error(stage, std::move(message));
}

std::string demangle(const char* name) {
  int status = 0;
  char* readable = abi::__cxa_demangle(name, nullptr, nullptr, &status);
  std::string out = status == 0 && readable ? readable : name;
  std::free(readable);
  return out;
}

// What is in flight, in words: "std::runtime_error: what()". REQUIRES: called in a catch block.
std::string current_exception_text() {
  try {
    throw;
  } catch (const std::exception& e) {
    return fmt::format("{}: \"{}\"", demangle(typeid(e).name()), utf8_valid(e.what()));
  } catch (...) {
    const std::type_info* type = abi::__cxa_current_exception_type();
    return type ? fmt::format("an exception of type {}", demangle(type->name()))
                : std::string("an exception of unknown type");
  }
}

// A plugin built without the SDK may throw through the C boundary (the ABI forbids it; nothing
// stops it). Every call into plugin code goes through here, so that what it throws stops at the
// boundary and is reported as `function "NAME" of plugin FILE threw ...`. Thread cancellation
// (abi::__forced_unwind) must go on unwinding.
template <class Call>
auto call_plugin(std::string_view file, std::string_view function, std::string& thrown, Call&& call)
    -> decltype(call()) {
  try {
    return call();
  } catch (abi::__forced_unwind&) {
    throw;
  } catch (...) {
    thrown = fmt::format(
        "function \"{}\" of plugin {} threw {}; a plugin must not throw through "
        "the C interface (build it with flowreg/sdk.hpp, which catches "
        "everything)",
        function, file, current_exception_text());
    if constexpr (!std::is_void_v<decltype(call())>) return decltype(call()){};
  }
}

// The most a plugin may hand the host in one buffer (a definition, a handler's output or error).
// The configurable limits (worker.max_output_bytes, at most 128 MiB; 4 MiB for definitions) are
// checked by their callers; this one keeps a size the plugin chose from making the host copy
// gigabytes first.
constexpr std::size_t kMaxBufferBytes = std::size_t{128} << 20;

// Copies a plugin-owned buffer and gives it back to the plugin. Text from a plugin is made valid
// UTF-8 here, where it enters the host. `thrown` gets a message when release() throws, or when the
// buffer is over kMaxBufferBytes (then nothing is copied).
std::string take(std::string_view file, const flowreg_plugin_v1& abi, flowreg_buffer& buffer,
                 std::string& thrown) {
  std::string out;
  if (buffer.data && buffer.size > kMaxBufferBytes)
    thrown = fmt::format("plugin {} returned a buffer of {} bytes, over the limit of {} bytes",
                         file, buffer.size, kMaxBufferBytes);
  else if (buffer.data)
    out = utf8_valid(std::string_view(buffer.data, buffer.size));
  std::string release_thrown;
  if (buffer.data) call_plugin(file, "release", release_thrown, [&] { abi.release(&buffer); });
  if (thrown.empty()) thrown = std::move(release_thrown);
  return out;
}

}  // namespace

tl::expected<void, PluginError> check_exports(const std::filesystem::path& file,
                                              std::uint64_t max_bytes) {
  const int fd = ::open(file.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0) return tl::unexpected(fail(PluginStage::file, "cannot be opened"));
  std::string bytes;
  char buffer[65536];
  while (bytes.size() <= max_bytes) {
    const ssize_t n = ::read(fd, buffer, sizeof buffer);
    if (n <= 0) break;
    bytes.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(fd);
  if (bytes.size() > max_bytes)
    return tl::unexpected(
        fail(PluginStage::size,
             fmt::format("is over the limit (plugins.max_bytes) of {} bytes", max_bytes)));
  auto facts = check_plugin_elf(bytes);
  if (!facts) return tl::unexpected(facts.error());
  return {};
}

struct LoadedPlugin::Impl {
  boost::dll::shared_library library;
  const flowreg_plugin_v1* abi = nullptr;
  int held_fd = -1;
  ~Impl() {
    if (held_fd >= 0) ::close(held_fd);
  }
};

LoadedPlugin::LoadedPlugin(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}

// The library is opened with RTLD_NODELETE: destroying the handle leaves the code mapped.
LoadedPlugin::~LoadedPlugin() = default;

tl::expected<std::shared_ptr<LoadedPlugin>, PluginError> LoadedPlugin::open(
    const std::filesystem::path& file, int held_fd, std::string source) {
  if (source.empty()) source = file.string();
  auto impl = std::make_unique<Impl>();
  impl->held_fd = held_fd;
  // RTLD_NODELETE: see the header; the code stays mapped for the life of the process.
  const auto mode = boost::dll::load_mode::rtld_now | boost::dll::load_mode::rtld_local |
                    static_cast<boost::dll::load_mode::type>(RTLD_NODELETE);
  try {
    impl->library.load(file, mode);
  } catch (const std::exception& e) {
    return tl::unexpected(fail(PluginStage::load, fmt::format("cannot be loaded: {}", e.what())));
  }
  flowreg_plugin_entry entry = nullptr;
  try {
    entry = impl->library.get_alias<const flowreg_plugin_v1*()>(FLOWREG_PLUGIN_SYMBOL);
  } catch (const std::exception& e) {
    return tl::unexpected(fail(PluginStage::symbol, fmt::format("has no usable '{}' symbol: {}",
                                                                FLOWREG_PLUGIN_SYMBOL, e.what())));
  }
  std::string thrown;
  const flowreg_plugin_v1* abi =
      entry ? call_plugin(source, FLOWREG_PLUGIN_SYMBOL, thrown, [&] { return entry(); }) : nullptr;
  if (!thrown.empty()) return tl::unexpected(fail(PluginStage::abi, std::move(thrown)));
  if (!abi) return tl::unexpected(fail(PluginStage::abi, "its entry point returned no descriptor"));

  // The header first; nothing else is read before it is known to be ours and of our major.
  if (abi->magic != FLOWREG_PLUGIN_MAGIC)
    return tl::unexpected(
        fail(PluginStage::abi, fmt::format("has the magic value {:#018x}, not flowreg's "
                                           "{:#018x}: not a flowreg plugin, or a corrupt one",
                                           abi->magic, FLOWREG_PLUGIN_MAGIC)));
  const std::string version = fmt::format("{}.{}", abi->abi_major, abi->abi_minor);
  if (abi->abi_major != FLOWREG_ABI_MAJOR)
    return tl::unexpected(
        fail(PluginStage::abi,
             fmt::format("was built for plugin ABI {}; this flowreg supports ABI {}.0 to {}.{}: "
                         "rebuild the plugin against this flowreg's SDK",
                         version, FLOWREG_ABI_MAJOR, FLOWREG_ABI_MAJOR, FLOWREG_ABI_MINOR)));
  if (abi->abi_minor > FLOWREG_ABI_MINOR)
    return tl::unexpected(
        fail(PluginStage::abi,
             fmt::format("was built for plugin ABI {}, newer than this flowreg's {}.{}: upgrade "
                         "flowreg or rebuild the plugin against this flowreg's SDK",
                         version, FLOWREG_ABI_MAJOR, FLOWREG_ABI_MINOR)));
  if (abi->struct_size < sizeof(flowreg_plugin_v1))
    return tl::unexpected(
        fail(PluginStage::abi, fmt::format("has a {}-byte descriptor; ABI {} needs {} bytes",
                                           abi->struct_size, version, sizeof(flowreg_plugin_v1))));
  if (!abi->describe || !abi->invoke || !abi->release)
    return tl::unexpected(
        fail(PluginStage::abi, "its descriptor lacks describe, invoke or release"));
  impl->abi = abi;

  flowreg_buffer buffer{nullptr, 0};
  const int32_t status =
      call_plugin(source, "describe", thrown, [&] { return abi->describe(&buffer); });
  if (!thrown.empty()) return tl::unexpected(fail(PluginStage::definition, std::move(thrown)));
  std::string text = take(source, *abi, buffer, thrown);
  if (!thrown.empty()) return tl::unexpected(fail(PluginStage::definition, std::move(thrown)));
  if (status != FLOWREG_OK)
    return tl::unexpected(
        fail(PluginStage::definition, fmt::format("failed to describe itself: {}", text)));
  // Not parsed here: the text is untrusted, and parse_plugin_definition bounds it first.
  auto plugin = std::shared_ptr<LoadedPlugin>(new LoadedPlugin(std::move(impl)));
  plugin->definition_ = std::move(text);
  plugin->abi_ = version;
  plugin->fingerprint_ = abi->fingerprint ? utf8_valid(abi->fingerprint) : "";
  plugin->file_ = file;
  plugin->source_ = std::move(source);
  return plugin;
}

HandlerOutcome LoadedPlugin::invoke(std::uint32_t index, std::string_view input,
                                    std::string_view context) const {
  const flowreg_plugin_v1& abi = *impl_->abi;
  const std::string handler = index < handler_names_.size()
                                  ? fmt::format("handler '{}'", handler_names_[index])
                                  : fmt::format("handler {}", index);
  flowreg_buffer buffer{nullptr, 0};
  std::string thrown;
  const int32_t status = call_plugin(source_, "invoke", thrown, [&] {
    return abi.invoke(index, input.data(), input.size(), context.data(), context.size(), &buffer);
  });
  if (!thrown.empty()) {
    // The buffer is in an unknown state after a throw: it is neither read nor released.
    return {HandlerOutcome::Status::permanent, fmt::format("{}: {}", handler, thrown)};
  }
  std::string body = take(source_, abi, buffer, thrown);
  if (!thrown.empty())
    return {HandlerOutcome::Status::permanent, fmt::format("{}: {}", handler, thrown)};
  switch (status) {
    case FLOWREG_OK:
      return {HandlerOutcome::Status::ok, std::move(body)};
    case FLOWREG_RETRY:
      return {HandlerOutcome::Status::retry, std::move(body)};
    case FLOWREG_PERMANENT:
      return {HandlerOutcome::Status::permanent, std::move(body)};
    case FLOWREG_SNOOZE:
      return {HandlerOutcome::Status::snooze, std::move(body)};
    default:
      return {
          HandlerOutcome::Status::permanent,
          fmt::format("plugin {} answered status {} for {}: {}", source_, status, handler, body)};
  }
}

}  // namespace flowreg::detail
