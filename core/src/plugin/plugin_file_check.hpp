#pragma once
// The checks a plugin file passes before any of its code runs and before its bytes are trusted:
// the stages file, permissions, size, elf and allowlist of flowreg/plugins.hpp. Their messages are
// what a user reads when a file is refused: each says what is wrong with the file and what to do
// about it (the `chown` or `chmod` to run, the setting to change).
//
// Thread-safety: free functions without state; safe to call concurrently.
// Errors: a PluginError at the stage that refused the file. Messages do not name the file, except
// the permission messages (which name the file or directory to chown/chmod): the caller prefixes
// the file (PluginInfo::describe_error).

#include <sys/stat.h>
#include <sys/types.h>

#include <filesystem>
#include <string>
#include <tl/expected.hpp>

#include "flowreg/config.hpp"
#include "flowreg/plugins.hpp"
#include "plugin/elf_reader.hpp"

namespace flowreg::detail {

// A refusal at `stage` (code Errc::plugin), as the unexpected value of a stage's result: the one
// spelling shared by the pieces of the loader.
inline tl::unexpected<PluginError> reject(PluginStage stage, std::string message) {
  return tl::unexpected(plugin_error(stage, std::move(message)));
}

// The bytes of a plugin file, read once: they are hashed, checked and staged, so that what is
// loaded is exactly what was checked. Copyable and movable (a value).
struct FileBytes {
  std::string bytes;
  std::string sha256;
  ElfFacts elf;
};

// "a directory", "a FIFO", ... for a file that is not a regular file, as the file stage says it.
std::string file_kind(mode_t mode);

// The file and its directory must be owned by root or the trusted user `me` and not be writable by
// group or others: whoever can write them can run code in this process. `st` is the stat of `path`;
// `is_dir` says which of the two it is (for the message). Always succeeds when `allow_unsafe`.
tl::expected<void, PluginError> check_safety(const std::filesystem::path& path,
                                             const struct stat& st, bool is_dir, bool allow_unsafe,
                                             uid_t me);

// Stages: file, permissions, size, elf, allowlist. No plugin code runs. Reads `path` once (at most
// settings.max_bytes + 1 bytes, never blocking on a FIFO). `trusted_uid` is
// PluginLoaderOptions::trusted_uid (-1: the effective uid of this process). The entry symbol is
// not checked here (check_entry_symbol on the returned facts): a quarantined content keeps the
// stage of its quarantine.
// `sha256` is set as soon as the bytes are read, also when a later stage rejects them.
tl::expected<FileBytes, PluginError> read_checked(const std::filesystem::path& path,
                                                  const PluginSettings& settings, long trusted_uid,
                                                  std::string& sha256);

}  // namespace flowreg::detail
