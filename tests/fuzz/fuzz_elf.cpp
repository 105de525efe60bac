// The ELF reader the host runs on every file dropped into the plugins directory, before any of its
// code runs (detail::inspect_elf / check_plugin_elf). Whatever the bytes: no crash, no read outside
// them, no allocation beyond their size; a refusal is stage "elf" or "symbol" with a message that
// is valid UTF-8; facts returned are consistent.

#include <cstddef>
#include <cstdint>
#include <string_view>

#include "plugin/elf_reader.hpp"
#include "support.hpp"
#include "util/strings.hpp"

namespace {
// Plugins are larger than the other harnesses' inputs; the seeds are small shared objects.
constexpr std::size_t kMaxElfBytes = 1024 * 1024;
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace flowreg;
  if (size > kMaxElfBytes) return 0;
  const std::string_view bytes(reinterpret_cast<const char*>(data), size);
  const auto facts = detail::inspect_elf(bytes);
  if (!facts) {
    FUZZ_CHECK(facts.error().stage == PluginStage::elf);
    FUZZ_CHECK(!facts.error().message.empty());
    FUZZ_CHECK(detail::is_utf8(facts.error().message));
    return 0;
  }
  FUZZ_CHECK(facts->entry_in_entry_section <= facts->exports_entry);
  FUZZ_CHECK(facts->entry_in_entry_section <= facts->has_entry_section);
  const auto checked = detail::check_plugin_elf(bytes);
  FUZZ_CHECK(checked.has_value() == (facts->exports_entry && facts->entry_in_entry_section));
  if (!checked) {
    FUZZ_CHECK(checked.error().stage == PluginStage::symbol);
    FUZZ_CHECK(detail::is_utf8(checked.error().message));
  }
  return 0;
}
