#pragma once
// The database schema, from two kinds of SQL files compiled into the binary (the build generates
// builtin_migrations() and builtin_functions() from them), both applied by migrate():
//
// * Numbered migrations, schemas/NNNN_name.sql: tables, indexes, types and data changes, never a
//   function. They are history: applied once each, in version order, each in its own transaction
//   together with its row in public.flowreg_migrations(version, name, checksum, applied_at), so it
//   is applied completely or not at all. The checksum is the SHA-256 of the file's text (comments
//   included); an applied migration whose recorded checksum is neither its text's nor one of the
//   earlier checksums listed for it (earlier_checksum(): the texts of 0001 to 0006 released when
//   they also defined functions) is refused, because a released migration must never be edited
//   (write a new one).
// * Function files, schemas/functions/<name>.sql: the current definition of every overload of
//   the function flowreg.<name>, with CREATE OR REPLACE FUNCTION (and its ALTER FUNCTION
//   settings), and nothing else but, for a trigger function, its CREATE OR REPLACE TRIGGER. They
//   are applied after all numbered migrations, so they are written against the latest tables,
//   and a numbered migration never calls them (nor creates a trigger on them). A file is
//   applied when the database has no record of it or recorded another checksum, in a savepoint:
//   its functions are replaced in place, keeping their OIDs, so a session calling them during a
//   live upgrade goes on. When PostgreSQL refuses that (SQLSTATE 42P13: another result type,
//   other parameter names or defaults), the savepoint is rolled back, every overload of
//   flowreg.<name> is dropped and the file runs again. Then the overloads of flowreg.<name> that
//   the file did not define are dropped (a removed overload goes). All the files to apply run in
//   ONE transaction with their rows in public.flowreg_functions(name, checksum, applied_at), by
//   name. A plpgsql body is resolved when called, so files may call each other in any order; a
//   LANGUAGE sql body is checked when created, so a sql function calling another file's function
//   must sort after it. A file removed from schemas/functions/ leaves its functions in place: a
//   numbered migration drops them (as 0007 does).
//
// Concurrency: migrate() holds the session advisory lock kMigrationLockKey from before it reads
// what is applied until it is done, so processes migrating the same database at once take turns;
// the later ones find everything applied and do nothing.
//
// Table locks: a migration that alters a table waits for the transactions using it to end, and
// while it waits, PostgreSQL queues every later statement on that table behind it: one session
// left idle in a transaction would stall every worker for as long as the migration waits. So each
// transaction of migrate() waits at most MigrateOptions::lock_timeout for any lock; when that
// passes, it is rolled back whole (nothing of it stays applied), the sessions queued behind it go
// on, and migrate() tries again after a pause, until MigrateOptions::lock_wait has passed. Then
// it gives up with an error naming the migration and the sessions that hold locks on flowreg's
// tables (pid, application, state, how long their transaction has been open, their query).
//
// Thread-safety: free functions; each call opens its own connection.

#include <chrono>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "flowreg/error.hpp"

