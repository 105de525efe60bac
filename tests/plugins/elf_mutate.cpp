// Builds the malformed ELF fixtures from a valid plugin (a host tool of the build, not a plugin):
//   elf_mutate MODE IN OUT
// MODE: zero-shstrndx      e_shstrndx = 0 (no section-name table)
//       empty-shstrtab     the section-name table's size is 0
//       huge-shstrtab      the section-name table claims 1 GiB
//       truncated          the first half of the file only
//       machine-aarch64    e_machine = EM_AARCH64 (a file for another architecture)
//       shstrtab-no-nul    the section-name table's last byte is not NUL
//       dynstr-no-nul      the dynamic string table's last byte is not NUL
#include <elf.h>

#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <string>

int main(int argc, char** argv) {
  if (argc != 4) {
    std::fprintf(stderr, "usage: elf_mutate MODE IN OUT\n");
    return 2;
  }
  const std::string mode = argv[1];
  std::ifstream in(argv[2], std::ios::binary);
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  Elf64_Ehdr ehdr;
  if (bytes.size() < sizeof ehdr || std::memcmp(bytes.data(), ELFMAG, SELFMAG) != 0 ||
      bytes[EI_CLASS] != ELFCLASS64) {
    std::fprintf(stderr, "elf_mutate: %s is not a 64-bit ELF file\n", argv[2]);
    return 1;
  }
  std::memcpy(&ehdr, bytes.data(), sizeof ehdr);
  auto shstrtab_offset = [&]() -> std::size_t {
    return ehdr.e_shoff + std::size_t{ehdr.e_shstrndx} * ehdr.e_shentsize;
  };
  auto patch_shstrtab_size = [&](Elf64_Xword size) {
    Elf64_Shdr shdr;
    const std::size_t at = shstrtab_offset();
    if (at + sizeof shdr > bytes.size()) return false;
    std::memcpy(&shdr, bytes.data() + at, sizeof shdr);
    shdr.sh_size = size;
    std::memcpy(bytes.data() + at, &shdr, sizeof shdr);
    return true;
  };
  // Overwrites the last byte of section `index` (a string table) with 'x'.
  auto unterminate = [&](std::size_t index) {
    Elf64_Shdr shdr;
    const std::size_t at = ehdr.e_shoff + index * ehdr.e_shentsize;
    if (at + sizeof shdr > bytes.size()) return false;
    std::memcpy(&shdr, bytes.data() + at, sizeof shdr);
    if (shdr.sh_size == 0 || shdr.sh_offset + shdr.sh_size > bytes.size()) return false;
    bytes[shdr.sh_offset + shdr.sh_size - 1] = 'x';
    return true;
  };
  auto dynstr_index = [&]() -> std::size_t {
    for (std::size_t i = 0; i < ehdr.e_shnum; ++i) {
      Elf64_Shdr shdr;
      const std::size_t at = ehdr.e_shoff + i * ehdr.e_shentsize;
      if (at + sizeof shdr > bytes.size()) break;
      std::memcpy(&shdr, bytes.data() + at, sizeof shdr);
      if (shdr.sh_type == SHT_DYNSYM) return shdr.sh_link;
    }
    return 0;
  };
  bool ok = true;
  if (mode == "zero-shstrndx") {
    ehdr.e_shstrndx = 0;
    std::memcpy(bytes.data(), &ehdr, sizeof ehdr);
  } else if (mode == "empty-shstrtab") {
    ok = patch_shstrtab_size(0);
  } else if (mode == "huge-shstrtab") {
    ok = patch_shstrtab_size(Elf64_Xword{1} << 30);
  } else if (mode == "truncated") {
    bytes.resize(bytes.size() / 2);
  } else if (mode == "shstrtab-no-nul") {
    ok = unterminate(ehdr.e_shstrndx);
  } else if (mode == "dynstr-no-nul") {
    ok = dynstr_index() != 0 && unterminate(dynstr_index());
  } else if (mode == "machine-aarch64") {
    ehdr.e_machine = EM_AARCH64;
    std::memcpy(bytes.data(), &ehdr, sizeof ehdr);
  } else {
    std::fprintf(stderr, "elf_mutate: unknown mode %s\n", mode.c_str());
    return 2;
  }
  if (!ok) {
    std::fprintf(stderr, "elf_mutate: %s: section headers out of range\n", argv[2]);
    return 1;
  }
  std::ofstream out(argv[3], std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  return out ? 0 : 1;
}
