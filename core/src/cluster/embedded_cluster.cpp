#include "cluster/embedded_cluster.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <pwd.h>
#include <signal.h>
#include <sys/file.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <pqxx/pqxx>
#include <thread>

#include "util/sha256.hpp"
#include "util/subprocess.hpp"

namespace flowreg::detail {

namespace fs = std::filesystem;
using MonotonicClock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

constexpr std::string_view kMissingBinaries =
    "PostgreSQL server binaries (initdb, pg_ctl) not found";
constexpr std::string_view kInstallHint = "apt-get install postgresql-15";

tl::unexpected<Error> db_error(std::string message) {
  return make_error(Errc::database, std::move(message));
}

std::string strerror_text(int err) { return std::strerror(err); }

bool is_executable(const fs::path& p) { return ::access(p.c_str(), X_OK) == 0; }

bool has_server_binaries(const fs::path& dir) {
  return is_executable(dir / "initdb") && is_executable(dir / "pg_ctl") &&
         is_executable(dir / "postgres");
}

std::string trim(std::string s) {
  const auto not_space = [](unsigned char c) { return !std::isspace(c); };
  s.erase(s.begin(), std::find_if(s.begin(), s.end(), not_space));
  s.erase(std::find_if(s.rbegin(), s.rend(), not_space).base(), s.end());
  return s;
}

std::optional<fs::path> find_in_path(std::string_view program) {
  const char* path = std::getenv("PATH");
  std::string_view rest = path ? path : "/usr/local/bin:/usr/bin:/bin";
  while (!rest.empty()) {
    const auto colon = rest.find(':');
    const std::string_view dir = rest.substr(0, colon);
    if (!dir.empty()) {
      fs::path candidate = fs::path(dir) / program;
      if (is_executable(candidate)) return candidate;
    }
    if (colon == std::string_view::npos) break;
    rest.remove_prefix(colon + 1);
  }
  return std::nullopt;
}

// The injected directory, else `pg_config --bindir`, else the newest /usr/lib/postgresql/N/bin.
Result<fs::path> resolve_bin_dir(const fs::path& injected) {
  if (!injected.empty()) {
    if (has_server_binaries(injected)) return fs::absolute(injected);
    return make_error(Errc::not_found, fmt::format("{} in {}: {}", kMissingBinaries,
                                                   injected.string(), kInstallHint));
  }
  std::vector<std::string> looked;
  if (auto pg_config = find_in_path("pg_config")) {
    auto r = run_subprocess({pg_config->string(), "--bindir"}, std::chrono::seconds(10));
    if (r.exited_ok()) {
      fs::path dir = trim(r.out);
      if (has_server_binaries(dir)) return dir;
      looked.push_back(dir.string() + " (pg_config --bindir)");
    }
  }
  std::error_code ec;
  std::optional<std::pair<int, fs::path>> newest;
  for (const auto& entry : fs::directory_iterator("/usr/lib/postgresql", ec)) {
    const std::string name = entry.path().filename().string();
    if (name.empty() || !std::all_of(name.begin(), name.end(), ::isdigit) || name.size() > 4)
      continue;
    const int version = std::stoi(name);
    if (has_server_binaries(entry.path() / "bin") && (!newest || version > newest->first))
      newest = std::pair{version, entry.path() / "bin"};
  }
  if (newest) return newest->second;
  looked.push_back("/usr/lib/postgresql/*/bin");
  std::string where;
  for (const auto& l : looked) where += (where.empty() ? "" : ", ") + l;
  return make_error(Errc::not_found,
                    fmt::format("{} (looked in {}): {}", kMissingBinaries, where, kInstallHint));
}

struct UserInfo {
  std::string name;
  uid_t uid = 0;
  gid_t gid = 0;
};

std::optional<UserInfo> user_by_name(const std::string& name) {
  passwd pw{};
  passwd* found = nullptr;
  std::vector<char> buffer(16384);
  if (getpwnam_r(name.c_str(), &pw, buffer.data(), buffer.size(), &found) != 0 || !found)
    return std::nullopt;
  return UserInfo{pw.pw_name, pw.pw_uid, pw.pw_gid};
}

std::optional<UserInfo> user_by_uid(uid_t uid) {
  passwd pw{};
  passwd* found = nullptr;
  std::vector<char> buffer(16384);
  if (getpwuid_r(uid, &pw, buffer.data(), buffer.size(), &found) != 0 || !found)
    return std::nullopt;
  return UserInfo{pw.pw_name, pw.pw_uid, pw.pw_gid};
}

std::optional<fs::path> first_executable(std::initializer_list<const char*> candidates) {
  for (const char* c : candidates)
    if (is_executable(c)) return fs::path(c);
  return std::nullopt;
}

// Whether `user` can reach `dir`: every existing directory above it grants `user` search
// permission (as owner, as its primary group, or as others; supplementary groups are not
// counted, which can only make this answer no where yes was right). Directories still to be
// created are made by us with mode 0755. `dir` itself is made searchable by prepare_dirs.
bool reachable_by(const fs::path& dir, const UserInfo& user) {
  for (fs::path p = dir.parent_path(); !p.empty(); p = p.parent_path()) {
    struct stat st {};
    if (::stat(p.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
      const mode_t bit = st.st_uid == user.uid   ? S_IXUSR
                         : st.st_gid == user.gid ? S_IXGRP
                                                 : S_IXOTH;
      if ((st.st_mode & bit) == 0) return false;
    }
    if (p == p.root_path()) break;
  }
  return true;
}

// A libpq connection string value: single-quoted, with \ and ' escaped.
std::string conninfo_value(std::string_view v) {
  std::string out = "'";
  for (char c : v) {
    if (c == '\\' || c == '\'') out += '\\';
    out += c;
  }
  return out + "'";
}

// A postgresql.conf string value.
std::string conf_value(std::string_view v) {
  std::string out = "'";
  for (char c : v) {
    if (c == '\'') out += '\'';
    if (c == '\\') out += '\\';
    out += c;
  }
  return out + "'";
}

// The last `max_lines` lines of `path` from byte `from` on (or of the whole file).
std::string log_tail(const fs::path& path, std::uintmax_t from = 0, std::size_t max_lines = 30) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return "(no log at " + path.string() + ")";
  in.seekg(0, std::ios::end);
  const auto size = static_cast<std::uintmax_t>(in.tellg());
  constexpr std::uintmax_t kMaxBytes = 64 * 1024;
  std::uintmax_t start = from < size ? from : 0;
  if (size - start > kMaxBytes) start = size - kMaxBytes;
  in.seekg(static_cast<std::streamoff>(start));
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  while (!text.empty() && text.back() == '\n') text.pop_back();
  std::size_t pos = text.size();
  for (std::size_t lines = 0; lines < max_lines && pos != std::string::npos && pos > 0; ++lines)
    pos = text.rfind('\n', pos - 1);
  if (pos != std::string::npos && pos > 0) text = "...\n" + text.substr(pos + 1);
  return text.empty() ? "(the log is empty)" : text;
}

std::uintmax_t file_size_or_zero(const fs::path& p) {
  std::error_code ec;
  const auto size = fs::file_size(p, ec);
  return ec ? 0 : size;
}

// Exclusive flock() on a file, polled until a deadline; released by the destructor. flock locks
// belong to the open file description, so two objects in one process exclude each other too.
class FileLock {
 public:
  static Result<FileLock> acquire(const fs::path& path, MonotonicClock::duration wait) {
    const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0)
      return make_error(Errc::io, fmt::format("cannot open lock file {}: {}", path.string(),
                                              strerror_text(errno)));
    FileLock lock(fd);
    const auto deadline = MonotonicClock::now() + wait;
    while (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
      if (errno != EWOULDBLOCK && errno != EINTR)
        return make_error(Errc::io,
                          fmt::format("cannot lock {}: {}", path.string(), strerror_text(errno)));
      if (MonotonicClock::now() >= deadline)
        return make_error(Errc::database,
                          fmt::format("timed out waiting for {}: another process holds it while "
                                      "it starts or stops the cluster",
                                      path.string()));
      std::this_thread::sleep_for(milliseconds(20));
    }
    return lock;
  }
  FileLock(FileLock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
  FileLock& operator=(FileLock&&) = delete;
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;
  ~FileLock() {
    if (fd_ >= 0) ::close(fd_);  // closing the last descriptor releases the lock
  }

 private:
  explicit FileLock(int fd) : fd_(fd) {}
  int fd_;
};

enum class ProcState { gone, zombie, postgres, other };

// What `pid` is now, from /proc (the postmaster's command name is "postgres"). A pid from a stale
// postmaster.pid may have been reused by an unrelated process: that is not a running server.
ProcState process_state(pid_t pid) {
  if (pid <= 0) return ProcState::gone;
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string stat;
  if (!in || !std::getline(in, stat)) {
    if (::kill(pid, 0) == 0 || errno == EPERM) return ProcState::postgres;  // no /proc: trust it
    return ProcState::gone;
  }
  const auto open = stat.find('(');
  const auto close = stat.rfind(')');
  if (open == std::string::npos || close == std::string::npos || close + 2 >= stat.size())
    return ProcState::other;
  const std::string comm = stat.substr(open + 1, close - open - 1);
  const char state = stat[close + 2];
  if (state == 'Z' || state == 'X') return ProcState::zombie;
  return comm == "postgres" || comm == "postmaster" ? ProcState::postgres : ProcState::other;
}

std::optional<pid_t> read_postmaster_pid(const fs::path& cluster_dir) {
  std::ifstream in(cluster_dir / "postmaster.pid");
  long pid = 0;
  if (!(in >> pid) || pid <= 0) return std::nullopt;
  return static_cast<pid_t>(pid);
}

// The pid of a live postmaster of this cluster, if any.
std::optional<pid_t> running_postmaster(const fs::path& cluster_dir) {
  auto pid = read_postmaster_pid(cluster_dir);
  if (pid && process_state(*pid) == ProcState::postgres) return pid;
  return std::nullopt;
}

Result<void> chown_to(const fs::path& p, uid_t uid, gid_t gid) {
  if (::chown(p.c_str(), uid, gid) != 0)
    return make_error(Errc::io, fmt::format("cannot chown {} to uid {}: {}", p.string(), uid,
                                            strerror_text(errno)));
  return {};
}

Result<void> chmod_to(const fs::path& p, mode_t mode) {
  if (::chmod(p.c_str(), mode) != 0)
    return make_error(
        Errc::io, fmt::format("cannot chmod {:o} {}: {}", mode, p.string(), strerror_text(errno)));
  return {};
}

// A directory that must belong to `uid` with no access for group and others. Created when missing;
// an existing one must already be a real directory of that user.
Result<void> private_dir(const fs::path& p, uid_t uid, gid_t gid, bool fix_existing) {
  if (::mkdir(p.c_str(), 0700) == 0) {
    if (::geteuid() != uid) return chown_to(p, uid, gid);
    return {};
  }
  if (errno != EEXIST)
    return make_error(
        Errc::io, fmt::format("cannot create directory {}: {}", p.string(), strerror_text(errno)));
  struct stat st {};
  if (::lstat(p.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    return make_error(Errc::io, fmt::format("{} exists and is not a directory", p.string()));
  if (st.st_uid != uid || (st.st_mode & 077) != 0) {
    if (!fix_existing)
      return make_error(Errc::io,
                        fmt::format("{} must be a directory owned by uid {} with mode 0700 (it is "
                                    "owned by uid {}, mode {:o}): remove it",
                                    p.string(), uid, st.st_uid, st.st_mode & 07777));
    if (st.st_uid != uid)
      if (auto r = chown_to(p, uid, gid); !r) return r;
    return chmod_to(p, 0700);
  }
  return {};
}

Result<void> write_file(const fs::path& p, const std::string& text) {
  const fs::path tmp = p.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out.flush()) return make_error(Errc::io, fmt::format("cannot write {}", tmp.string()));
  }
  std::error_code ec;
  fs::rename(tmp, p, ec);
  if (ec)
    return make_error(Errc::io, fmt::format("cannot rename {} to {}: {}", tmp.string(), p.string(),
                                            ec.message()));
  return {};
}

std::string join(const std::vector<std::string>& argv) {
  std::string out;
  for (const auto& a : argv) out += (out.empty() ? "" : " ") + a;
  return out;
}

// Writes `text` to `p` (through a 0600 scratch file renamed into place): a secret is never
// readable by others, not even for a moment.
Result<void> write_private_file(const fs::path& p, const std::string& text) {
  const fs::path tmp = p.string() + ".tmp";
  ::unlink(tmp.c_str());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
  if (fd < 0)
    return make_error(Errc::io,
                      fmt::format("cannot create {}: {}", tmp.string(), strerror_text(errno)));
  const bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
  const bool synced = ::fsync(fd) == 0;
  ::close(fd);
  if (!written || !synced) {
    ::unlink(tmp.c_str());
    return make_error(Errc::io, fmt::format("cannot write {}", tmp.string()));
  }
  if (::rename(tmp.c_str(), p.c_str()) != 0)
    return make_error(Errc::io, fmt::format("cannot rename {} to {}: {}", tmp.string(), p.string(),
                                            strerror_text(errno)));
  return {};
}

Result<std::string> read_small_file(const fs::path& p, std::size_t max_bytes) {
  std::ifstream in(p, std::ios::binary);
  if (!in)
    return make_error(Errc::not_found,
                      fmt::format("cannot read {}: {}", p.string(), strerror_text(errno)));
  std::string text(max_bytes + 1, '\0');
  in.read(text.data(), static_cast<std::streamsize>(text.size()));
  text.resize(static_cast<std::size_t>(in.gcount()));
  if (text.size() > max_bytes)
    return make_error(Errc::invalid_argument,
                      fmt::format("{} is larger than {} bytes", p.string(), max_bytes));
  return text;
}

// 32 random bytes, hex: nothing to escape in a URL or a SQL literal.
Result<std::string> new_password() {
  unsigned char bytes[32];
  std::size_t got = 0;
  while (got < sizeof bytes) {
    const ssize_t n = ::getrandom(bytes + got, sizeof bytes - got, 0);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0)
      return make_error(Errc::io, fmt::format("getrandom failed: {}", strerror_text(errno)));
    got += static_cast<std::size_t>(n);
  }
  std::string hex;
  for (unsigned char b : bytes) hex += fmt::format("{:02x}", b);
  return hex;
}

