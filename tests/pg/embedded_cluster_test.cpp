#include "cluster/embedded_cluster.hpp"

#include <doctest/doctest.h>
#include <fcntl.h>
#include <pwd.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <pqxx/pqxx>
#include <set>
#include <sstream>
#include <string>
#include <thread>

#include "pg/pg_fixture.hpp"
#include "support/result_text.hpp"

using flowreg::Errc;
using flowreg::detail::ClusterOptions;
using flowreg::detail::EmbeddedCluster;
namespace fs = std::filesystem;

using flowreg::pgtest::shared_cluster;
using flowreg::pgtest::test_root;
using flowreg::pgtest::track;

namespace {

std::string query_one(const std::string& conninfo, const std::string& sql) {
  pqxx::connection conn(conninfo);
  pqxx::nontransaction tx(conn);
  return tx.exec1(sql)[0].as<std::string>();
}

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

// The OS user a cluster created by this process belongs to.
std::string expected_owner() {
  if (geteuid() == 0) return "postgres";
  return getpwuid(geteuid())->pw_name;
}

bool process_gone(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string stat;
  if (!in || !std::getline(in, stat)) return true;
  const auto close = stat.rfind(')');
  return close != std::string::npos && close + 2 < stat.size() && stat[close + 2] == 'Z';
}

}  // namespace

