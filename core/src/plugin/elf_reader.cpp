#include "plugin/elf_reader.hpp"

// Why elfutils' libelf and not a reader of our own: libelf is the ELF library of the toolchain
// (eu-readelf, libdw, systemd-coredump use it), is fuzzed continuously, and already does the part
// that is easy to get wrong: extended section numbering (e_shnum/e_shstrndx of 0 or SHN_XINDEX
// with the real values in section 0), range checks of every header table against the image, and
// string lookups that refuse an offset outside its table or a string without its NUL. Over an
// image (elf_memory) it reads section contents in place and checks each section's range against
// the image size before touching it, so a header that claims a 1 GiB string table costs nothing.
//
// What libelf does not decide for us is checked here first, on the raw header, before libelf sees
// the bytes: the class, byte order and machine of this host (so that libelf never has to convert a
// foreign byte order, and so that a file for another machine is named as such), and ET_DYN.
// libelf's elf_memory takes a writable image; it gets a private copy, never the caller's bytes.

#include <elf.h>
#include <fmt/format.h>
#include <gelf.h>
#include <libelf.h>

#include <cstring>
#include <memory>

#include "flowreg/plugin_abi.h"

namespace flowreg::detail {

namespace {

#if defined(__x86_64__)
constexpr std::uint16_t kHostMachine = EM_X86_64;
#elif defined(__aarch64__)
constexpr std::uint16_t kHostMachine = EM_AARCH64;
#elif defined(__i386__)
constexpr std::uint16_t kHostMachine = EM_386;
#elif defined(__arm__)
constexpr std::uint16_t kHostMachine = EM_ARM;
#elif defined(__riscv)
constexpr std::uint16_t kHostMachine = EM_RISCV;
#elif defined(__powerpc64__)
constexpr std::uint16_t kHostMachine = EM_PPC64;
#elif defined(__s390x__)
constexpr std::uint16_t kHostMachine = EM_S390;
#elif defined(__loongarch__)
constexpr std::uint16_t kHostMachine = 258;  // EM_LOONGARCH
#else
#error "flowreg: unknown host machine for the ELF check"
#endif
constexpr unsigned char kHostClass = sizeof(void*) == 8 ? ELFCLASS64 : ELFCLASS32;
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
constexpr unsigned char kHostData = ELFDATA2LSB;
#else
constexpr unsigned char kHostData = ELFDATA2MSB;
#endif

tl::unexpected<PluginError> elf_error(std::string message) {
  return tl::unexpected(plugin_error(PluginStage::elf, std::move(message)));
}

std::string libelf_error() {
  const char* message = elf_errmsg(-1);
  return message ? message : "unknown libelf error";
}

std::string host_description() {
  return fmt::format("{}-bit {} {}", kHostClass == ELFCLASS64 ? 64 : 32,
                     kHostData == ELFDATA2LSB ? "little-endian" : "big-endian",
                     elf_machine_name(kHostMachine));
}

// A 16-bit field of the raw header in the file's own byte order. REQUIRES: offset + 2 <= size.
std::uint16_t u16_at(std::string_view bytes, std::size_t offset, unsigned char data) {
  const auto b0 = static_cast<unsigned char>(bytes[offset]);
  const auto b1 = static_cast<unsigned char>(bytes[offset + 1]);
  return data == ELFDATA2LSB ? static_cast<std::uint16_t>(b0 | (b1 << 8))
                             : static_cast<std::uint16_t>((b0 << 8) | b1);
}

std::string_view type_name(std::uint16_t type) {
  switch (type) {
    case ET_NONE:
      return "an ELF file of no type";
    case ET_REL:
      return "a relocatable object file (.o)";
    case ET_EXEC:
      return "an executable";
    case ET_CORE:
      return "a core dump";
    default:
      return "an ELF file of an unknown type";
  }
}

// The raw header, before libelf: magic, class, byte order, version, machine and type.
tl::expected<void, PluginError> check_header(std::string_view bytes) {
  if (bytes.size() < SELFMAG || std::memcmp(bytes.data(), ELFMAG, SELFMAG) != 0)
    return elf_error("is not an ELF file (no ELF magic at its start)");
  // e_type and e_machine sit at the same offsets (16 and 18) in both classes.
  if (bytes.size() < 20) return elf_error("is truncated: it ends inside its ELF header");
  const auto cls = static_cast<unsigned char>(bytes[EI_CLASS]);
  const auto data = static_cast<unsigned char>(bytes[EI_DATA]);
  if (cls != ELFCLASS32 && cls != ELFCLASS64)
    return elf_error(fmt::format("has an invalid ELF class ({}) in its header", cls));
  if (data != ELFDATA2LSB && data != ELFDATA2MSB)
    return elf_error(fmt::format("has an invalid ELF byte order ({}) in its header", data));
  if (bytes[EI_VERSION] != EV_CURRENT)
    return elf_error(fmt::format("has an unknown ELF version ({}) in its header",
                                 static_cast<unsigned char>(bytes[EI_VERSION])));
  const std::uint16_t machine = u16_at(bytes, 18, data);
  if (machine != kHostMachine || cls != kHostClass || data != kHostData)
    return elf_error(fmt::format("is an ELF file for {} ({}-bit, {}); this flowreg runs on {}",
                                 elf_machine_name(machine), cls == ELFCLASS64 ? 64 : 32,
                                 data == ELFDATA2LSB ? "little-endian" : "big-endian",
                                 host_description()));
  const std::uint16_t type = u16_at(bytes, 16, data);
  if (type != ET_DYN)
    return elf_error(
        fmt::format("is {}, not a shared object (.so): build the plugin as a shared "
                    "library (add_library(... MODULE) or flowreg_add_plugin)",
                    type_name(type)));
  const std::size_t header_size = cls == ELFCLASS64 ? sizeof(Elf64_Ehdr) : sizeof(Elf32_Ehdr);
  if (bytes.size() < header_size) return elf_error("is truncated: it ends inside its ELF header");
  return {};
}

struct ElfCloser {
  void operator()(Elf* elf) const noexcept { elf_end(elf); }
};

bool libelf_ready() {
  // elf_version must be called once before any other libelf function; the static makes it so.
  static const bool ready = elf_version(EV_CURRENT) != EV_NONE;
  return ready;
}

// The range [offset, offset + size) lies inside a file of `file_size` bytes (no overflow).
bool inside(std::uint64_t offset, std::uint64_t size, std::size_t file_size) {
  return offset <= file_size && size <= file_size - offset;
}

// A string table's last byte is NUL. elf_strptr() checks each name by searching backwards from
// the table's end for a NUL (memrchr): without one at the end, every lookup scans the table, and a
// file with a million symbols and a large table costs the host their product in CPU. REQUIRES:
// the table lies inside `bytes`.
bool ends_in_nul(std::string_view bytes, const GElf_Shdr& table) {
  return table.sh_size > 0 && bytes[table.sh_offset + table.sh_size - 1] == '\0';
}

}  // namespace

std::string elf_machine_name(std::uint16_t machine) {
  switch (machine) {
    case EM_X86_64:
      return "x86-64";
    case EM_386:
      return "Intel 80386";
    case EM_AARCH64:
      return "AArch64";
    case EM_ARM:
      return "ARM";
    case EM_RISCV:
      return "RISC-V";
    case EM_PPC64:
      return "PowerPC64";
    case EM_PPC:
      return "PowerPC";
    case EM_S390:
      return "IBM S/390";
    case EM_MIPS:
      return "MIPS";
    case EM_SPARCV9:
      return "SPARC v9";
    case EM_IA_64:
      return "IA-64";
    case 258:
      return "LoongArch";
    default:
      return fmt::format("machine type {}", machine);
  }
}

tl::expected<ElfFacts, PluginError> inspect_elf(std::string_view bytes) {
  if (auto header = check_header(bytes); !header) return tl::unexpected(header.error());
  if (!libelf_ready())
    return elf_error(fmt::format("cannot be read: libelf failed to start ({})", libelf_error()));

  // The private copy libelf may treat as its own (see the top of this file).
  const std::size_t size = bytes.size();
  std::unique_ptr<char[]> image(new char[size]);
  std::memcpy(image.get(), bytes.data(), size);
  std::unique_ptr<Elf, ElfCloser> elf(elf_memory(image.get(), size));
  if (!elf || elf_kind(elf.get()) != ELF_K_ELF)
    return elf_error(fmt::format("is not a readable ELF file: {} (truncated or corrupt)",
                                 elf ? "not an ELF object" : libelf_error()));

  ElfFacts facts;
  facts.machine = kHostMachine;
  std::size_t sections = 0, names = 0, segments = 0;
  if (elf_getshdrnum(elf.get(), &sections) != 0)
    return elf_error(fmt::format("has an unreadable section header table: {}", libelf_error()));
  if (elf_getshdrstrndx(elf.get(), &names) != 0)
    return elf_error(fmt::format("has an unreadable section-name table index: {}", libelf_error()));
  if (elf_getphdrnum(elf.get(), &segments) != 0)
    return elf_error(fmt::format("has an unreadable program header table: {}", libelf_error()));
  facts.sections = sections;
  if (sections == 0) {
    GElf_Ehdr ehdr;
    if (gelf_getehdr(elf.get(), &ehdr) && ehdr.e_shoff >= size)
      return elf_error(
          fmt::format("is truncated: its section headers (at offset {}) lie past its "
                      "end ({} bytes)",
                      ehdr.e_shoff, size));
    return elf_error("has no section headers (stripped of them, or truncated)");
  }
  if (names == SHN_UNDEF || names >= sections)
    return elf_error(
        fmt::format("has no usable section-name table (e_shstrndx is {}, with {} "
                    "sections)",
                    names, sections));
  if (segments == 0) return elf_error("has no program headers: the dynamic loader cannot map it");
  {
    GElf_Shdr shdr;
    Elf_Scn* scn = elf_getscn(elf.get(), names);
    if (!scn || !gelf_getshdr(scn, &shdr))
      return elf_error(fmt::format("has an unreadable section-name table: {}", libelf_error()));
    if (shdr.sh_type != SHT_STRTAB || shdr.sh_size == 0)
      return elf_error(
          fmt::format("has an empty or invalid section-name table (section {}, type "
                      "{}, {} bytes)",
                      names, shdr.sh_type, shdr.sh_size));
    if (!inside(shdr.sh_offset, shdr.sh_size, size))
      return elf_error(
          fmt::format("has a section-name table of {} bytes at offset {}, outside the "
                      "file ({} bytes): truncated or corrupt",
                      shdr.sh_size, shdr.sh_offset, size));
    if (!ends_in_nul(bytes, shdr))
      return elf_error(fmt::format(
          "has a section-name table (section {}) that does not end in a NUL byte: corrupt", names));
  }

  // Every segment the dynamic loader maps must be in the file: a cut file would otherwise crash
  // (SIGBUS) whoever touches the missing pages.
  for (std::size_t i = 0; i < segments; ++i) {
    GElf_Phdr phdr;
    if (!gelf_getphdr(elf.get(), static_cast<int>(i), &phdr))
      return elf_error(fmt::format("has an unreadable program header {}: {}", i, libelf_error()));
    if (!inside(phdr.p_offset, phdr.p_filesz, size))
      return elf_error(
          fmt::format("is truncated or corrupt: segment {} needs bytes up to {}, the "
                      "file has {}",
                      i, phdr.p_offset + phdr.p_filesz, size));
  }

  Elf_Scn* dynsym = nullptr;
  GElf_Shdr dynsym_header{};
  std::size_t entry_section = 0;
  for (Elf_Scn* scn = elf_nextscn(elf.get(), nullptr); scn; scn = elf_nextscn(elf.get(), scn)) {
    GElf_Shdr shdr;
    if (!gelf_getshdr(scn, &shdr))
      return elf_error(fmt::format("has an unreadable section header: {}", libelf_error()));
    const std::size_t index = elf_ndxscn(scn);
    if (shdr.sh_type != SHT_NOBITS && !inside(shdr.sh_offset, shdr.sh_size, size))
      return elf_error(
          fmt::format("is truncated or corrupt: section {} needs bytes up to {}, the "
                      "file has {}",
                      index, shdr.sh_offset + shdr.sh_size, size));
    const char* name = elf_strptr(elf.get(), names, shdr.sh_name);
    if (!name)
      return elf_error(fmt::format("has a corrupt section-name table (section {}'s name: {})",
                                   index, libelf_error()));
    if (std::strcmp(name, FLOWREG_PLUGIN_SECTION) == 0) {
      facts.has_entry_section = true;
      entry_section = index;
    }
    // The table the dynamic loader (dlsym) reads; .symtab may be stripped and is never needed.
    if (shdr.sh_type == SHT_DYNSYM && !dynsym) {
      dynsym = scn;
      dynsym_header = shdr;
    }
  }
  if (!dynsym) return facts;  // exports nothing; check_plugin_elf says so

  if (dynsym_header.sh_link == SHN_UNDEF || dynsym_header.sh_link >= sections)
    return elf_error(
        fmt::format("has a dynamic symbol table whose string table index ({}) is "
                    "invalid",
                    dynsym_header.sh_link));
  {
    GElf_Shdr strtab;
    Elf_Scn* scn = elf_getscn(elf.get(), dynsym_header.sh_link);
    if (!scn || !gelf_getshdr(scn, &strtab) || strtab.sh_type != SHT_STRTAB ||
        strtab.sh_size == 0 || !inside(strtab.sh_offset, strtab.sh_size, size) ||
        !ends_in_nul(bytes, strtab))
      return elf_error(fmt::format(
          "has a dynamic string table (section {}) that is empty, outside the file or does not "
          "end in a NUL byte: corrupt",
          dynsym_header.sh_link));
  }
  Elf_Data* data = elf_getdata(dynsym, nullptr);
  if (!data)
    return elf_error(fmt::format("has an unreadable dynamic symbol table: {}", libelf_error()));
  const std::size_t entry_size = gelf_fsize(elf.get(), ELF_T_SYM, 1, EV_CURRENT);
  if (entry_size == 0) return elf_error("has dynamic symbols of an unknown size");
  facts.dynamic_symbols = data->d_size / entry_size;
  for (std::size_t i = 1; i < facts.dynamic_symbols; ++i) {  // entry 0 is the null symbol
    GElf_Sym sym;
    if (!gelf_getsym(data, static_cast<int>(i), &sym))
      return elf_error(fmt::format("has an unreadable dynamic symbol {}: {}", i, libelf_error()));
    const char* name = elf_strptr(elf.get(), dynsym_header.sh_link, sym.st_name);
    if (!name)
      return elf_error(fmt::format("has a corrupt dynamic string table (symbol {}'s name: {})", i,
                                   libelf_error()));
    if (std::strcmp(name, FLOWREG_PLUGIN_SYMBOL) != 0) continue;
    const unsigned bind = GELF_ST_BIND(sym.st_info);
    if (sym.st_shndx == SHN_UNDEF || (bind != STB_GLOBAL && bind != STB_WEAK)) continue;
    facts.exports_entry = true;
    if (facts.has_entry_section && sym.st_shndx == entry_section)
      facts.entry_in_entry_section = true;
  }
  return facts;
}

tl::expected<ElfFacts, PluginError> check_plugin_elf(std::string_view bytes) {
  auto facts = inspect_elf(bytes);
  if (!facts) return facts;
  if (auto entry = check_entry_symbol(*facts); !entry) return tl::unexpected(entry.error());
  return facts;
}

tl::expected<void, PluginError> check_entry_symbol(const ElfFacts& facts) {
  if (!facts.exports_entry)
    return tl::unexpected(plugin_error(
        PluginStage::symbol,
        fmt::format("exports no '{}' symbol in section '{}': not a flowreg plugin (build "
                    "it with FLOWREG_PLUGIN from flowreg/sdk.hpp)",
                    FLOWREG_PLUGIN_SYMBOL, FLOWREG_PLUGIN_SECTION)));
  if (!facts.entry_in_entry_section)
    return tl::unexpected(plugin_error(
        PluginStage::symbol,
        fmt::format("exports '{}' outside section '{}': not a flowreg plugin (build it "
                    "with FLOWREG_PLUGIN from flowreg/sdk.hpp)",
                    FLOWREG_PLUGIN_SYMBOL, FLOWREG_PLUGIN_SECTION)));
  return {};
}

}  // namespace flowreg::detail