// The password of <data_dir>/db.password: one line of printable ASCII.
Result<std::string> read_password(const fs::path& file) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0)
    return make_error(Errc::not_found,
                      fmt::format("{} does not exist yet: start the cluster with database.listen "
                                  "set once (flowreg db migrate) to generate it",
                                  file.string()));
  if ((st.st_mode & 077) != 0)
    return make_error(Errc::invalid_argument,
                      fmt::format("{} is readable by others (mode {:o}): chmod 600 {}",
                                  file.string(), st.st_mode & 07777, file.string()));
  auto text = read_small_file(file, 1024);
  if (!text) return text;
  std::string password = trim(*text);
  if (password.empty() || !std::all_of(password.begin(), password.end(), [](char c) {
        return static_cast<unsigned char>(c) > 32 && static_cast<unsigned char>(c) < 127;
      }))
    return make_error(
        Errc::invalid_argument,
        fmt::format("{} must hold one line of printable ASCII without spaces", file.string()));
  return password;
}

// RFC 3986 percent-encoding of everything but the unreserved characters.
std::string url_encode(std::string_view text) {
  std::string out;
  for (const char ch : text) {
    const auto c = static_cast<unsigned char>(ch);
    if (std::isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~')
      out += ch;
    else
      out += fmt::format("%{:02X}", c);
  }
  return out;
}

bool is_wildcard(std::string_view address) {
  return address == "*" || address == "0.0.0.0" || address == "::";
}

}  // namespace

