#include "plugin/plugin_cache.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <string_view>

#include "util/sha256.hpp"

namespace flowreg::detail {

namespace fs = std::filesystem;

void UniqueFd::reset() noexcept {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

namespace {

// Same file (device and inode) behind the descriptor and the path.
bool fd_is_path(int fd, const fs::path& path) {
  struct stat by_fd {
  }, by_path{};
  return fstat(fd, &by_fd) == 0 && stat(path.c_str(), &by_path) == 0 &&
         by_fd.st_dev == by_path.st_dev && by_fd.st_ino == by_path.st_ino;
}

}  // namespace

tl::expected<StagedCopy, PluginError> PluginCache::stage(const FileBytes& file) const {
  std::error_code ec;
  fs::create_directories(dir_, ec);
  if (ec)
    return reject(PluginStage::stage, fmt::format("cannot create the plugin cache {}: {}",
                                                  dir_.string(), ec.message()));
  fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::replace, ec);
  const fs::path target = dir_ / (file.sha256 + ".so");
  if (UniqueFd fd(open(target.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW)); fd.get() >= 0) {
    // Locked, then checked to be still the file of that name (a pruner may have removed it
    // between the open and the lock) and still that content.
    flock(fd.get(), LOCK_SH);
    if (fd_is_path(fd.get(), target)) {
      auto sha = sha256_file_hex(target);
      if (sha && *sha == file.sha256) return StagedCopy{target, std::move(fd)};
      fs::permissions(target, fs::perms::owner_write, fs::perm_options::add, ec);
      fs::remove(target, ec);
    }
  }
  const fs::path tmp = dir_ / (file.sha256 + ".tmp" + std::to_string(getpid()));
  UniqueFd out(open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0600));
  if (out.get() < 0)
    return reject(PluginStage::stage,
                  fmt::format("cannot write {}: {}", tmp.string(), std::strerror(errno)));
  flock(out.get(), LOCK_SH);  // held from creation on: never pruned half-written
  std::size_t written = 0;
  while (written < file.bytes.size()) {
    const ssize_t n = write(out.get(), file.bytes.data() + written, file.bytes.size() - written);
    if (n <= 0) {
      fs::remove(tmp, ec);
      return reject(PluginStage::stage, fmt::format("cannot write {}", tmp.string()));
    }
    written += static_cast<std::size_t>(n);
  }
  fchmod(out.get(), 0444);
  fs::rename(tmp, target, ec);
  if (ec) {
    fs::remove(tmp, ec);
    return reject(PluginStage::stage,
                  fmt::format("cannot stage {}: {}", target.string(), ec.message()));
  }
  // A read-only descriptor takes over the lock; the writable one closes after it is taken.
  UniqueFd fd(open(target.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
  if (fd.get() < 0)
    return reject(PluginStage::stage,
                  fmt::format("cannot open {}: {}", target.string(), std::strerror(errno)));
  flock(fd.get(), LOCK_SH);
  return StagedCopy{target, std::move(fd)};
}

void PluginCache::prune() const {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    const std::string name = entry.path().filename().string();
    // Only what stage() writes: <sha256>.so, and <sha256>.tmp<pid> left by a process that died
    // while writing it (one at least 10 minutes old: a younger one may be being written, and is
    // locked only once its creator has taken the lock).
    const bool hashed = name.size() > 64 && name.find_first_not_of("0123456789abcdef") == 64;
    const std::string_view rest = std::string_view(name).substr(hashed ? 64 : 0);
    std::error_code type_ec;
    if (!hashed || !entry.is_regular_file(type_ec)) continue;
    if (rest != ".so") {
      if (!rest.starts_with(".tmp") ||
          rest.find_first_not_of("0123456789", 4) != std::string_view::npos)
        continue;
      std::error_code time_ec;
      const auto written = fs::last_write_time(entry.path(), time_ec);
      if (time_ec || fs::file_time_type::clock::now() - written < std::chrono::minutes(10))
        continue;
    }
    UniqueFd fd(open(entry.path().c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK));
    if (fd.get() < 0 || flock(fd.get(), LOCK_EX | LOCK_NB) != 0) continue;  // in use
    if (!fd_is_path(fd.get(), entry.path())) continue;
    std::error_code remove_ec;
    fs::remove(entry.path(), remove_ec);
    if (!remove_ec) spdlog::debug("plugin cache: removed {} (no longer used)", name);
  }
}

}  // namespace flowreg::detail
