#pragma once
// What the host reads from a plugin file before any of its code runs: is it an ELF shared object
// for this machine, and does it export the flowreg entry symbol. The bytes are untrusted (any file
// dropped into the plugins directory): every offset and size is checked against the buffer before
// it is used, and nothing here allocates more than the size of the buffer.

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <tl/expected.hpp>

#include "flowreg/plugins.hpp"

namespace flowreg::detail {

// What inspect_elf learned about a well-formed ELF shared object for this machine.
struct ElfFacts {
  std::uint16_t machine = 0;        // e_machine (the host's own when inspect_elf succeeds)
  std::size_t sections = 0;         // number of section headers
  std::size_t dynamic_symbols = 0;  // entries of .dynsym (what dlsym can see)
  bool has_entry_section = false;   // a section named FLOWREG_PLUGIN_SECTION exists
  // FLOWREG_PLUGIN_SYMBOL is defined in .dynsym (global or weak), in which section:
  bool exports_entry = false;           // defined anywhere
  bool entry_in_entry_section = false;  // defined in FLOWREG_PLUGIN_SECTION (what the SDK does)
};

// Reads the ELF header, the section headers, the program headers and the dynamic symbol table of
// `bytes` (a whole plugin file).
//
// Contract (also what the fuzz harness relies on):
// - Total function: any byte string, of any length, returns; it never reads outside `bytes`,
//   never writes to it, and allocates at most a private copy of `bytes` plus libelf's per-section
//   descriptors (linear in the number of section headers that fit in the file). Thread-safe.
// - Success: `bytes` is an ELF shared object (ET_DYN) of this host's class, byte order and
//   machine, its section and program headers and every section's and segment's file range lie
//   inside `bytes`, its section names and dynamic symbol names are NUL-terminated strings inside
//   their string tables. Whether it exports the entry symbol is reported in the facts, not as an
//   error (see check_plugin_elf).
// - Failure: a PluginError at PluginStage::elf, saying what is wrong in words a user can act on,
//   e.g. "is an ELF file for AArch64; this flowreg runs on x86-64". The message does not name the
//   file (the caller prefixes it).
tl::expected<ElfFacts, PluginError> inspect_elf(std::string_view bytes);

// The entry symbol of facts from inspect_elf: a missing or misplaced FLOWREG_PLUGIN_SYMBOL is an
// error of stage "symbol".
tl::expected<void, PluginError> check_entry_symbol(const ElfFacts& facts);

// inspect_elf, then the entry symbol: a missing or misplaced FLOWREG_PLUGIN_SYMBOL is an error of
// stage "symbol".
tl::expected<ElfFacts, PluginError> check_plugin_elf(std::string_view bytes);

// "x86-64", "AArch64", ... or "machine type 1234" for an ELF e_machine value.
std::string elf_machine_name(std::uint16_t machine);

}  // namespace flowreg::detail