fs::path EmbeddedCluster::socket_dir_for(const fs::path& data_dir) {
  // sun_path holds 108 bytes including the terminating NUL.
  constexpr std::size_t kMaxSocketPath = sizeof(sockaddr_un::sun_path) - 1;
  const fs::path preferred = data_dir / "run";
  const std::string socket = (preferred / fmt::format(".s.PGSQL.{}", kPort)).string();
  if (socket.size() <= kMaxSocketPath) return preferred;
  return fs::path("/tmp") /
         fmt::format("flowreg-{}", sha256_hex(data_dir.lexically_normal().string()).substr(0, 16));
}

Result<EmbeddedCluster> EmbeddedCluster::open(fs::path data_dir) {
  ClusterOptions options;
  options.data_dir = std::move(data_dir);
  return open(std::move(options));
}

Result<EmbeddedCluster> EmbeddedCluster::open(const DatabaseSettings& settings) {
  ClusterOptions options;
  options.data_dir = settings.data_dir;
  options.listen = settings.listen;
  return open(std::move(options));
}

Result<EmbeddedCluster> EmbeddedCluster::open(ClusterOptions options) {
  EmbeddedCluster cluster;
  std::error_code ec;
  const DatabaseListen& listen = options.listen;
  if (listen.port < 1 || listen.port > 65535)
    return make_error(Errc::invalid_argument,
                      fmt::format("database.listen.port {} is not a TCP port", listen.port));
  if (listen.enabled() && listen.allow.empty())
    return make_error(Errc::invalid_argument,
                      "database.listen.allow is empty: name the networks that may connect");
  if (listen.ssl_cert_file.empty() != listen.ssl_key_file.empty())
    return make_error(Errc::invalid_argument,
                      "database.listen: ssl_cert_file and ssl_key_file go together");
  for (const auto& text : listen.addresses)
    if (text.empty() || text.find_first_of(", '\"\\\n") != std::string::npos)
      return make_error(Errc::invalid_argument,
                        fmt::format("database.listen: '{}' is not an address", text));
  for (const auto& text : listen.allow)
    if (text.empty() || text.find_first_of(" \t\n#\"'") != std::string::npos)
      return make_error(Errc::invalid_argument,
                        fmt::format("database.listen: '{}' is not a network", text));
  if (options.data_dir.empty()) options.data_dir = ".flowreg";
  options.data_dir = fs::absolute(options.data_dir, ec).lexically_normal();
  if (ec)
    return make_error(Errc::invalid_argument, fmt::format("data directory {}: {}",
                                                          options.data_dir.string(), ec.message()));
  if (options.data_dir.has_relative_path() && options.data_dir.filename().empty())
    options.data_dir = options.data_dir.parent_path();  // drop a trailing '/'
  auto bin_dir = resolve_bin_dir(options.bin_dir);
  if (!bin_dir) return tl::unexpected(bin_dir.error());
  options.bin_dir = *bin_dir;

  // Where the cluster lives (its home: pg/, pg.log, run/). Normally in the data directory. Root
  // runs the cluster as the user "postgres", which must reach it; a checkout in root's 0700 home
  // (the usual case on a fresh machine) is out of its reach, and widening the permissions of
  // root's home is not ours to do. Then the cluster lives in a directory of its own under
  // options.relocation_root (/var/lib/flowreg/<hash of the data directory's path>), and
  // <data_dir>/pg is a symbolic link to it: it is found again from the link at every start, and
  // the link shows where it is. Everything else (the lock, the plugin cache) stays in data_dir.
  const uid_t euid = ::geteuid();
  fs::path home = options.data_dir;
  const fs::path link = options.data_dir / "pg";
  if (struct stat lst{}; ::lstat(link.c_str(), &lst) == 0) {
    if (S_ISLNK(lst.st_mode)) {
      const fs::path target = fs::read_symlink(link, ec);
      if (ec || !target.is_absolute() || target.filename() != "pg")
        return make_error(Errc::invalid_argument,
                          fmt::format("{} is a symbolic link to {}, not to the 'pg' directory of "
                                      "a cluster home: remove it",
                                      link.string(), target.string()));
      home = target.parent_path();
    }
  } else if (euid == 0) {
    const auto postgres = user_by_name("postgres");
    if (postgres && !reachable_by(options.data_dir, *postgres))
      home = options.relocation_root / sha256_hex(options.data_dir.string()).substr(0, 16);
  }

  // The owner: whoever owns an existing cluster; else ourselves, or "postgres" when we are root.
  const fs::path cluster_dir = home / "pg";
  struct stat st {};
  std::optional<UserInfo> owner;
  if (::stat(cluster_dir.c_str(), &st) == 0) {
    owner = user_by_uid(st.st_uid);
    if (!owner) owner = UserInfo{std::to_string(st.st_uid), st.st_uid, st.st_gid};
    if (st.st_uid == 0)
      return make_error(Errc::invalid_argument,
                        fmt::format("cluster {} belongs to root, which PostgreSQL refuses to run "
                                    "as: chown -R postgres {}",
                                    cluster_dir.string(), cluster_dir.string()));
    if (euid != 0 && st.st_uid != euid)
      return make_error(
          Errc::invalid_argument,
          fmt::format("cluster {} belongs to user '{}' (uid {}), flowreg runs as uid "
                      "{}: run flowreg as '{}' or use another data directory",
                      cluster_dir.string(), owner->name, st.st_uid, euid, owner->name));
  } else if (euid == 0) {
    owner = user_by_name("postgres");
    if (!owner)
      return make_error(Errc::invalid_argument,
                        "running as root, flowreg runs its PostgreSQL cluster as the user "
                        "'postgres' (initdb and postgres refuse to run as root), and there is "
                        "none: apt-get install postgresql-15, or run flowreg as another user");
  } else {
    owner = user_by_uid(euid);
    if (!owner)
      return make_error(Errc::invalid_argument,
                        fmt::format("uid {} has no user name (no passwd entry)", euid));
  }
  if (euid == 0) {
    if (auto setpriv = first_executable({"/usr/bin/setpriv", "/bin/setpriv"})) {
      cluster.run_as_owner_ = {setpriv->string(), "--reuid=" + std::to_string(owner->uid),
                               "--regid=" + std::to_string(owner->gid), "--init-groups", "--"};
    } else if (auto runuser = first_executable({"/usr/sbin/runuser", "/sbin/runuser"})) {
      cluster.run_as_owner_ = {runuser->string(), "-u", owner->name, "--"};
    } else {
      return make_error(Errc::not_found,
                        "running as root needs setpriv or runuser (util-linux) to run PostgreSQL "
                        "as 'postgres': apt-get install util-linux");
    }
    // The owner's tools would otherwise complain that they cannot enter root's working directory.
    if (is_executable("/usr/bin/env")) {
      cluster.run_as_owner_.insert(cluster.run_as_owner_.end(), {"/usr/bin/env", "-C", "/"});
    }
  }
  cluster.owner_name_ = owner->name;
  cluster.owner_uid_ = owner->uid;
  cluster.owner_gid_ = owner->gid;
  cluster.home_ = home;
  cluster.socket_dir_ = socket_dir_for(home);
  cluster.options_ = std::move(options);
  return cluster;
}

