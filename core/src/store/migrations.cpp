#include "store/migrations.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <map>
#include <pqxx/pqxx>
#include <thread>

#include "store/conninfo.hpp"
#include "util/enum_names.hpp"
#include "util/sha256.hpp"
#include "util/strings.hpp"

namespace flowreg::detail {

namespace {

constexpr const char* kCreateTable =
    "CREATE TABLE IF NOT EXISTS public.flowreg_migrations ("
    " version int PRIMARY KEY,"
    " name text NOT NULL,"
    " checksum text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now())";

constexpr const char* kSelectApplied =
    "SELECT version, name, checksum,"
    " to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS applied_at"
    " FROM public.flowreg_migrations ORDER BY version";

constexpr const char* kCreateFunctionsTable =
    "CREATE TABLE IF NOT EXISTS public.flowreg_functions ("
    " name text PRIMARY KEY,"
    " checksum text NOT NULL,"
    " applied_at timestamptz NOT NULL DEFAULT now())";

constexpr const char* kSelectFunctions =
    "SELECT name, checksum,"
    " to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"') AS applied_at"
    " FROM public.flowreg_functions ORDER BY name";

// Every overload of flowreg.<$1>, as text DROP ROUTINE accepts.
constexpr const char* kSelectOverloads =
    "SELECT p.oid::regprocedure::text AS signature FROM pg_catalog.pg_proc p"
    " JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
    " WHERE n.nspname = 'flowreg' AND p.proname = $1 ORDER BY 1";

// The overloads of flowreg.<$1> that the transaction which recorded the function file <$1> did
// not write: a CREATE [OR REPLACE] FUNCTION writes the function's row of pg_proc, so that row's
// xmin is the id of the (sub)transaction that ran it, the same as the recorded row's.
constexpr const char* kSelectStaleOverloads =
    "SELECT p.oid::regprocedure::text AS signature FROM pg_catalog.pg_proc p"
    " JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace"
    " WHERE n.nspname = 'flowreg' AND p.proname = $1"
    " AND p.xmin::text <> (SELECT f.xmin::text FROM public.flowreg_functions f WHERE f.name = $1)"
    " ORDER BY 1";

constexpr const char* kRecordFunction =
    "INSERT INTO public.flowreg_functions (name, checksum) VALUES ($1, $2)"
    " ON CONFLICT (name) DO UPDATE SET checksum = excluded.checksum, applied_at = now()";

// SQLSTATE invalid_function_definition: CREATE OR REPLACE FUNCTION refuses to change a function's
// result type or its parameters' names or defaults in place.
constexpr std::string_view kInvalidFunctionDefinition = "42P13";

// SQLSTATE lock_not_available: a statement waited longer than lock_timeout for a lock.
constexpr std::string_view kLockNotAvailable = "55P03";

// The sessions other than this one that hold a lock on a table, index or sequence of schema
// flowreg in this database, oldest transaction first: who a migration waited for.
constexpr const char* kSelectLockHolders =
    "SELECT a.pid, coalesce(a.application_name, '') AS application, coalesce(a.state, '') AS state,"
    " coalesce(floor(extract(epoch FROM now() - a.xact_start)), 0)::bigint AS transaction_s,"
    " coalesce(a.query, '') AS query"
    " FROM pg_stat_activity a"
    " WHERE a.pid <> pg_backend_pid() AND a.pid IN ("
    "  SELECT l.pid FROM pg_locks l"
    "  JOIN pg_class c ON c.oid = l.relation"
    "  JOIN pg_namespace n ON n.oid = c.relnamespace"
    "  WHERE l.granted AND n.nspname = 'flowreg'"
    "   AND l.database = (SELECT d.oid FROM pg_database d WHERE d.datname = current_database()))"
    " ORDER BY a.xact_start NULLS LAST, a.pid LIMIT $1";
constexpr int kLockHoldersShown = 5;

// clang-format off
// The checksums that releases before the functions moved to schemas/functions/ recorded for
// migrations 0001 to 0006, whose texts then also defined the functions of those versions. A
// database they migrated has these migrations' tables and data, as the current texts define them:
// such a row counts as applied (and the function files replace the old functions).
struct EarlierChecksum {
  int version;
  std::string_view name;
  std::string_view checksum;
};
constexpr EarlierChecksum kEarlierChecksums[] = {
    {1, "init",            "7fe32af932f711e869bd95ce51600b2fbcbf8046f39c2d7384e5ab38ab661780"},
    {2, "runs",            "ab97af63c0727c61886e6d872dcb178b7357684a29d1c46ca4de7578176879fa"},
    {3, "workers",         "9b25ef0baf93f50c913c496a22636e54ee8654e6a8351179581aea2700d3a899"},
    {4, "lean_completion", "70e0b84e7a2283d244a36dbabf3b9515128bf5412c544a652ce22b266caa860a"},
    {5, "worker_health",   "2ae14a4d491c44dab718cfd4ae47c78437cb728346717ddca041d8d2784d191f"},
    {6, "flow_shape",      "86d5314de14dea10be7ba9410e6b3a2e1ff4f793ab48f2644991404618c41528"},
};
// clang-format on

struct Recorded {
  std::string name, checksum, applied_at;
};

struct RecordedFunction {
  std::string checksum, applied_at;
};

std::string label(int version, std::string_view name) {
  return fmt::format("{:04}_{}", version, name);
}

std::string without_trailing_newlines(std::string_view text) {
  while (!text.empty() && text.back() == '\n') text.remove_suffix(1);
  return std::string(text);
}

Result<void> check_order(std::span<const Migration> migrations) {
  for (std::size_t i = 0; i < migrations.size(); ++i) {
    if (migrations[i].version <= 0)
      return make_error(Errc::invalid_argument,
                        fmt::format("migration {}: the version must be positive",
                                    label(migrations[i].version, migrations[i].name)));
    if (i > 0 && migrations[i].version <= migrations[i - 1].version)
      return make_error(
          Errc::invalid_argument,
          fmt::format("migrations must be in strictly ascending version order: {} comes after {}",
                      label(migrations[i].version, migrations[i].name),
                      label(migrations[i - 1].version, migrations[i - 1].name)));
  }
  return {};
}

Result<void> check_names(std::span<const FunctionFile> functions) {
  for (std::size_t i = 0; i < functions.size(); ++i) {
    if (functions[i].name.empty())
      return make_error(Errc::invalid_argument, "a function file has an empty name");
    if (i > 0 && functions[i].name <= functions[i - 1].name)
      return make_error(
          Errc::invalid_argument,
          fmt::format("function files must be in strictly ascending name order: {} comes after {}",
                      functions[i].name, functions[i - 1].name));
  }
  return {};
}

// Text of a recorded row: valid UTF-8 even from a SQL_ASCII database, which stores any byte.
std::string recorded_text(const pqxx::field& f) {
  return utf8_valid(std::string_view(f.c_str(), f.size()));
}

std::map<int, Recorded> read_recorded(pqxx::transaction_base& tx) {
  std::map<int, Recorded> out;
  for (const auto& row : tx.exec(kSelectApplied))
    out[row["version"].as<int>()] =
        Recorded{recorded_text(row["name"]), recorded_text(row["checksum"]),
                 row["applied_at"].as<std::string>()};
  return out;
}

std::map<std::string, RecordedFunction> read_recorded_functions(pqxx::transaction_base& tx) {
  std::map<std::string, RecordedFunction> out;
  for (const auto& row : tx.exec(kSelectFunctions))
    out[recorded_text(row["name"])] =
        RecordedFunction{recorded_text(row["checksum"]), row["applied_at"].as<std::string>()};
  return out;
}

// Runs the function file in a savepoint and records it there. Returns false, with the savepoint
// rolled back, when `may_refuse` and PostgreSQL refused to replace a function in place; throws
// pqxx::sql_error on any other failure.
bool run_function_file(pqxx::work& tx, const FunctionFile& f, bool may_refuse) {
  pqxx::subtransaction sub(tx, "function_file");
  try {
    sub.exec(std::string(f.sql));
  } catch (const pqxx::sql_error& e) {
    if (!may_refuse || e.sqlstate() != kInvalidFunctionDefinition) throw;
    sub.abort();
    return false;
  }
  sub.exec_params0(kRecordFunction, std::string(f.name), function_checksum(f));
  sub.commit();
  return true;
}

// Applies one function file: replaces its functions in place (they keep their OIDs, so sessions
// calling them meanwhile go on), or, when PostgreSQL refuses that (another result type, other
// parameter names), drops every overload of flowreg.<name> and runs the file again; then drops
// the overloads the file did not define, and records it. Throws pqxx::sql_error when the file
// fails. REQUIRES: inside the transaction of apply_functions.
Result<void> apply_function(pqxx::work& tx, const FunctionFile& f, std::string_view rolled_back) {
  const std::string name(f.name);
  if (!run_function_file(tx, f, /*may_refuse=*/true)) {
    for (const auto& row : tx.exec_params(kSelectOverloads, name))
      tx.exec0("DROP ROUTINE " + row["signature"].as<std::string>());
    run_function_file(tx, f, /*may_refuse=*/false);
  }
  for (const auto& row : tx.exec_params(kSelectStaleOverloads, name))
    tx.exec0("DROP ROUTINE " + row["signature"].as<std::string>());
  if (tx.exec_params(kSelectOverloads, name).empty())
    return make_error(Errc::database,
                      fmt::format("function file functions/{}.sql defines no function flowreg.{}: "
                                  "a function file is named after its function; {} rolled back",
                                  name, name, rolled_back));
  return {};
}

// Applies in tx the function files the database has no record of or recorded with another
// checksum (apply_function). Returns the names applied; on an error, tx must be rolled back.
// REQUIRES: the migration lock is held.
Result<std::vector<std::string>> apply_functions(pqxx::work& tx,
                                                 std::span<const FunctionFile> functions,
                                                 std::string_view rolled_back) {
  const auto recorded = read_recorded_functions(tx);
  std::vector<std::string> applied;
  for (const auto& f : functions) {
    auto it = recorded.find(std::string(f.name));
    if (it != recorded.end() && it->second.checksum == function_checksum(f)) continue;
    try {
      if (auto r = apply_function(tx, f, rolled_back); !r) return tl::unexpected(r.error());
    } catch (const pqxx::sql_error& e) {
      if (e.sqlstate() == kLockNotAvailable) throw;  // the whole transaction steps back
      return make_error(Errc::database,
                        fmt::format("function file functions/{}.sql failed and {} rolled back: {}",
                                    f.name, rolled_back, without_trailing_newlines(e.what())));
    }
    applied.emplace_back(f.name);
  }
  return applied;
}

// Sets the transaction's lock_timeout (see MigrateOptions).
void set_lock_timeout(pqxx::work& tx, const MigrateOptions& options) {
  // At least 1 ms: 0 would mean no timeout at all.
  const auto ms = std::max<std::int64_t>(1, options.lock_timeout.count());
  tx.exec0(fmt::format("SET LOCAL lock_timeout = {}", ms));
}

// The sessions holding locks on flowreg's tables, for a message: one line each, their texts
// bounded and made valid UTF-8 (they come from other sessions).
std::string lock_holders(pqxx::connection& conn) {
  std::string out;
  try {
    pqxx::read_transaction tx(conn);
    for (const auto& r : tx.exec_params(kSelectLockHolders, kLockHoldersShown))
      out += fmt::format("\n  pid {} (application '{}', {}, its transaction open for {} s): {}",
                         r["pid"].as<int>(), bounded_text(r["application"].c_str(), 64),
                         bounded_text(r["state"].c_str(), 40), r["transaction_s"].as<long long>(),
                         bounded_text(r["query"].c_str(), 200));
  } catch (const std::exception& e) {
    return fmt::format(" (they could not be read: {})",
                       bounded_text(without_trailing_newlines(e.what()), 200));
  }
  return out.empty() ? " none now (they have ended: migrate again)" : ":" + out;
}

// Runs `attempt` (one transaction, which calls set_lock_timeout first) until it ends other than
// by waiting too long for a lock (SQLSTATE 55P03; its transaction is then rolled back whole): after
// a pause, longer each time up to 5 s, so that the sessions it held up go on, it tries again
// until options.lock_wait has passed since the first try. Then an Errc::database error names
// `what` and the sessions holding locks on flowreg's tables. Any other failure propagates.
template <class Attempt>
auto retrying_lock_waits(pqxx::connection& conn, const MigrateOptions& options,
                         std::string_view what, Attempt&& attempt) -> decltype(attempt()) {
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  auto pause = std::max(options.lock_timeout, std::chrono::milliseconds(100));
  for (int tries = 1;; ++tries) {
    try {
      return attempt();
    } catch (const pqxx::sql_error& e) {
      if (e.sqlstate() != kLockNotAvailable) throw;
      const auto waited = clock::now() - start;
      if (waited >= options.lock_wait) {
        const auto seconds = std::chrono::duration<double>(waited).count();
        return make_error(
            Errc::database,
            fmt::format("{} rolled back after {:.1f} s of waiting for locks that other "
                        "sessions hold on flowreg's tables: it tried {} {}, each time waiting at "
                        "most {} ms before stepping back so that the sessions queued behind it "
                        "could go on. End those sessions (SELECT pg_terminate_backend(pid)) or let "
                        "them finish, then migrate again. Sessions holding locks on flowreg's "
                        "tables now{}",
                        what, seconds, tries, tries == 1 ? "time" : "times",
                        options.lock_timeout.count(), lock_holders(conn)));
      }
      std::this_thread::sleep_for(std::min<clock::duration>(pause, options.lock_wait - waited));
      pause = std::min(pause * 2, std::chrono::milliseconds(5000));
    }
  }
}

}  // namespace

std::string migration_checksum(const Migration& m) { return sha256_hex(m.sql); }

std::optional<std::string_view> earlier_checksum(const Migration& m) {
  for (const auto& e : kEarlierChecksums)
    if (e.version == m.version && e.name == m.name) return e.checksum;
  return std::nullopt;
}

std::string function_checksum(const FunctionFile& f) { return sha256_hex(f.sql); }

constexpr EnumName<MigrationState> kMigrationStateNames[] = {
    {MigrationState::applied, "applied"},
    {MigrationState::pending, "pending"},
    {MigrationState::checksum_mismatch, "checksum_mismatch"},
    {MigrationState::unknown, "unknown"}};
constexpr EnumName<FunctionState> kFunctionStateNames[] = {{FunctionState::applied, "applied"},
                                                           {FunctionState::pending, "pending"},
                                                           {FunctionState::changed, "changed"},
                                                           {FunctionState::unknown, "unknown"}};

std::string_view to_string(MigrationState s) noexcept {
  return name_in(kMigrationStateNames, s, "?");
}

std::string_view to_string(FunctionState s) noexcept {
  return name_in(kFunctionStateNames, s, "?");
}

Result<MigrationReport> migrate(const std::string& conninfo, const MigrateOptions& options) {
  return migrate(conninfo, builtin_migrations(), builtin_functions(), options);
}

Result<MigrationReport> migrate(const std::string& conninfo, std::span<const Migration> migrations,
                                std::span<const FunctionFile> functions,
                                const MigrateOptions& options) {
  if (auto r = check_order(migrations); !r) return tl::unexpected(r.error());
  if (auto r = check_names(functions); !r) return tl::unexpected(r.error());
  std::string step = "connecting";
  try {
    pqxx::connection conn(with_connection_defaults(conninfo));
    // Held for the whole run (a session lock outlives the transactions below); closing the
    // connection releases it too, whatever happens.
    step = "waiting for the migration lock";
    {
      pqxx::nontransaction tx(conn);
      tx.exec_params("SELECT pg_advisory_lock($1)", kMigrationLockKey);
    }
    step = "creating public.flowreg_migrations and public.flowreg_functions";
    {
      pqxx::work tx(conn);
      tx.exec0(kCreateTable);
      tx.exec0(kCreateFunctionsTable);
      tx.commit();
    }
    step = "reading public.flowreg_migrations";
    std::map<int, Recorded> recorded;
    {
      pqxx::read_transaction tx(conn);
      recorded = read_recorded(tx);
    }

    // Refuse before applying anything when history and this binary disagree.
    std::map<int, const Migration*> known;
    for (const auto& m : migrations) known[m.version] = &m;
    for (const auto& [version, rec] : recorded) {
      auto it = known.find(version);
      if (it == known.end())
        return make_error(Errc::database,
                          fmt::format("the database has migration {} (applied {}), which this "
                                      "flowreg does not know: it was migrated by a newer flowreg",
                                      label(version, rec.name), rec.applied_at));
      const std::string sum = migration_checksum(*it->second);
      if (sum != rec.checksum && earlier_checksum(*it->second) != rec.checksum)
        return make_error(
            Errc::database,
            fmt::format("migration {} was applied with checksum {} but its SQL now has checksum "
                        "{}: never edit a released migration, write a new one",
                        label(version, it->second->name), rec.checksum, sum));
    }
    const int newest_applied = recorded.empty() ? 0 : recorded.rbegin()->first;

    MigrationReport report;
    report.already_applied = static_cast<int>(recorded.size());
    std::vector<const Migration*> pending;
    for (const auto& m : migrations) {
      if (recorded.count(m.version)) continue;
      if (m.version < newest_applied)
        return make_error(Errc::database,
                          fmt::format("migration {} is pending but the newer migration {} is "
                                      "already applied: migrations must be applied in order",
                                      label(m.version, m.name),
                                      label(newest_applied, recorded.at(newest_applied).name)));
      pending.push_back(&m);
    }
    // Each migration commits on its own, but the last one commits with the function files: a
    // migration may change the layout the functions expect (0012 moves live runs), and between
    // two commits a worker still running would call the previous functions on the new layout.
    // Sessions calling a function while it is replaced get the new text at their next call.
    const auto function_files = [&](pqxx::work& tx, std::string_view rolled_back) -> Result<void> {
      step = "applying the function files";
      auto applied = apply_functions(tx, functions, rolled_back);
      if (!applied) return tl::unexpected(applied.error());
      report.functions = std::move(*applied);
      return {};
    };
    for (std::size_t i = 0; i < pending.size(); ++i) {
      const Migration& m = *pending[i];
      const bool last = i + 1 == pending.size();
      step = "applying migration " + label(m.version, m.name);
      // What a function file's failure rolls back, and what a wait for locks does.
      const std::string rolled_back =
          fmt::format("the function files and migration {} were", label(m.version, m.name));
      const std::string stepped_back =
          last && !functions.empty()
              ? fmt::format("migration {} and the function files were", label(m.version, m.name))
              : fmt::format("migration {} was", label(m.version, m.name));
      try {
        auto done = retrying_lock_waits(conn, options, stepped_back, [&]() -> Result<void> {
          pqxx::work tx(conn, "migration");
          set_lock_timeout(tx, options);
          tx.exec(std::string(m.sql));
          tx.exec_params(
              "INSERT INTO public.flowreg_migrations (version, name, checksum) VALUES ($1, $2, $3)",
              m.version, std::string(m.name), migration_checksum(m));
          if (last) {
            if (auto r = function_files(tx, rolled_back); !r) return r;
          }
          tx.commit();
          return {};
        });
        if (!done) return tl::unexpected(done.error());
      } catch (const pqxx::sql_error& e) {
        return make_error(Errc::database, fmt::format("migration {} failed and was rolled back: {}",
                                                      label(m.version, m.name),
                                                      without_trailing_newlines(e.what())));
      }
      report.applied.push_back({m.version, std::string(m.name)});
    }
    if (pending.empty()) {
      auto done =
          retrying_lock_waits(conn, options, "the function files were", [&]() -> Result<void> {
            pqxx::work tx(conn, "functions");
            set_lock_timeout(tx, options);
            if (auto r = function_files(tx, "the function files were"); !r) return r;
            if (report.functions.empty())
              tx.abort();  // nothing was due: read only
            else
              tx.commit();
            return {};
          });
      if (!done) return tl::unexpected(done.error());
    }
    step = "releasing the migration lock";
    {
      pqxx::nontransaction tx(conn);
      tx.exec_params("SELECT pg_advisory_unlock($1)", kMigrationLockKey);
    }
    return report;
  } catch (const std::exception& e) {
    return make_error(Errc::database, fmt::format("migrating the database failed while {}: {}",
                                                  step, without_trailing_newlines(e.what())));
  }
}

Result<std::vector<MigrationStatus>> migration_status(const std::string& conninfo,
                                                      std::span<const Migration> migrations) {
  if (auto r = check_order(migrations); !r) return tl::unexpected(r.error());
  try {
    pqxx::connection conn(with_connection_defaults(conninfo));
    pqxx::read_transaction tx(conn);
    std::map<int, Recorded> recorded;
    if (!tx.exec1("SELECT to_regclass('public.flowreg_migrations') IS NULL")[0].as<bool>())
      recorded = read_recorded(tx);
    std::map<int, MigrationStatus> out;
    for (const auto& m : migrations) {
      MigrationStatus s;
      s.version = m.version;
      s.name = std::string(m.name);
      s.checksum = migration_checksum(m);
      if (auto it = recorded.find(m.version); it != recorded.end()) {
        s.earlier_text =
            it->second.checksum != s.checksum && earlier_checksum(m) == it->second.checksum;
        s.state = it->second.checksum == s.checksum || s.earlier_text
                      ? MigrationState::applied
                      : MigrationState::checksum_mismatch;
        s.applied_at = it->second.applied_at;
      }
      out[m.version] = std::move(s);
    }
    for (const auto& [version, rec] : recorded) {
      if (out.count(version)) continue;
      out[version] = MigrationStatus{version, rec.name,      rec.checksum, MigrationState::unknown,
                                     false,   rec.applied_at};
    }
    std::vector<MigrationStatus> list;
    for (auto& [version, s] : out) list.push_back(std::move(s));
    return list;
  } catch (const std::exception& e) {
    return make_error(Errc::database, fmt::format("reading the migration status failed: {}",
                                                  without_trailing_newlines(e.what())));
  }
}

Result<std::vector<FunctionStatus>> function_status(const std::string& conninfo,
                                                    std::span<const FunctionFile> functions) {
  if (auto r = check_names(functions); !r) return tl::unexpected(r.error());
  try {
    pqxx::connection conn(with_connection_defaults(conninfo));
    pqxx::read_transaction tx(conn);
    std::map<std::string, RecordedFunction> recorded;
    if (!tx.exec1("SELECT to_regclass('public.flowreg_functions') IS NULL")[0].as<bool>())
      recorded = read_recorded_functions(tx);
    std::map<std::string, FunctionStatus> out;
    for (const auto& f : functions) {
      FunctionStatus s;
      s.name = std::string(f.name);
      s.checksum = function_checksum(f);
      if (auto it = recorded.find(s.name); it != recorded.end()) {
        s.state =
            it->second.checksum == s.checksum ? FunctionState::applied : FunctionState::changed;
        s.applied_at = it->second.applied_at;
      }
      out[s.name] = std::move(s);
    }
    for (const auto& [name, rec] : recorded) {
      if (out.count(name)) continue;
      out[name] = FunctionStatus{name, rec.checksum, FunctionState::unknown, rec.applied_at};
    }
    std::vector<FunctionStatus> list;
    for (auto& [name, s] : out) list.push_back(std::move(s));
    return list;
  } catch (const std::exception& e) {
    return make_error(Errc::database, fmt::format("reading the function status failed: {}",
                                                  without_trailing_newlines(e.what())));
  }
}

}  // namespace flowreg::detail
