#pragma once
// The PostgreSQL cluster that flowreg manages itself when no database URL is configured.
//
// Layout under the data directory (default ".flowreg" in the working directory):
//   <data_dir>/cluster.lock   flock()ed by every process that inits, starts or stops the cluster
//   <data_dir>/pg/            the cluster (initdb), owned by the cluster owner, mode 0700
//   <data_dir>/pg.log         the server log (pg_ctl -l)
//   <data_dir>/run/           the unix socket directory (0700), or /tmp/flowreg-<hash> when
//                             "<data_dir>/run/.s.PGSQL.5432" would not fit in sun_path (107 bytes)
// pg/, pg.log and run/ live in the cluster's home, which is the data directory, except when root
// runs flowreg on a data directory the user "postgres" cannot reach (a checkout in root's 0700
// home): then the home is <relocation_root>/<hash of data_dir> (/var/lib/flowreg/...), and
// <data_dir>/pg is a symbolic link to <home>/pg, by which later starts find it.
// The server listens on that unix socket, authentication "trust": only the cluster owner (and
// root) can open the 0700 socket directory. With listen options (database.listen) it listens on
// TCP too, for workers on other hosts: pg_hba.conf (rewritten at every start) admits the allowed
// networks only, with scram-sha-256 and the password generated into
//   <data_dir>/db.password    0600, the flowreg user's; set on the cluster owner's role at start
// and, with a certificate and key, over TLS only (copied into pg/ as flowreg-server.{crt,key}).
// Without listen options it listens on no TCP address (listen_addresses = '').
//
// Who owns the cluster: initdb and postgres refuse to run as root. A process running as root runs
// initdb, pg_ctl and postgres as the OS user "postgres" (through setpriv), the cluster directory
// belongs to that user, and connections use user=postgres. A non-root process runs them directly,
// as itself. An existing cluster keeps the owner it has: root uses whoever owns <data_dir>/pg, and
// a non-root user who does not own it gets an error.
//
// Thread-safety: an EmbeddedCluster is immutable after open(); every method may be called from
// any thread, and several objects (in one process or many) may point at the same data directory:
// init, start and stop serialize on cluster.lock.

#include <sys/types.h>

#include <chrono>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "flowreg/config.hpp"
#include "flowreg/error.hpp"

namespace flowreg::detail {

struct ClusterOptions {
  std::filesystem::path data_dir = ".flowreg";  // made absolute by open()
  // Directory holding initdb, pg_ctl and postgres. Empty: `pg_config --bindir` when that holds
  // them, else the newest /usr/lib/postgresql/<version>/bin.
  std::filesystem::path bin_dir;
  std::string database = "flowreg";  // created on first start
  // Where root keeps the homes of clusters whose data directory the user "postgres" cannot reach.
  std::filesystem::path relocation_root = "/var/lib/flowreg";
  // Passed to pg_ctl -t for start and stop; a start also waits this long for a killed server's
  // processes to go away.
  std::chrono::seconds start_timeout{60};
  // initdb fsyncs the new cluster unless this is false (--no-sync: faster, for throwaway
  // clusters in tests; a machine crash right after init could then corrupt the cluster).
  bool sync_init = true;
  // The server's fsync setting. Off only for the tests' throwaway clusters: a crash of PostgreSQL
  // still loses nothing (what it wrote is in the kernel's cache), one of the machine can corrupt
  // the cluster.
  bool fsync = true;
  // TCP access for other hosts; listen.port names the unix socket too. Checked by open().
  DatabaseListen listen;
};

struct ClusterStatus {
  bool initialized = false;  // <data_dir>/pg holds a cluster
  bool running = false;      // a live postmaster owns <data_dir>/pg
  pid_t postmaster_pid = 0;  // when running
  std::filesystem::path data_dir, cluster_dir, socket_dir, log_file, bin_dir;
  std::string owner;  // OS user that owns (or will own) the cluster
  std::string connection_string;
};

// What ensure_running() had to do; for callers and tests that care.
struct StartOutcome {
  std::string connection_string;
  bool initialized = false;  // this call ran initdb
  bool started = false;      // this call started the server (false: it was already running)
  pid_t postmaster_pid = 0;
  std::chrono::milliseconds init_time{0}, start_time{0};
};

class EmbeddedCluster {
 public:
  static constexpr int kPort = 5432;  // the default port (of the socket file, and TCP's)

  // Resolves the paths, the binaries and the cluster owner; touches nothing on disk. Errors:
  // Errc::not_found when the server binaries are missing, Errc::invalid_argument when the cluster
  // belongs to another user or root has no "postgres" user to run it.
  static Result<EmbeddedCluster> open(ClusterOptions options);
  static Result<EmbeddedCluster> open(std::filesystem::path data_dir = ".flowreg");
  // The cluster of a configuration's database section (data_dir and listen).
  static Result<EmbeddedCluster> open(const DatabaseSettings& settings);

  EmbeddedCluster(EmbeddedCluster&&) noexcept = default;
  EmbeddedCluster& operator=(EmbeddedCluster&&) noexcept = default;
  EmbeddedCluster(const EmbeddedCluster&) = default;
  EmbeddedCluster& operator=(const EmbeddedCluster&) = default;

  // Inits the cluster when it does not exist, starts it when it is not running (recovering from a
  // crash: a stale postmaster.pid is pg_ctl's and postgres's business; this waits for the dead
  // server's processes to go away), creates the database when missing, and returns the libpq
  // connection string. Errc::database on failure, with the tail of pg.log when a start failed.
  Result<std::string> ensure_running();
  Result<StartOutcome> start();  // the same, telling what it did

  // Stops the server (pg_ctl stop -m fast: open sessions are ended). A no-op when not running.
  Result<void> stop();

  Result<ClusterStatus> status() const;

  // libpq connection string for another database of this cluster.
  std::string connection_string(std::string_view database) const;
  std::string connection_string() const { return connection_string(options_.database); }

  // The URL a worker on another host connects with: postgresql://owner:password@host:port/db,
  // with sslmode=verify-full (and sslrootcert when given) when the server has a certificate.
  // `host` empty: the one listen address when it is not a wildcard. Errc::invalid_argument
  // without listen options or a usable host; Errc::not_found before the first start (no password
  // yet). The result holds the password: print it, never log it.
  Result<std::string> remote_url(std::string_view host, std::string_view sslrootcert) const;
  // <data_dir>/db.password
  std::filesystem::path password_file() const { return options_.data_dir / "db.password"; }

  const std::filesystem::path& data_dir() const noexcept { return options_.data_dir; }
  // Where pg/, pg.log and run/ live: data_dir(), or a directory under relocation_root.
  const std::filesystem::path& home() const noexcept { return home_; }
  const std::filesystem::path& bin_dir() const noexcept { return options_.bin_dir; }
  const std::filesystem::path& socket_dir() const noexcept { return socket_dir_; }

  // The unix socket directory for a data directory: <data_dir>/run, or /tmp/flowreg-<hash of
  // data_dir> when the socket path would exceed 107 bytes. REQUIRES: data_dir is absolute.
  static std::filesystem::path socket_dir_for(const std::filesystem::path& data_dir);

 private:
  EmbeddedCluster() = default;

  ClusterOptions options_;
  std::filesystem::path home_;
  std::filesystem::path socket_dir_;
  std::string owner_name_;
  uid_t owner_uid_ = 0;
  gid_t owner_gid_ = 0;
  // Empty, or (when we are root) the command that runs what follows as the owner.
  std::vector<std::string> run_as_owner_;
};

}  // namespace flowreg::detail