std::string EmbeddedCluster::connection_string(std::string_view database) const {
  return fmt::format("host={} port={} dbname={} user={}", conninfo_value(socket_dir_.string()),
                     options_.listen.port, conninfo_value(database), conninfo_value(owner_name_));
}

Result<std::string> EmbeddedCluster::remote_url(std::string_view host,
                                                std::string_view sslrootcert) const {
  const DatabaseListen& listen = options_.listen;
  if (!listen.enabled())
    return make_error(Errc::invalid_argument,
                      "database.listen is not set: the embedded cluster listens on its unix "
                      "socket only, which other hosts cannot reach");
  std::string address(host);
  if (address.empty()) {
    if (listen.addresses.size() != 1 || is_wildcard(listen.addresses.front()))
      return make_error(Errc::invalid_argument,
                        "database.listen.addresses does not name one address other hosts reach "
                        "this one by: give it (--host)");
    address = listen.addresses.front();
  }
  if (address.empty() || address.find_first_of("/?#@[] ") != std::string::npos)
    return make_error(Errc::invalid_argument, fmt::format("'{}' is not a host", address));
  auto password = read_password(password_file());
  if (!password) return tl::unexpected(password.error());
  const std::string host_part =
      address.find(':') != std::string::npos ? "[" + address + "]" : address;
  std::string url =
      fmt::format("postgresql://{}:{}@{}:{}/{}", url_encode(owner_name_), url_encode(*password),
                  host_part, listen.port, url_encode(options_.database));
  if (!listen.ssl_cert_file.empty()) {
    url += "?sslmode=verify-full";
    if (!sslrootcert.empty()) url += "&sslrootcert=" + url_encode(sslrootcert);
  }
  return url;
}

