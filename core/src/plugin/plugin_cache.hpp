#pragma once
// The plugin cache: private, read-only copies of plugin files named by their SHA-256
// (<cache_dir>/<sha256>.so), which is what the loader dlopens. A later write to the original can
// neither change nor crash what is loaded, and a changed file gets a new path (dlopen caches by
// path).
//
// Several processes may share one cache (workers and `flowreg serve` of one configuration): a copy
// in use is held by a shared flock on a descriptor of it, and prune() removes only what no process
// holds.
//
// Thread-safety: PluginCache is immutable after construction and keeps no state but its directory;
// its member functions may be called concurrently, also from several processes.
// Errors: stage() fails at PluginStage::stage with a message naming the path and the reason;
// prune() never fails (what it cannot remove stays).

#include <filesystem>
#include <string>
#include <tl/expected.hpp>
#include <utility>

#include "flowreg/plugins.hpp"
#include "plugin/plugin_file_check.hpp"

namespace flowreg::detail {

// An open file descriptor, closed by the destructor. Movable, not copyable.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& other) noexcept {
    if (this != &other) {
      reset();
      fd_ = std::exchange(other.fd_, -1);
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { reset(); }
  int get() const noexcept { return fd_; }
  int release() noexcept { return std::exchange(fd_, -1); }
  void reset() noexcept;

 private:
  int fd_ = -1;
};

// A staged copy in the plugin cache, and a descriptor of it holding a shared flock: the cache is
// pruned of copies nobody holds (see PluginCache::prune), in any process sharing the cache.
// Movable, not copyable; the lock is released with the descriptor (or passed on with release()).
struct StagedCopy {
  std::filesystem::path path;
  UniqueFd lock;
};

class PluginCache {
 public:
  // `dir`: the cache directory (created 0700 on first use).
  explicit PluginCache(std::filesystem::path dir) : dir_(std::move(dir)) {}
  PluginCache(const PluginCache&) = default;
  PluginCache& operator=(const PluginCache&) = default;

  const std::filesystem::path& dir() const noexcept { return dir_; }

  // A private, read-only copy of `file`'s bytes named by their hash. The copy comes back locked (a
  // shared flock) so that no process prunes it while it is used. An existing copy of that name is
  // reused when it still holds exactly those bytes, and replaced otherwise.
  tl::expected<StagedCopy, PluginError> stage(const FileBytes& file) const;

  // Removes from the plugin cache every staged copy (and temporary file) that no process holds:
  // the versions that were replaced or removed, copies of rejected or quarantined files. What a
  // loaded plugin of any process uses is locked and stays; quarantine records and crash counts
  // stay. A copy removed while some process still has it mapped is harmless: the mapping keeps
  // the file's content alive.
  void prune() const;

 private:
  std::filesystem::path dir_;
};

}  // namespace flowreg::detail