TEST_SUITE("embedded_cluster") {
  TEST_CASE("starts a cluster, connects and runs select 1") {
    auto& cluster = shared_cluster();
    auto conninfo = cluster.ensure_running();
    REQUIRE_MESSAGE(conninfo, flowreg::testing::failure_text(conninfo));
    CHECK(query_one(*conninfo, "SELECT 1") == "1");
    CHECK(query_one(*conninfo, "SELECT current_database()") == "flowreg");
    CHECK(query_one(*conninfo, "SELECT current_user") == expected_owner());
    // No TCP: the server listens on its unix socket only.
    CHECK(query_one(*conninfo, "SHOW listen_addresses") == "");
    // The tests' cluster is a throwaway one (ClusterOptions::fsync false); a cluster with
    // flowreg's settings is checked in "two processes starting a new cluster at once".
    CHECK(query_one(*conninfo, "SHOW fsync") == "off");
    CHECK(query_one(*conninfo, "SHOW synchronous_commit") == "on");
  }

  TEST_CASE("the unix socket moves to a short directory when its path would not fit sun_path") {
    const fs::path short_dir = "/tmp/flowreg_x";
    CHECK(EmbeddedCluster::socket_dir_for(short_dir) == short_dir / "run");
    const fs::path long_dir = "/tmp/" + std::string(100, 'd');
    const fs::path fallback = EmbeddedCluster::socket_dir_for(long_dir);
    CHECK(fallback.parent_path() == "/tmp");
    CHECK(fallback.filename().string().rfind("flowreg-", 0) == 0);
    CHECK((fallback / ".s.PGSQL.5432").string().size() <= 107);
    CHECK(EmbeddedCluster::socket_dir_for(long_dir) == fallback);  // stable across processes
    CHECK(EmbeddedCluster::socket_dir_for(long_dir / "2") != fallback);
    // The shared cluster has such a long path, and it works (see the other cases).
    auto& cluster = shared_cluster();
    CHECK(cluster.socket_dir().parent_path() == "/tmp");
    CHECK(fs::exists(cluster.socket_dir() / ".s.PGSQL.5432"));
  }

  TEST_CASE("the cluster directory belongs to its owner with mode 0700") {
    auto& cluster = shared_cluster();
    REQUIRE(cluster.ensure_running());
    auto status = cluster.status();
    REQUIRE(status);
    CHECK(status->initialized);
    CHECK(status->running);
    CHECK(status->owner == expected_owner());
    struct stat st {};
    REQUIRE(stat(status->cluster_dir.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0700);
    CHECK(getpwuid(st.st_uid)->pw_name == expected_owner());
    REQUIRE(stat(status->socket_dir.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0700);
    // The postmaster runs as the owner: as root, that is "postgres", never root.
    std::ifstream proc("/proc/" + std::to_string(status->postmaster_pid) + "/status");
    std::string line, uid_line;
    while (std::getline(proc, line))
      if (line.rfind("Uid:", 0) == 0) uid_line = line;
    std::istringstream fields(uid_line.substr(4));
    uid_t real_uid = 0;
    fields >> real_uid;
    CHECK(getpwuid(real_uid)->pw_name == expected_owner());
    CHECK(contains(status->connection_string, "user='" + expected_owner() + "'"));
  }

  TEST_CASE("a second ensure_running reuses the running cluster") {
    auto& cluster = shared_cluster();
    auto first = cluster.start();
    REQUIRE_MESSAGE(first, flowreg::testing::failure_text(first));
    // Another object on the same data directory, as another process would have.
    auto other = EmbeddedCluster::open(cluster.data_dir());
    REQUIRE(other);
    auto second = other->start();
    REQUIRE_MESSAGE(second, flowreg::testing::failure_text(second));
    CHECK_FALSE(second->initialized);
    CHECK_FALSE(second->started);
    CHECK(second->postmaster_pid == first->postmaster_pid);
    CHECK(second->connection_string == first->connection_string);
  }

  TEST_CASE("stop then start again keeps the data") {
    auto& cluster = shared_cluster();
    auto conninfo = cluster.ensure_running();
    REQUIRE(conninfo);
    {
      pqxx::connection conn(*conninfo);
      pqxx::work tx(conn);
      tx.exec0(
          "DROP TABLE IF EXISTS kept; CREATE TABLE kept (x int); INSERT INTO kept VALUES (42)");
      tx.commit();
    }
    auto stopped = cluster.stop();
    REQUIRE_MESSAGE(stopped, flowreg::testing::failure_text(stopped));
    auto status = cluster.status();
    REQUIRE(status);
    CHECK_FALSE(status->running);
    CHECK_THROWS_AS(query_one(*conninfo, "SELECT 1"), pqxx::broken_connection);
    CHECK(cluster.stop());  // stopping a stopped cluster is a no-op

    auto again = cluster.start();
    REQUIRE_MESSAGE(again, flowreg::testing::failure_text(again));
    CHECK(again->started);
    CHECK_FALSE(again->initialized);
    MESSAGE("restart of a stopped cluster: ", again->start_time.count(), " ms");
    CHECK(query_one(again->connection_string, "SELECT x FROM kept") == "42");
  }

  TEST_CASE("recovers after the postmaster is killed with SIGKILL") {
    auto& cluster = shared_cluster();
    auto before = cluster.start();
    REQUIRE(before);
    {
      pqxx::connection conn(before->connection_string);
      pqxx::work tx(conn);
      tx.exec0(
          "DROP TABLE IF EXISTS survivor; CREATE TABLE survivor (x int);"
          "INSERT INTO survivor VALUES (7)");
      tx.commit();
    }
    const pid_t old_pid = before->postmaster_pid;
    REQUIRE(old_pid > 0);
    REQUIRE(kill(old_pid, SIGKILL) == 0);
    // A crash: postmaster.pid stays behind.
    CHECK(fs::exists(cluster.data_dir() / "pg" / "postmaster.pid"));

    const auto t0 = std::chrono::steady_clock::now();
    auto after = cluster.start();
    REQUIRE_MESSAGE(after, flowreg::testing::failure_text(after));
    MESSAGE(
        "restart after SIGKILL: ",
        std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::steady_clock::now() - t0)
            .count(),
        " ms");
    CHECK(after->started);
    CHECK(after->postmaster_pid != old_pid);
    CHECK(process_gone(old_pid));
    CHECK(query_one(after->connection_string, "SELECT x FROM survivor") == "7");
  }

  TEST_CASE("two processes starting a new cluster at once run initdb once and start it once") {
    const fs::path data_dir = test_root() / "concurrent";
    {
      auto cluster = EmbeddedCluster::open(data_dir);
      REQUIRE(cluster);
      track(*cluster);
    }
    int go[2], results[2];
    REQUIRE(pipe2(go, O_CLOEXEC) == 0);
    REQUIRE(pipe2(results, O_CLOEXEC) == 0);  // the postmaster must not inherit them
    pid_t children[2];
    for (pid_t& child : children) {
      child = fork();
      REQUIRE(child >= 0);
      if (child == 0) {
        close(go[1]);
        close(results[0]);
        char c;
        while (read(go[0], &c, 1) > 0) {
        }  // both start when the parent closes the pipe
        std::string line;
        auto cluster = EmbeddedCluster::open(data_dir);  // production settings: sync initdb
        auto outcome = cluster ? cluster->start() : tl::unexpected(cluster.error());
        if (outcome)
          line = "ok " + std::to_string(outcome->initialized) + " " +
                 std::to_string(outcome->started) + " " + std::to_string(outcome->postmaster_pid) +
                 " " + std::to_string(outcome->init_time.count()) + " " +
                 std::to_string(outcome->start_time.count()) + "\n";
        else
          line = "error " + outcome.error().format() + "\n";
        [[maybe_unused]] auto n = write(results[1], line.data(), line.size());
        _exit(0);
      }
    }
    close(go[0]);
    close(results[1]);
    close(go[1]);  // go
    std::string all;
    char buffer[4096];
    ssize_t n;
    while ((n = read(results[0], buffer, sizeof buffer)) > 0)
      all.append(buffer, static_cast<std::size_t>(n));
    close(results[0]);
    for (pid_t child : children) {
      int status = 0;
      waitpid(child, &status, 0);
      CHECK(WIFEXITED(status));
    }
    INFO(all);
    std::istringstream lines(all);
    int oks = 0, inits = 0, starts = 0;
    std::set<long> pids;
    std::string word;
    while (lines >> word) {
      if (word != "ok") break;
      int initialized = 0, started = 0;
      long pid = 0, init_ms = 0, start_ms = 0;
      lines >> initialized >> started >> pid >> init_ms >> start_ms;
      ++oks;
      inits += initialized;
      starts += started;
      pids.insert(pid);
      if (initialized) MESSAGE("initdb (synced): ", init_ms, " ms; first start: ", start_ms, " ms");
    }
    CHECK(oks == 2);
    CHECK(inits == 1);
    CHECK(starts == 1);
    CHECK(pids.size() == 1);
    auto cluster = EmbeddedCluster::open(data_dir);
    REQUIRE(cluster);
    // Not in the fallback directory: this path is short.
    CHECK(cluster->socket_dir() == data_dir / "run");
    auto conninfo = cluster->ensure_running();
    REQUIRE(conninfo);
    CHECK(query_one(*conninfo, "SELECT count(*) FROM pg_database WHERE datname = 'flowreg'") ==
          "1");
    // Production settings: durable commits.
    CHECK(query_one(*conninfo, "SHOW fsync") == "on");
    CHECK(query_one(*conninfo, "SHOW synchronous_commit") == "on");
    CHECK(query_one(*conninfo, "SHOW full_page_writes") == "on");
    CHECK(cluster->stop());
    auto status = cluster->status();
    REQUIRE(status);
    CHECK_FALSE(status->running);
  }

  TEST_CASE("missing server binaries give an error that says what to install") {
    const fs::path empty_bin = test_root() / "empty_bin";
    fs::create_directories(empty_bin);
    ClusterOptions options;
    options.data_dir = test_root() / "never_created";
    options.bin_dir = empty_bin;
    auto cluster = EmbeddedCluster::open(options);
    REQUIRE_FALSE(cluster);
    CHECK(cluster.error().code == Errc::not_found);
    const std::string message = cluster.error().message;
    CHECK(contains(message, "PostgreSQL server binaries (initdb, pg_ctl) not found"));
    CHECK(contains(message, empty_bin.string()));
    CHECK(contains(message, "apt-get install postgresql-15"));
    CHECK_FALSE(fs::exists(options.data_dir));
  }

  TEST_CASE(
      "regression: as root, a data directory the postgres user cannot reach gets a cluster home "
      "of its own, linked from the data directory (a checkout in root's 0700 home failed)") {
    const fs::path hidden = test_root() / "hidden";
    fs::create_directories(hidden);
    REQUIRE(chmod(hidden.c_str(), 0700) == 0);
    ClusterOptions options;
    options.data_dir = hidden / "data";
    options.relocation_root = test_root() / "relocated";
    options.sync_init = false;
    auto cluster = EmbeddedCluster::open(options);
    REQUIRE(cluster);
    if (geteuid() != 0) {
      // Not root: the cluster runs as ourselves, who can enter our own 0700 directory.
      CHECK(cluster->status()->owner == expected_owner());
      CHECK(cluster->home() == options.data_dir);
      return;
    }
    track(*cluster);
    CHECK(cluster->home().parent_path() == options.relocation_root);
    auto conninfo = cluster->ensure_running();
    INFO((conninfo ? std::string() : conninfo.error().message));
    REQUIRE(conninfo);
    CHECK(query_one(*conninfo, "SELECT current_user") == "postgres");
    CHECK(fs::is_symlink(options.data_dir / "pg"));
    CHECK(fs::read_symlink(options.data_dir / "pg") == cluster->home() / "pg");
    struct stat st {};
    REQUIRE(::stat(hidden.c_str(), &st) == 0);
    CHECK((st.st_mode & 07777) == 0700);  // nothing was widened
    // Found again from the link, whatever the relocation root of the caller.
    auto again = EmbeddedCluster::open(options.data_dir);
    REQUIRE(again);
    CHECK(again->home() == cluster->home());
    CHECK(again->status()->running);
    CHECK(cluster->stop());
  }

  TEST_CASE("a failed start names the cluster and shows the end of the server log") {
    const fs::path data_dir = test_root() / "broken";
    auto cluster = EmbeddedCluster::open(data_dir);
    REQUIRE(cluster);
    track(*cluster);
    // A cluster directory without postgresql.conf: the server exits at once and says why.
    const fs::path pg = data_dir / "pg";
    fs::create_directories(pg);
    std::ofstream(pg / "PG_VERSION") << "15\n";
    const passwd* owner = getpwnam(expected_owner().c_str());
    REQUIRE(owner);
    REQUIRE(chown(pg.c_str(), owner->pw_uid, owner->pw_gid) == 0);
    REQUIRE(chown((pg / "PG_VERSION").c_str(), owner->pw_uid, owner->pw_gid) == 0);
    REQUIRE(chmod(pg.c_str(), 0700) == 0);

    auto started = cluster->start();
    REQUIRE_FALSE(started);
    CHECK(started.error().code == Errc::database);
    const std::string message = started.error().message;
    INFO(message);
    CHECK(contains(message, "starting PostgreSQL (cluster " + pg.string() + ") failed"));
    CHECK(contains(message, (data_dir / "pg.log").string()));
    CHECK(contains(message, "postgresql.conf"));  // from the log tail
  }
}
