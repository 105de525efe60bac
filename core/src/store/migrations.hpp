#pragma once
// Schema migrations: the numbered files schemas/NNNN_name.sql, compiled into the binary (the build
// generates builtin_migrations() from them) and applied in order by migrate().
//
// Each migration runs in its own transaction together with its row in
// public.flowreg_migrations(version, name, checksum, applied_at): it is applied completely or not
// at all. The checksum is the SHA-256 of the file's text; an applied migration whose text changed
// is refused, because a released migration must never be edited (write a new one).
//
// Concurrency: migrate() holds the session advisory lock kMigrationLockKey from before it reads
// the applied versions until it is done, so processes migrating the same database at once take
// turns; the later ones find everything applied and do nothing.
//
// Thread-safety: free functions; each call opens its own connection.

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

struct AppliedMigration {
  int version = 0;
  std::string name;
};

struct MigrationReport {
  std::vector<AppliedMigration> applied;  // by this call, in order
  int already_applied = 0;                // found applied before this call
};

// Applies the pending migrations in order and reports what it did.
// Errors (Errc::database unless said): cannot connect; `migrations` not strictly ascending
// (Errc::invalid_argument); an applied migration whose checksum differs ("never edit a released
// migration"); the database has a version this list does not know (a newer flowreg migrated it);
// a pending migration older than an applied one; a migration's SQL fails (names it; it is rolled
// back, and the ones before it stay applied).
Result<MigrationReport> migrate(const std::string& conninfo,
                                std::span<const Migration> migrations = builtin_migrations());

enum class MigrationState {
  applied,            // recorded with the same checksum
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
  std::optional<std::string> applied_at;  // ISO 8601, when recorded
};

// Every migration of the list and every recorded one, by version. Reads only; takes no lock.
Result<std::vector<MigrationStatus>> migration_status(
    const std::string& conninfo, std::span<const Migration> migrations = builtin_migrations());

}  // namespace flowreg::detail
