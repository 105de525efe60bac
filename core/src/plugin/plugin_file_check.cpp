#include "plugin/plugin_file_check.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <cstring>

#include "util/sha256.hpp"

namespace flowreg::detail {

namespace fs = std::filesystem;

std::string file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISSOCK(mode)) return "a socket";
  if (S_ISLNK(mode)) return "a symbolic link";
  return "not a regular file";
}

tl::expected<void, PluginError> check_safety(const fs::path& path, const struct stat& st,
                                             bool is_dir, bool allow_unsafe, uid_t me) {
  if (allow_unsafe) return {};
  const char* what = is_dir ? "plugin directory" : "plugin file";
  if (st.st_uid != 0 && st.st_uid != me)
    return reject(PluginStage::permissions,
                  fmt::format("{} {} is owned by uid {}, not by root or the user running flowreg "
                              "(uid {}): run `chown {} {}` (or pass --allow-unsafe-plugins)",
                              what, path.string(), st.st_uid, me, me, path.string()));
  if (st.st_mode & (S_IWGRP | S_IWOTH))
    return reject(
        PluginStage::permissions,
        fmt::format("{} {} is writable by {} (mode {:04o}): run `chmod go-w {}` (or pass "
                    "--allow-unsafe-plugins)",
                    what, path.string(), (st.st_mode & S_IWOTH) ? "everyone" : "its group",
                    st.st_mode & 07777, path.string()));
  return {};
}

tl::expected<FileBytes, PluginError> read_checked(const fs::path& path,
                                                  const PluginSettings& settings, long trusted_uid,
                                                  std::string& sha256) {
  const PluginSettings& s = settings;
  struct stat lst {};
  if (lstat(path.c_str(), &lst) != 0)
    return reject(PluginStage::file, "cannot be read: no such file");
  struct stat st = lst;
  if (S_ISLNK(lst.st_mode)) {
    if (!s.allow_symlinks)
      return reject(PluginStage::file,
                    "is a symbolic link; plugins must be regular files (set "
                    "plugins.allow_symlinks: true to accept links)");
    if (stat(path.c_str(), &st) != 0)
      return reject(PluginStage::file, "is a dangling symbolic link");
  }
  if (!S_ISREG(st.st_mode))
    return reject(PluginStage::file,
                  fmt::format("is {}; plugins must be regular files", file_kind(st.st_mode)));
  struct stat dst {};
  const fs::path dir = path.parent_path().empty() ? fs::path(".") : path.parent_path();
  if (stat(dir.c_str(), &dst) != 0)
    return reject(PluginStage::file, "its directory cannot be read");
  const uid_t me = trusted_uid >= 0 ? static_cast<uid_t>(trusted_uid) : geteuid();
  if (auto ok = check_safety(dir, dst, true, s.allow_unsafe, me); !ok)
    return tl::unexpected(ok.error());
  if (auto ok = check_safety(path, st, false, s.allow_unsafe, me); !ok)
    return tl::unexpected(ok.error());
  if (static_cast<std::uint64_t>(st.st_size) > s.max_bytes)
    return reject(PluginStage::size, fmt::format("is {} bytes; the limit (plugins.max_bytes) is {}",
                                                 st.st_size, s.max_bytes));
  // O_NONBLOCK: never block on something that turned into a FIFO since the stat.
  const int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  if (fd < 0)
    return reject(PluginStage::file, fmt::format("cannot be opened: {}", std::strerror(errno)));
  FileBytes file;
  struct stat fst {};
  if (fstat(fd, &fst) != 0 || !S_ISREG(fst.st_mode)) {
    close(fd);
    return reject(PluginStage::file, "changed while being opened");
  }
  file.bytes.resize(static_cast<std::size_t>(
      std::min<std::uint64_t>(static_cast<std::uint64_t>(fst.st_size), s.max_bytes + 1)));
  std::size_t got = 0;
  while (got < file.bytes.size()) {
    const ssize_t n = read(fd, file.bytes.data() + got, file.bytes.size() - got);
    if (n <= 0) break;
    got += static_cast<std::size_t>(n);
  }
  close(fd);
  file.bytes.resize(got);
  if (file.bytes.size() > s.max_bytes)
    return reject(PluginStage::size,
                  fmt::format("is over the limit (plugins.max_bytes) of {} bytes", s.max_bytes));
  file.sha256 = sha256 = sha256_hex(file.bytes);
  // A bounds-checked reader, in this process: nothing here trusts a size or an offset of the
  // file (elf_reader.hpp).
  auto elf = inspect_elf(file.bytes);
  if (!elf) return tl::unexpected(elf.error());
  file.elf = *elf;
  if (!s.sha256_allowlist.empty() && std::find(s.sha256_allowlist.begin(), s.sha256_allowlist.end(),
                                               file.sha256) == s.sha256_allowlist.end())
    return reject(
        PluginStage::allowlist,
        fmt::format("has SHA-256 {}, which is not in plugins.sha256_allowlist", file.sha256));
  return file;
}

}  // namespace flowreg::detail