namespace flowreg::detail {

struct Migration {
  int version = 0;        // NNNN of the file name, > 0
  std::string_view name;  // the rest of the file name, without ".sql"
  std::string_view sql;   // the file's text
};

// Key of the advisory lock (pg_advisory_lock(bigint)) that migrate() holds: "flowreg" in ASCII.
inline constexpr std::int64_t kMigrationLockKey = 0x666c6f77726567;

// The migrations of schemas/, by ascending version.
std::span<const Migration> builtin_migrations() noexcept;

// Lowercase hex SHA-256 of the migration's SQL.
std::string migration_checksum(const Migration& m);

// The checksum an earlier release recorded for this migration (same version and name) when its
// text differed from today's, accepted as applied; nullopt for the others.
std::optional<std::string_view> earlier_checksum(const Migration& m);

// One file of schemas/functions/.
struct FunctionFile {
  std::string_view name;  // the file name without ".sql": the function flowreg.<name>
  std::string_view sql;   // the file's text
};

// The function files of schemas/functions/, by name.
std::span<const FunctionFile> builtin_functions() noexcept;

// Lowercase hex SHA-256 of the function file's SQL.
std::string function_checksum(const FunctionFile& f);

struct AppliedMigration {
  int version = 0;
  std::string name;
};

struct MigrationReport {
  std::vector<AppliedMigration> applied;  // by this call, in order
  int already_applied = 0;                // found applied before this call
  std::vector<std::string> functions;     // function files applied by this call, by name
};

// How migrate() waits for table locks (see "Table locks" above).
struct MigrateOptions {
  // The longest one transaction waits for a lock before it steps back (is rolled back) so that
  // the sessions queued behind it go on; also the longest they wait behind it.
  std::chrono::milliseconds lock_timeout{500};
  // How long migrate() goes on trying a transaction that steps back before it gives up. Zero:
  // one try.
  std::chrono::milliseconds lock_wait{std::chrono::minutes(2)};
};

// Applies the pending migrations in order, then the function files that are new or changed, and
// reports what it did. migrate(conninfo) applies builtin_migrations() and builtin_functions();
// the other form applies the lists given (a prefix of builtin_migrations() with no functions
// migrates a database as an earlier release did).
// Errors (Errc::database unless said): cannot connect; `migrations` not strictly ascending, or
// `functions` not strictly ascending by name (Errc::invalid_argument); an applied migration whose
// checksum differs and is not its earlier_checksum() ("never edit a released migration"); the
// database has a version this list does not know (a newer flowreg migrated it); a pending migration
// older than an applied one; a migration's SQL fails (names it; it is rolled back, and the ones
// before it stay applied); a function file fails, or defines no function flowreg.<name> (names it;
// every function file of this call is rolled back, the migrations stay applied); a transaction
// still waiting for locks when options.lock_wait has passed (names it and the sessions holding
// locks on flowreg's tables; it is rolled back, the ones before it stay applied).
Result<MigrationReport> migrate(const std::string& conninfo, const MigrateOptions& options = {});
Result<MigrationReport> migrate(const std::string& conninfo, std::span<const Migration> migrations,
                                std::span<const FunctionFile> functions = {},
                                const MigrateOptions& options = {});

enum class MigrationState {
  applied,            // recorded with the same checksum, or an earlier one (earlier_checksum)
  pending,            // not recorded yet
  checksum_mismatch,  // recorded, but the SQL changed since
  unknown,            // recorded, but not in this list (applied by a newer flowreg)
};
std::string_view to_string(MigrationState s) noexcept;

struct MigrationStatus {
  int version = 0;
  std::string name;
  std::string checksum;  // of the list's SQL, or the recorded one for `unknown`
  MigrationState state = MigrationState::pending;
  bool earlier_text = false;              // applied, recorded with earlier_checksum()
  std::optional<std::string> applied_at;  // ISO 8601, when recorded
};

// Every migration of the list and every recorded one, by version. Reads only; takes no lock.
Result<std::vector<MigrationStatus>> migration_status(
    const std::string& conninfo, std::span<const Migration> migrations = builtin_migrations());

enum class FunctionState {
  applied,  // recorded with the same checksum
  pending,  // not recorded yet: the next migrate() applies it
  changed,  // recorded with another checksum: the next migrate() applies it again
  unknown,  // recorded, but not in this list (removed since, or applied by a newer flowreg)
};
std::string_view to_string(FunctionState s) noexcept;

struct FunctionStatus {
  std::string name;
  std::string checksum;  // of the list's SQL, or the recorded one for `unknown`
  FunctionState state = FunctionState::pending;
  std::optional<std::string> applied_at;  // ISO 8601, when recorded
};

// Every function file of the list and every recorded one, by name. Reads only; takes no lock.
Result<std::vector<FunctionStatus>> function_status(
    const std::string& conninfo, std::span<const FunctionFile> functions = builtin_functions());

}  // namespace flowreg::detail