Result<ClusterStatus> EmbeddedCluster::status() const {
  ClusterStatus s;
  s.data_dir = options_.data_dir;
  s.cluster_dir = home_ / "pg";
  s.socket_dir = socket_dir_;
  s.log_file = home_ / "pg.log";
  s.bin_dir = options_.bin_dir;
  s.owner = owner_name_;
  s.connection_string = connection_string();
  std::error_code ec;
  s.initialized = fs::exists(s.cluster_dir / "PG_VERSION", ec);
  if (s.initialized) {
    if (auto pid = running_postmaster(s.cluster_dir)) {
      s.running = true;
      s.postmaster_pid = *pid;
    }
  }
  return s;
}

namespace {

// Everything start() and stop() need, bound to one cluster.
struct Ops {
  const ClusterOptions& options;
  const fs::path& home;  // the data directory, or the cluster's own directory elsewhere
  const std::vector<std::string>& run_as;
  const fs::path& socket_dir;
  const std::string& owner_name;
  uid_t uid;
  gid_t gid;
  fs::path cluster_dir = home / "pg";
  fs::path log_file = home / "pg.log";

  bool as_other_user() const { return !run_as.empty(); }

  SubprocessResult run(std::vector<std::string> argv, std::chrono::seconds timeout) const {
    std::vector<std::string> full = run_as;
    full.insert(full.end(), argv.begin(), argv.end());
    return run_subprocess(full, timeout);
  }

  std::string tool(const char* name) const { return (options.bin_dir / name).string(); }

