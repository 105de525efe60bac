// `flowreg db`: the migrations and the embedded cluster.

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <memory>
#include <string>

#include "app/health.hpp"
#include "cli/commands.hpp"
#include "cluster/embedded_cluster.hpp"
#include "store/migrations.hpp"
#include "util/json_text.hpp"

namespace flowreg::cli {

namespace {

struct MigrateArgs {
  double lock_wait_s = 120;
  long long lock_timeout_ms = 500;
};

int db_migrate(const Globals& g, const MigrateArgs& args) {
  auto config = effective_config(g);
  auto url = config ? database_url(*config) : tl::unexpected(config.error());
  detail::MigrateOptions options;
  options.lock_timeout = std::chrono::milliseconds(args.lock_timeout_ms);
  options.lock_wait = std::chrono::milliseconds(static_cast<long long>(args.lock_wait_s * 1000));
  auto migrated = url ? detail::migrate(*url, options) : tl::unexpected(url.error());
  if (!migrated) return report(migrated.error());
  for (const auto& m : migrated->applied) fmt::print("applied {:04}_{}\n", m.version, m.name);
  for (const auto& name : migrated->functions) fmt::print("applied function {}\n", name);
  fmt::print("{} migration(s) applied, {} already applied; {} function file(s) applied\n",
             migrated->applied.size(), migrated->already_applied, migrated->functions.size());
  return kExitOk;
}

int db_status(const Globals& g, bool as_json) {
  auto config = effective_config(g);
  if (!config) return report(config.error());
  json out = {{"embedded", config->database.url.empty()}};
  std::string url = config->database.url;
  if (url.empty()) {
    auto cluster = detail::EmbeddedCluster::open(config->database);
    auto status = cluster ? cluster->status() : tl::unexpected(cluster.error());
    if (!status) return report(status.error());
    out["data_dir"] = valid_text(status->data_dir.string());
    out["cluster_dir"] = valid_text(status->cluster_dir.string());
    out["initialized"] = status->initialized;
    out["running"] = status->running;
    out["postmaster_pid"] = status->running ? json(status->postmaster_pid) : json(nullptr);
    if (status->running) url = status->connection_string;
  }
  json migrations = nullptr;
  json functions = nullptr;
  if (!url.empty()) {
    auto listed = detail::migration_status(url);
    if (!listed) return report(listed.error());
    migrations = json::array();
    for (const auto& m : *listed)
      migrations.push_back({{"version", m.version},
                            {"name", m.name},
                            {"state", to_string(m.state)},
                            {"earlier_text", m.earlier_text},
                            {"applied_at", m.applied_at ? json(*m.applied_at) : json(nullptr)}});
    auto defined = detail::function_status(url);
    if (!defined) return report(defined.error());
    functions = json::array();
    for (const auto& f : *defined)
      functions.push_back({{"name", f.name},
                           {"state", to_string(f.state)},
                           {"applied_at", f.applied_at ? json(*f.applied_at) : json(nullptr)}});
  }
  out["migrations"] = migrations;
  out["functions"] = functions;
  if (as_json) {
    fmt::print("{}\n", detail::json_text(out, 2));
    return kExitOk;
  }
  if (config->database.url.empty())
    fmt::print("embedded cluster {}: {}\n", out["data_dir"].get<std::string>(),
               out["running"].get<bool>()
                   ? fmt::format("running (pid {})", out["postmaster_pid"].get<int>())
                   : (out["initialized"].get<bool>() ? "stopped" : "not initialized"));
  if (migrations.is_array())
    for (const auto& m : migrations)
      fmt::print(
          "{:04}_{}  {}{}\n", m["version"].get<int>(), m["name"].get<std::string>(),
          m["state"].get<std::string>(),
          m["earlier_text"].get<bool>() ? " (recorded with the text of an earlier release)" : "");
  if (functions.is_array())
    for (const auto& f : functions)
      fmt::print("function {}  {}\n", f["name"].get<std::string>(), f["state"].get<std::string>());
  return kExitOk;
}

int db_stop(const Globals& g) {
  auto config = effective_config(g);
  if (!config) return report(config.error());
  if (!config->database.url.empty()) {
    fmt::print(stderr, "flowreg: database.url is set; `db stop` only stops the embedded cluster\n");
    return kExitFailure;
  }
  auto cluster = detail::EmbeddedCluster::open(config->database);
  auto stopped = cluster ? cluster->stop() : tl::unexpected(cluster.error());
  if (!stopped) return report(stopped.error());
  fmt::print("embedded cluster {} stopped\n", cluster->data_dir().string());
  return kExitOk;
}

struct UrlArgs {
  std::string host, sslrootcert;
};

// The URL a worker on another host configures as database.url. It holds the password: it goes to
// stdout only.
int db_url(const Globals& g, const UrlArgs& args) {
  auto config = effective_config(g);
  if (!config) return report(config.error());
  if (!config->database.url.empty()) {
    fmt::print("{}\n", config->database.url);
    return kExitOk;
  }
  auto cluster = detail::EmbeddedCluster::open(config->database);
  auto url =
      cluster ? cluster->remote_url(args.host, args.sslrootcert) : tl::unexpected(cluster.error());
  if (!url) return report(url.error());
  fmt::print("{}\n", *url);
  return kExitOk;
}

struct HealthArgs {
  bool as_json = false;
  bool check = false;
  std::string held = "1m";
};

// What holds VACUUM back, flowreg's tables and retention (app/health.hpp). Exit 0; with --check,
// kExitFailure when there is a warning.
int db_health(const Globals& g, const HealthArgs& args) {
  const auto held = parse_duration(args.held, Retention::kMaxAge);
  if (!held)
    return report(Error{Errc::invalid_argument,
                        "--warn-held " + duration_problem(args.held, Retention::kMaxAge),
                        {}});
  app::HealthThresholds limits;
  limits.held = *held;
  return with_store(g, [&](detail::RunStore& store) {
    auto health = app::db_health(store, limits);
    if (!health) return report(health.error());
    const auto& b = health->body;
    if (args.as_json) {
      fmt::print("{}\n", b.dump(2));
    } else {
      for (const auto& w : health->warnings) fmt::print("warning: {}\n", w);
      if (health->warnings.empty()) fmt::print("ok: nothing holds VACUUM back\n");
      fmt::print("\nholding back VACUUM ({} shown, the oldest first):\n", b["holders"].size());
      if (b["holders"].empty()) fmt::print("  none\n");
      for (const auto& h : b["holders"])
        fmt::print("  {:<8} {:<10} {:<16} xmin age {:>10}  held {:>8}  {}\n",
                   h["kind"].get<std::string>(), h["name"].get<std::string>(),
                   h["application"].get<std::string>(), h["xmin_age"].get<std::int64_t>(),
                   h["held_s"].is_null() ? std::string("-")
                                         : app::age_text(Millis(static_cast<std::int64_t>(
                                               h["held_s"].get<double>() * 1000))),
                   h["state"].get<std::string>());
      fmt::print("\n{:<18} {:>12} {:>10} {:>6} {:>12} {:>12} {:>12}  {}\n", "table", "live rows",
                 "dead rows", "dead", "table bytes", "index bytes", "bloat (est)", "last vacuum");
      for (const auto& t : b["tables"])
        fmt::print("{:<18} {:>12} {:>10} {:>5.0f}% {:>12} {:>12} {:>12}  {}\n",
                   t["name"].get<std::string>(), t["live_rows"].get<std::int64_t>(),
                   t["dead_rows"].get<std::int64_t>(), t["dead_share"].get<double>() * 100,
                   t["table_bytes"].get<std::int64_t>(), t["index_bytes"].get<std::int64_t>(),
                   t["bloat_bytes"].get<std::int64_t>(),
                   t["vacuumed_at"].is_null() ? std::string("never")
                                              : t["vacuumed_at"].get<std::string>());
      const auto& r = b["retention"];
      fmt::print("\nretention: {} round(s), {} run(s) and {} event(s) removed in all{}\n",
                 r["rounds"].get<std::int64_t>(), r["runs_removed"].get<std::int64_t>(),
                 r["events_removed"].get<std::int64_t>(),
                 r["running"].get<bool>() ? "; a round is running now" : "");
      if (!r["last_round"].is_null()) {
        const auto& l = r["last_round"];
        fmt::print(
            "  last round {} by worker {}: {} run(s) in {} ms{}\n", l["at"].get<std::string>(),
            l["worker"].get<std::string>(), l["runs"].get<std::int64_t>(),
            l["took_ms"].get<std::int64_t>(),
            l["error"].is_null() ? std::string() : "; failed: " + l["error"].get<std::string>());
      }
      fmt::print("  oldest run kept: {}\n",
                 r["oldest_run"].is_null()
                     ? std::string("none")
                     : fmt::format("{} ({} old)", r["oldest_run"].get<std::string>(),
                                   app::age_text(Millis(static_cast<std::int64_t>(
                                       r["oldest_run_age_s"].get<double>() * 1000)))));
    }
    return args.check && !health->warnings.empty() ? kExitFailure : kExitOk;
  });
}

struct RetainArgs {
  int batch = detail::RunStore::kRetainBatch;
};

// One round of retention now, with the configuration's worker.retention (docs/operations.md).
int db_retain(const Globals& g, const RetainArgs& args) {
  auto config = effective_config(g);
  if (!config) return report(config.error());
  const RetentionSettings settings = config->worker.retention;
  return with_store(g, [&](detail::RunStore& store) {
    auto round = store.retain(settings, "cli", args.batch);
    if (!round) return report(round.error());
    if (round->locked_out) {
      // A worker's round is doing the same work now.
      fmt::print("another session (a worker's round) is running retention now; nothing done\n");
      return kExitOk;
    }
    fmt::print("{} run(s), {} event(s) and {} idle rate-limit bucket(s) removed in {} ms\n",
               round->runs, round->events, round->buckets, round->took.count());
    return kExitOk;
  });
}

}  // namespace

void add_db_commands(CLI::App& app, const Globals& g, int& exit_code) {
  auto status_json = std::make_shared<bool>(false);
  auto* db = app.add_subcommand("db", "The database: migrations and the embedded cluster");
  db->require_subcommand(1);
  auto migrate_args = std::make_shared<MigrateArgs>();
  auto* migrate = db->add_subcommand("migrate",
                                     "Apply pending migrations and new or changed SQL function "
                                     "files (starts the embedded cluster if needed)");
  migrate
      ->add_option("--lock-timeout", migrate_args->lock_timeout_ms,
                   "Milliseconds a migration waits for a table lock before it steps back (is "
                   "rolled back and tried again), so that the sessions queued behind it go on")
      ->capture_default_str()
      ->check(CLI::Range(1LL, 3'600'000LL));
  migrate
      ->add_option("--lock-wait", migrate_args->lock_wait_s,
                   "Seconds to go on trying a migration that steps back before giving up (the "
                   "error names the sessions holding the locks)")
      ->capture_default_str()
      ->check(CLI::Range(0.0, 86'400.0));
  migrate->callback([&g, &exit_code, migrate_args] { exit_code = db_migrate(g, *migrate_args); });
  auto* status =
      db->add_subcommand("status", "The embedded cluster, the migrations and the SQL functions");
  status->add_flag("--json", *status_json, "Print JSON");
  status->callback([&g, &exit_code, status_json] { exit_code = db_status(g, *status_json); });
  auto url_args = std::make_shared<UrlArgs>();
  auto* url = db->add_subcommand(
      "url",
      "Print the URL a worker on another host connects with (database.listen; holds the password)");
  url->add_option("--host", url_args->host,
                  "Address other hosts reach this one by (default: the one listen address)");
  url->add_option("--sslrootcert", url_args->sslrootcert,
                  "Path, on the worker's host, of the CA certificate that signed the server's");
  url->callback([&g, &exit_code, url_args] { exit_code = db_url(g, *url_args); });
  auto health_args = std::make_shared<HealthArgs>();
  auto* health = db->add_subcommand(
      "health",
      "What holds VACUUM back (old snapshots, prepared transactions, replication slots, "
      "standbys), flowreg's tables (dead rows, bytes, bloat, last vacuum) and retention");
  health->add_flag("--json", health_args->as_json, "Print JSON");
  health->add_flag("--check", health_args->check, "Exit 1 when there is a warning");
  health
      ->add_option("--warn-held", health_args->held,
                   "Warn about a snapshot or prepared transaction held this long")
      ->capture_default_str();
  health->callback([&g, &exit_code, health_args] { exit_code = db_health(g, *health_args); });
  auto retain_args = std::make_shared<RetainArgs>();
  auto* retain = db->add_subcommand(
      "retain",
      "Run one round of retention now: delete the ended runs whose time is up (their flow's "
      "retention, else worker.retention), old events and idle rate-limit buckets");
  retain->add_option("--batch", retain_args->batch, "Runs deleted per transaction")
      ->capture_default_str()
      ->check(CLI::Range(1, 100'000));
  retain->callback([&g, &exit_code, retain_args] { exit_code = db_retain(g, *retain_args); });
  db->add_subcommand("stop", "Stop the embedded cluster")->callback([&g, &exit_code] {
    exit_code = db_stop(g);
  });
}

}  // namespace flowreg::cli
