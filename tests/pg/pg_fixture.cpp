// The cluster shared by the cases of one test process, and cleanup at exit.
//
// Declared in pg_fixture.hpp.
//   flowreg::pgtest::test_root()       /tmp/flowreg_pg_test_<pid>, this process's scratch space
//   flowreg::pgtest::shared_cluster()  started once per process, stopped and removed at exit
//   flowreg::pgtest::track(cluster)    another cluster to stop at exit
//   flowreg::pgtest::empty_database(n) a new, empty database n of the shared cluster (dropped
//                                      first when it exists); its connection string
//   flowreg::pgtest::step, store_flow  test flows stored through RunStore

#include "pg/pg_fixture.hpp"

#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <mutex>
#include <pqxx/pqxx>
#include <stdexcept>
#include <string>
#include <vector>

#include "cluster/embedded_cluster.hpp"
#include "store/migrations.hpp"

namespace flowreg::pgtest {

namespace fs = std::filesystem;
using detail::ClusterOptions;
using detail::EmbeddedCluster;

fs::path test_root() {
  static const fs::path root = fs::path("/tmp") / ("flowreg_pg_test_" + std::to_string(getpid()));
  return root;
}

namespace {

struct Cleanup {
  std::mutex mutex;
  std::vector<EmbeddedCluster> clusters;

  // Runs after OpenSSL's own exit handler: nothing here may hash (EmbeddedCluster::open would).
  ~Cleanup() {
    if (getpid() != owner_pid) return;  // a forked child leaves the clusters to its parent
    for (auto& cluster : clusters) {
      if (auto r = cluster.stop(); !r)
        std::fprintf(stderr, "cleanup: %s\n", r.error().format().c_str());
    }
    std::error_code ec;
    fs::remove_all(test_root(), ec);
  }
  pid_t owner_pid = getpid();
};

Cleanup& cleanup() {
  static Cleanup instance;
  return instance;
}

}  // namespace

void track(const EmbeddedCluster& cluster) {
  auto& c = cleanup();
  std::lock_guard lock(c.mutex);
  c.clusters.push_back(cluster);
}

EmbeddedCluster& shared_cluster() {
  // Deliberately long: "<data_dir>/run/.s.PGSQL.5432" exceeds sun_path, so every case that uses
  // this cluster also exercises the short socket directory in /tmp.
  static const fs::path data_dir =
      test_root() / "shared_cluster_with_a_name_long_enough_to_push_the_socket_path_past_sun_path";
  static EmbeddedCluster* cluster = [] {
    cleanup();  // constructed first, so destroyed after the cluster is no longer used
    ClusterOptions options;
    options.data_dir = data_dir;
    options.sync_init = false;  // a throwaway cluster
    options.fsync = false;
    auto opened = EmbeddedCluster::open(options);
    if (!opened) throw std::runtime_error(opened.error().format());
    track(*opened);
    auto started = opened->start();
    if (!started) throw std::runtime_error(started.error().format());
    std::fprintf(stderr, "shared cluster: initdb %lld ms, start %lld ms\n",
                 static_cast<long long>(started->init_time.count()),
                 static_cast<long long>(started->start_time.count()));
    auto* c = new EmbeddedCluster(std::move(*opened));  // never destroyed: used until exit
    return c;
  }();
  return *cluster;
}

namespace {

// Database `name` of the shared cluster, dropped first when it exists, made from `from` (empty:
// PostgreSQL's template1); its connection string.
std::string new_database(const std::string& name, const std::string& from) {
  auto& cluster = shared_cluster();
  auto started = cluster.ensure_running();
  if (!started) throw std::runtime_error(started.error().format());
  pqxx::connection conn(cluster.connection_string("postgres"));
  pqxx::nontransaction tx(conn);
  tx.exec0("DROP DATABASE IF EXISTS " + conn.quote_name(name) + " WITH (FORCE)");
  // With a template: waits up to 5 s for the backend that last used it to go away.
  tx.exec0("CREATE DATABASE " + conn.quote_name(name) +
           (from.empty() ? "" : " TEMPLATE " + conn.quote_name(from)));
  return cluster.connection_string(name);
}

}  // namespace

std::string empty_database(const std::string& name) { return new_database(name, ""); }

std::string migrated_database(const std::string& name) {
  static const std::string kTemplate = "flowreg_test_migrated";
  static std::once_flag made;
  std::call_once(made, [] {
    auto migrated = detail::migrate(empty_database(kTemplate));
    if (!migrated) throw std::runtime_error(migrated.error().format());
  });
  return new_database(name, kTemplate);
}

const fs::path& cluster_template() {
  static const fs::path data_dir = [] {
    const fs::path dir = test_root() / "cluster_template";
    cleanup();  // constructed after test_root()'s path, which its destructor removes
    ClusterOptions options;
    options.data_dir = dir;
    options.sync_init = false;  // flowreg processes start it with the settings they write
    auto opened = EmbeddedCluster::open(options);
    if (!opened) throw std::runtime_error(opened.error().format());
    auto started = opened->ensure_running();  // creates the database "flowreg"
    if (!started) throw std::runtime_error(started.error().format());
    auto migrated = detail::migrate(*started);
    if (!migrated) throw std::runtime_error(migrated.error().format());
    if (auto stopped = opened->stop(); !stopped) throw std::runtime_error(stopped.error().format());
    return dir;
  }();
  return data_dir;
}

StepDef step(const std::string& slug, std::vector<std::string> deps, StepKind kind) {
  StepDef s;
  s.slug = slug;
  s.kind = kind;
  s.handler = "test.noop";
  s.depends_on = std::move(deps);
  return s;
}

detail::FlowKey store_flow(detail::RunStore& store, const std::string& slug,
                           std::vector<StepDef> steps, const Options& options) {
  FlowDef f;
  f.slug = slug;
  f.module = "test";
  f.options = options;
  f.steps = std::move(steps);
  detail::FlowKey key{slug, flow_version(f)};
  auto stored = store.upsert_flow(f, key.version);
  if (!stored) throw std::runtime_error("storing flow " + slug + ": " + stored.error().format());
  return key;
}

}  // namespace flowreg::pgtest