  Result<void> prepare_dirs() const {
    std::error_code ec;
    fs::create_directories(options.data_dir, ec);
    if (ec)
      return make_error(Errc::io, fmt::format("cannot create data directory {}: {}",
                                              options.data_dir.string(), ec.message()));
    if (home != options.data_dir)
      if (auto r = prepare_home(); !r) return r;
    if (as_other_user()) {
      // The owner must be able to reach its cluster inside our directory: search permission for
      // others (no read: they cannot list it).
      struct stat st {};
      if (::stat(home.c_str(), &st) != 0)
        return make_error(Errc::io,
                          fmt::format("cannot stat {}: {}", home.string(), strerror_text(errno)));
      if ((st.st_mode & S_IXOTH) == 0)
        if (auto r = chmod_to(home, (st.st_mode & 07777) | S_IXOTH); !r) return r;
      auto probe = run({"/usr/bin/test", "-x", home.string()}, std::chrono::seconds(10));
      if (!probe.exited_ok())
        return make_error(
            Errc::io,
            fmt::format("the user '{}' that runs the cluster cannot enter {}: a parent directory "
                        "is not searchable by it (chmod o+x the parents, or use a data directory "
                        "elsewhere, such as under /var/lib)",
                        owner_name, home.string()));
    }
    const bool socket_in_data_dir = socket_dir.parent_path() == home;
    if (auto r = private_dir(socket_dir, uid, gid, socket_in_data_dir); !r) return r;
    if (!fs::exists(log_file, ec)) {
      const int fd = ::open(log_file.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
      if (fd < 0)
        return make_error(
            Errc::io, fmt::format("cannot create {}: {}", log_file.string(), strerror_text(errno)));
      ::close(fd);
    }
    if (as_other_user())
      if (auto r = chown_to(log_file, uid, gid); !r) return r;
    return {};
  }

  // A cluster home outside the data directory (see EmbeddedCluster::open): created (mode 0755,
  // ours) under the relocation root, with a note naming the data directory it serves, and
  // linked from <data_dir>/pg.
  Result<void> prepare_home() const {
    std::error_code ec;
    fs::create_directories(home.parent_path().parent_path(), ec);
    for (const fs::path& dir : {home.parent_path(), home}) {
      if (::mkdir(dir.c_str(), 0755) != 0 && errno != EEXIST)
        return make_error(Errc::io, fmt::format("cannot create directory {}: {}", dir.string(),
                                                strerror_text(errno)));
      struct stat st {};
      if (::lstat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode) || st.st_uid != ::geteuid() ||
          (st.st_mode & 022) != 0)
        return make_error(Errc::io,
                          fmt::format("{} must be a directory of uid {} that others cannot write "
                                      "to: remove it or fix it",
                                      dir.string(), ::geteuid()));
    }
    if (auto r = write_file(home / "data_dir", options.data_dir.string() + "\n"); !r) return r;
    const fs::path link = options.data_dir / "pg";
    if (!fs::is_symlink(link, ec)) {
      fs::create_symlink(cluster_dir, link, ec);
      if (ec)
        return make_error(Errc::io, fmt::format("cannot link {} to {}: {}", link.string(),
                                                cluster_dir.string(), ec.message()));
    }
    return {};
  }

  // initdb into a scratch directory, renamed into place when complete: a crash half-way leaves
  // no half-made cluster behind.
  Result<void> init() const {
    const fs::path scratch = home / "pg.initdb";
    std::error_code ec;
    fs::remove_all(scratch, ec);
    if (auto r = private_dir(scratch, uid, gid, true); !r) return r;
    std::vector<std::string> argv = {tool("initdb"), "-D",         scratch.string(),
                                     "--auth=trust", "--locale=C", "--encoding=UTF8",
                                     "-U",           owner_name};
    if (!options.sync_init) argv.push_back("--no-sync");
    auto r = run(argv, std::chrono::seconds(300));
    if (!r.exited_ok())
      return db_error(fmt::format("initdb of {} failed: {}\n{}", scratch.string(), r.describe_end(),
                                  trim(r.out + "\n" + r.err)));
    {
      std::ofstream conf(scratch / "postgresql.conf", std::ios::app);
      conf << "\n# flowreg: settings it rewrites at every start\ninclude_if_exists = "
              "'flowreg.conf'\n";
      if (!conf.flush())
        return make_error(
            Errc::io, fmt::format("cannot append to {}", (scratch / "postgresql.conf").string()));
    }
    fs::rename(scratch, cluster_dir, ec);
    if (ec)
      return make_error(Errc::io, fmt::format("cannot rename {} to {}: {}", scratch.string(),
                                              cluster_dir.string(), ec.message()));
    return {};
  }

  // Written before every start, so a moved data directory gets its new socket path, and a
  // changed database.listen its addresses, networks and certificate.
  Result<void> write_settings() const {
    const DatabaseListen& listen = options.listen;
    std::string addresses;
    for (const auto& a : listen.addresses) addresses += (addresses.empty() ? "" : ",") + a;
    const bool tls = listen.enabled() && !listen.ssl_cert_file.empty();
    std::string tls_settings;
    if (tls) {
      const fs::path crt = cluster_dir / "flowreg-server.crt",
                     key = cluster_dir / "flowreg-server.key";
      for (const auto& [from, to] :
           {std::pair{listen.ssl_cert_file, crt}, std::pair{listen.ssl_key_file, key}}) {
        auto text = read_small_file(from, 1 << 20);
        if (!text)
          return make_error(Errc::io, fmt::format("database.listen: {}", text.error().message));
        if (auto r = write_private_file(to, *text); !r) return r;
        if (as_other_user())
          if (auto r = chown_to(to, uid, gid); !r) return r;
      }
      tls_settings = fmt::format("ssl = on\nssl_cert_file = {}\nssl_key_file = {}\n",
                                 conf_value(crt.string()), conf_value(key.string()));
    }
    // Local connections: the 0700 socket directory is the guard. TCP: the allowed networks only,
    // with the password, and only over TLS when there is a certificate.
    std::string hba =
        "# Written by flowreg before every start: edits are lost.\n"
        "local all all trust\n";
    if (listen.enabled())
      for (const auto& network : listen.allow)
        hba += fmt::format("{} all all {} scram-sha-256\n", tls ? "hostssl" : "host", network);
    const fs::path hba_file = cluster_dir / "pg_hba.conf";
    if (auto r = write_file(hba_file, hba); !r) return r;
    if (as_other_user())
      if (auto r = chown_to(hba_file, uid, gid); !r) return r;
    if (auto r = chmod_to(hba_file, 0600); !r) return r;

    const fs::path conf = cluster_dir / "flowreg.conf";
    const std::string text = fmt::format(
        "# Written by flowreg before every start: edits are lost.\n"
        "listen_addresses = {}\n"
        "password_encryption = 'scram-sha-256'\n"
        "{}"
        "port = {}\n"
        "unix_socket_directories = {}\n"
        "unix_socket_permissions = 0700\n"
        "max_connections = 100\n"
        "shared_buffers = 64MB\n"
        "fsync = {}\n"
        "synchronous_commit = on\n"
        "full_page_writes = on\n"
        "logging_collector = off\n"
        "log_line_prefix = '%m [%p] '\n",
        conf_value(addresses), tls_settings, listen.port, conf_value(socket_dir.string()),
        options.fsync ? "on" : "off");
    if (auto r = write_file(conf, text); !r) return r;
    if (as_other_user())
      if (auto r = chown_to(conf, uid, gid); !r) return r;
    return chmod_to(conf, 0600);
  }

