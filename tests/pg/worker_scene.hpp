#pragma once
// What the tests of real worker processes share: SQL and file reading, polling, and a scratch
// directory with a configuration from which `flowreg worker` processes are started.

#include <doctest/doctest.h>

#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <pqxx/pqxx>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "pg/pg_fixture.hpp"
#include "store/migrations.hpp"
#include "store/run_store.hpp"
#include "support/process.hpp"
#include "support/result_text.hpp"

namespace flowreg::pgtest {

// The first column of the first row of `sql`, or "" for no row or NULL. Throws what pqxx throws.
inline std::string query_one(const std::string& conninfo, const std::string& sql) {
  pqxx::connection conn(conninfo);
  pqxx::nontransaction tx(conn);
  auto r = tx.exec(sql);
  if (r.empty() || r[0][0].is_null()) return "";
  return r[0][0].as<std::string>();
}

// query_one, or "" while the database cannot be reached (a cluster starting or restarting).
inline std::string query_one_or_empty(const std::string& conninfo, const std::string& sql) {
  try {
    return query_one(conninfo, sql);
  } catch (const std::exception&) {
    return "";
  }
}

inline std::string read_file(const std::filesystem::path& p) {
  std::ifstream in(p);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// Polls `ready` until it holds or `timeout` passes; whether it held. The first pause is 10 ms,
// each next one half as long again, up to 100 ms (reached 0.2 s in): a poll often opens a
// connection, and each costs the server a backend (a fork and its page faults).
template <class F>
bool eventually(F&& ready, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::chrono::milliseconds pause(10);
  for (;;) {
    if (ready()) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(pause);
    pause = std::min(std::chrono::milliseconds(100), pause * 3 / 2);
  }
}

// A scratch directory holding flowreg.yaml; `conninfo` is its database ("" until known when the
// scene's worker starts an embedded cluster).
struct WorkerScene {
  std::filesystem::path dir;
  std::string conninfo;
  std::string log_level = "info";  // of the workers started

  std::filesystem::path config() const { return dir / "flowreg.yaml"; }

  // `flowreg worker --id ID` on this scene, its output in ID.out and ID.err. With
  // FLOWREG_TEST_ISOLATION=process in the environment (CTest's
  // flowreg_pg_tests/worker_in_processes),
  // `--isolation process`: the same tests, every handler in a handler process.
  test::Child worker(const std::string& id, std::vector<std::string> extra = {}) const {
    std::vector<std::string> argv = {
        FLOWREG_BINARY, "--config", config().string(), "--log-level", log_level, "worker",
        "--id",         id,         "--poll-interval", "200ms"};
    if (const char* isolation = std::getenv("FLOWREG_TEST_ISOLATION"); isolation && *isolation) {
      argv.push_back("--isolation");
      argv.push_back(isolation);
    }
    argv.insert(argv.end(), extra.begin(), extra.end());
    return test::Child::spawn(argv, (dir / (id + ".out")).string(), (dir / (id + ".err")).string());
  }

  // `flowreg --config <this scene's> ARGS...`, run to its end.
  auto cli(std::vector<std::string> args) const {
    args.insert(args.begin(), {FLOWREG_BINARY, "--config", config().string()});
    return test::run_process(args);
  }

  std::string err(const std::string& id) const { return read_file(dir / (id + ".err")); }

  // Starts a run of the newest version of `slug` stored on the scene's database.
  detail::RunId start(const std::string& slug, const nlohmann::json& input) const {
    auto [store, version] = newest(slug);
    auto run = store.start_run(slug, version, input);
    REQUIRE_MESSAGE(run, flowreg::testing::failure_text(run));
    return *run;
  }
  // Starts runs of the newest version of `slug`, one per input, in one transaction.
  std::vector<detail::RunId> start_many(const std::string& slug,
                                        const std::vector<nlohmann::json>& inputs) const {
    auto [store, version] = newest(slug);
    auto runs = store.start_runs(slug, version, inputs);
    REQUIRE_MESSAGE(runs, flowreg::testing::failure_text(runs));
    return *runs;
  }
  // A store on the scene's database, and the newest version of `slug` stored there.
  std::pair<detail::RunStore, std::string> newest(const std::string& slug) const {
    const std::string version =
        query_one_or_empty(conninfo, "SELECT version FROM flowreg.flows WHERE slug = '" + slug +
                                         "' ORDER BY created_at DESC LIMIT 1");
    REQUIRE(!version.empty());
    auto store = detail::RunStore::connect(conninfo);
    REQUIRE_MESSAGE(store, flowreg::testing::failure_text(store));
    return {std::move(*store), version};
  }
  // A column of the run's row in flowreg.runs, as text ("" for NULL).
  std::string run_field(const detail::RunId& run, const std::string& column) const {
    return query_one_or_empty(conninfo,
                              "SELECT " + column + " FROM flowreg.runs WHERE id = '" + run + "'");
  }
  bool ended(const detail::RunId& run) const {
    const std::string status = run_field(run, "status");
    return !status.empty() && status != "started";
  }

  // Waits until worker `id` serves `slug` (its startup line names it); returns the flow version.
  std::string wait_serving(const std::string& id, const std::string& slug) const {
    std::string version;
    const bool ok = eventually(
        [&] {
          version =
              query_one_or_empty(conninfo, "SELECT version FROM flowreg.flows WHERE slug = '" +
                                               slug + "' ORDER BY created_at DESC LIMIT 1");
          return !version.empty() && err(id).find("serving") != std::string::npos;
        },
        std::chrono::seconds(120));
    REQUIRE_MESSAGE(ok, "worker " << id << " never served " << slug << ": " << err(id));
    return version;
  }
};

// Makes `s` (a WorkerScene, or a scene derived from one) a fresh scratch directory `name` under
// the test root, with the fixture plugin `fixture` (built into FLOWREG_FIXTURE_DIR) copied to
// plugins/`as`, all readable by the cluster's user, and a migrated empty database named `name`.
// The caller writes its configuration.
inline void prepare_scene(WorkerScene& s, const std::string& name, const std::string& fixture,
                          const std::string& as) {
  namespace fs = std::filesystem;
  s.dir = test_root() / name;
  fs::remove_all(s.dir);
  fs::create_directories(s.dir / "plugins");
  for (const auto& d : {test_root(), s.dir, s.dir / "plugins"})
    fs::permissions(d, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                           fs::perms::others_read | fs::perms::others_exec);
  fs::copy_file(fs::path(FLOWREG_FIXTURE_DIR) / fixture, s.dir / "plugins" / as);
  fs::permissions(s.dir / "plugins" / as, fs::perms::owner_read | fs::perms::owner_write |
                                              fs::perms::group_read | fs::perms::others_read);
  s.conninfo = migrated_database(name);
}

// A scene of the wchaos plugin (tests/plugins/wchaos.cpp) and a configuration of its plugins
// directory, not watched, and its database (concurrency keys, rate limits, waits).
inline WorkerScene wchaos_scene(const std::string& name) {
  WorkerScene s;
  prepare_scene(s, name, "wchaos.so", "wchaos.so");
  std::ofstream config(s.config());
  config << "plugins:\n  dir: plugins\n  watch: false\ndatabase:\n  url: "
         << nlohmann::json(s.conninfo).dump() << "\n";
  return s;
}

}  // namespace flowreg::pgtest