  // After a crash the postmaster of postmaster.pid may linger as a zombie until it is reaped, and
  // postgres refuses to start while that pid exists. Wait for it.
  Result<void> wait_for_dead_postmaster(MonotonicClock::time_point deadline) const {
    auto pid = read_postmaster_pid(cluster_dir);
    if (!pid) return {};
    while (process_state(*pid) == ProcState::zombie) {
      if (MonotonicClock::now() >= deadline)
        return db_error(
            fmt::format("the previous postmaster (pid {}, from {}) died but was not "
                        "reaped: its parent must wait() for it",
                        *pid, (cluster_dir / "postmaster.pid").string()));
      std::this_thread::sleep_for(milliseconds(50));
    }
    return {};
  }

  Result<void> start_server() const {
    const auto deadline = MonotonicClock::now() + options.start_timeout;
    while (true) {
      if (auto r = wait_for_dead_postmaster(deadline); !r) return r;
      const auto log_offset = file_size_or_zero(log_file);
      const auto left = std::max<std::chrono::seconds::rep>(
          1, std::chrono::duration_cast<std::chrono::seconds>(deadline - MonotonicClock::now())
                 .count());
      std::vector<std::string> argv = {
          tool("pg_ctl"),    "start", "-D", cluster_dir.string(), "-l",
          log_file.string(), "-w",    "-t", std::to_string(left), "-s"};
      auto r = run(argv, std::chrono::seconds(left + 15));
      if (r.exited_ok()) return {};
      const std::string tail = log_tail(log_file, log_offset);
      // Processes of a killed server still attached to its shared memory, or its pid still
      // taken: postgres refuses, and a moment later it is fine.
      const bool transient = tail.find("pre-existing shared memory block") != std::string::npos ||
                             (tail.find("lock file") != std::string::npos &&
                              tail.find("already exists") != std::string::npos);
      if (transient && MonotonicClock::now() + milliseconds(250) < deadline) {
        std::this_thread::sleep_for(milliseconds(250));
        continue;
      }
      return db_error(
          fmt::format("starting PostgreSQL (cluster {}) failed: {} {}: {}\n--- {} ---\n{}",
                      cluster_dir.string(), join(argv), r.describe_end(),
                      trim(r.err + "\n" + r.out), log_file.string(), tail));
    }
  }

  // With database.listen: generates <data_dir>/db.password when missing, and sets it on the owner's
  // role (scram-sha-256) when it was generated or the server was just started. The statement is
  // kept out of the server log (log_statement, log_min_error_statement), and no message here
  // holds the password.
  Result<void> ensure_password(bool started) const {
    const fs::path file = options.data_dir / "db.password";
    bool created = false;
    if (!fs::exists(file)) {
      auto password = new_password();
      if (!password) return tl::unexpected(password.error());
      if (auto r = write_private_file(file, *password + "\n"); !r) return r;
      created = true;
    }
    if (!created && !started) return {};
    auto password = read_password(file);
    if (!password) return tl::unexpected(password.error());
    try {
      pqxx::connection conn(maintenance_conninfo());
      pqxx::nontransaction tx(conn);
      tx.exec0("SET log_statement = 'none'");
      tx.exec0("SET log_min_error_statement = 'panic'");
      tx.exec0("SET password_encryption = 'scram-sha-256'");
      tx.exec0("ALTER ROLE " + conn.quote_name(owner_name) + " PASSWORD " + conn.quote(*password));
      return {};
    } catch (const std::exception& e) {
      // The server's message names the role, never the password.
      return db_error(fmt::format("setting the password of role '{}' from {} failed: {}",
                                  owner_name, file.string(), trim(e.what())));
    }
  }

  std::string maintenance_conninfo() const {
    return fmt::format("host={} port={} dbname=postgres user={}",
                       conninfo_value(socket_dir.string()), options.listen.port,
                       conninfo_value(owner_name));
  }

  // Connects to the maintenance database and creates ours when missing. `transient` tells
  // whether the failure may pass by itself: the server is starting, shutting down, recovering, or
  // dying (a killed postmaster that still looked alive a moment ago).
  Result<void> ensure_database(const std::string& maintenance_conninfo, bool& transient) const {
    transient = false;
    try {
      pqxx::connection conn(maintenance_conninfo);
      pqxx::nontransaction tx(conn);
      auto rows = tx.exec_params("SELECT 1 FROM pg_database WHERE datname = $1", options.database);
      if (rows.empty()) tx.exec0("CREATE DATABASE " + conn.quote_name(options.database));
      return {};
    } catch (const pqxx::broken_connection& e) {
      const std::string what = e.what();
      for (const char* marker :
           {"starting up", "shutting down", "recovery mode", "closed the connection",
            "No such file or directory", "Connection refused"})
        if (what.find(marker) != std::string::npos) transient = true;
      return db_error(fmt::format("cannot connect to the cluster {} ({}): {}\n--- {} ---\n{}",
                                  cluster_dir.string(), maintenance_conninfo, trim(what),
                                  log_file.string(), log_tail(log_file)));
    } catch (const std::exception& e) {
      return db_error(fmt::format("creating database '{}' in cluster {} failed: {}",
                                  options.database, cluster_dir.string(), trim(e.what())));
    }
  }
};

}  // namespace

Result<std::string> EmbeddedCluster::ensure_running() {
  auto outcome = start();
  if (!outcome) return tl::unexpected(outcome.error());
  return std::move(outcome->connection_string);
}

Result<StartOutcome> EmbeddedCluster::start() {
  const Ops ops{options_, home_, run_as_owner_, socket_dir_, owner_name_, owner_uid_, owner_gid_};
  std::error_code ec;
  fs::create_directories(options_.data_dir, ec);
  if (ec)
    return make_error(Errc::io, fmt::format("cannot create data directory {}: {}",
                                            options_.data_dir.string(), ec.message()));
  // Init and start may take a while in another process; wait for it a bit longer than that.
  auto lock = FileLock::acquire(options_.data_dir / "cluster.lock",
                                options_.start_timeout * 2 + std::chrono::seconds(300));
  if (!lock) return tl::unexpected(lock.error());

  StartOutcome outcome;
  const auto deadline = MonotonicClock::now() + options_.start_timeout;
  while (true) {
    auto pid = running_postmaster(ops.cluster_dir);
    if (!pid) {
      if (auto r = ops.prepare_dirs(); !r) return tl::unexpected(r.error());
      if (!fs::exists(ops.cluster_dir / "PG_VERSION", ec)) {
        if (fs::exists(ops.cluster_dir, ec))
          return db_error(
              fmt::format("{} exists but holds no PostgreSQL cluster (no PG_VERSION): "
                          "move it away to let flowreg create a new one",
                          ops.cluster_dir.string()));
        const auto t0 = MonotonicClock::now();
        if (auto r = ops.init(); !r) return tl::unexpected(r.error());
        outcome.initialized = true;
        outcome.init_time = std::chrono::duration_cast<milliseconds>(MonotonicClock::now() - t0);
      }
      if (auto r = ops.write_settings(); !r) return tl::unexpected(r.error());
      const auto t0 = MonotonicClock::now();
      if (auto r = ops.start_server(); !r) return tl::unexpected(r.error());
      outcome.started = true;
      outcome.start_time = std::chrono::duration_cast<milliseconds>(MonotonicClock::now() - t0);
      pid = read_postmaster_pid(ops.cluster_dir);
    }
    bool transient = false;
    auto ready = ops.ensure_database(connection_string("postgres"), transient);
    if (ready && options_.listen.enabled()) ready = ops.ensure_password(outcome.started);
    if (ready) {
      outcome.postmaster_pid = pid.value_or(0);
      outcome.connection_string = connection_string();
      return outcome;
    }
    // The server we found (or just started) may be dying or still recovering: look again.
    if (!transient || MonotonicClock::now() >= deadline) return tl::unexpected(ready.error());
    std::this_thread::sleep_for(milliseconds(100));
  }
}

Result<void> EmbeddedCluster::stop() {
  const Ops ops{options_, home_, run_as_owner_, socket_dir_, owner_name_, owner_uid_, owner_gid_};
  std::error_code ec;
  if (!fs::exists(options_.data_dir, ec)) return {};
  auto lock = FileLock::acquire(options_.data_dir / "cluster.lock",
                                options_.start_timeout * 2 + std::chrono::seconds(300));
  if (!lock) return tl::unexpected(lock.error());
  // A socket directory of our own in /tmp goes away with the server; <data_dir>/run stays.
  const auto remove_private_socket_dir = [&] {
    if (socket_dir_.parent_path() != home_) fs::remove(socket_dir_, ec);
  };
  if (!running_postmaster(ops.cluster_dir)) {
    remove_private_socket_dir();  // only when empty: a crashed server may have left its socket
    return {};
  }
  const auto log_offset = file_size_or_zero(ops.log_file);
  const auto timeout = options_.start_timeout.count();
  std::vector<std::string> argv = {
      ops.tool("pg_ctl"),      "stop", "-D", ops.cluster_dir.string(), "-m", "fast", "-w", "-t",
      std::to_string(timeout), "-s"};
  auto r = ops.run(argv, std::chrono::seconds(timeout + 15));
  if (!r.exited_ok())
    return db_error(fmt::format(
        "stopping PostgreSQL (cluster {}) failed: {} {}: {}\n--- {} ---\n{}",
        ops.cluster_dir.string(), join(argv), r.describe_end(), trim(r.err + "\n" + r.out),
        ops.log_file.string(), log_tail(ops.log_file, log_offset)));
  remove_private_socket_dir();
  return {};
}

}  // namespace flowreg::detail
