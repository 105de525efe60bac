#include "store/migrations.hpp"

#include <fmt/format.h>

#include <map>
#include <pqxx/pqxx>

#include "util/sha256.hpp"

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
    " to_char(applied_at AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')"
    " FROM public.flowreg_migrations ORDER BY version";

struct Recorded {
  std::string name, checksum, applied_at;
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

std::map<int, Recorded> read_recorded(pqxx::transaction_base& tx) {
  std::map<int, Recorded> out;
  for (const auto& row : tx.exec(kSelectApplied))
    out[row[0].as<int>()] =
        Recorded{row[1].as<std::string>(), row[2].as<std::string>(), row[3].as<std::string>()};
  return out;
}

}  // namespace

std::string migration_checksum(const Migration& m) { return sha256_hex(m.sql); }

std::string_view to_string(MigrationState s) noexcept {
  switch (s) {
    case MigrationState::applied:
      return "applied";
    case MigrationState::pending:
      return "pending";
    case MigrationState::checksum_mismatch:
      return "checksum_mismatch";
    case MigrationState::unknown:
      return "unknown";
  }
  return "?";
}

Result<MigrationReport> migrate(const std::string& conninfo,
                                std::span<const Migration> migrations) {
  if (auto r = check_order(migrations); !r) return tl::unexpected(r.error());
  std::string step = "connecting";
  try {
    pqxx::connection conn(conninfo);
    // Held for the whole run (a session lock outlives the transactions below); closing the
    // connection releases it too, whatever happens.
    step = "waiting for the migration lock";
    {
      pqxx::nontransaction tx(conn);
      tx.exec_params("SELECT pg_advisory_lock($1)", kMigrationLockKey);
    }
    step = "creating public.flowreg_migrations";
    {
      pqxx::work tx(conn);
      tx.exec0(kCreateTable);
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
      if (sum != rec.checksum)
        return make_error(
            Errc::database,
            fmt::format("migration {} was applied with checksum {} but its SQL now has checksum "
                        "{}: never edit a released migration, write a new one",
                        label(version, it->second->name), rec.checksum, sum));
    }
    const int newest_applied = recorded.empty() ? 0 : recorded.rbegin()->first;

    MigrationReport report;
    report.already_applied = static_cast<int>(recorded.size());
    for (const auto& m : migrations) {
      if (recorded.count(m.version)) continue;
      if (m.version < newest_applied)
        return make_error(Errc::database,
                          fmt::format("migration {} is pending but the newer migration {} is "
                                      "already applied: migrations must be applied in order",
                                      label(m.version, m.name),
                                      label(newest_applied, recorded.at(newest_applied).name)));
      step = "applying migration " + label(m.version, m.name);
      try {
        pqxx::work tx(conn, "migration");
        tx.exec(std::string(m.sql));
        tx.exec_params(
            "INSERT INTO public.flowreg_migrations (version, name, checksum) VALUES ($1, $2, $3)",
            m.version, std::string(m.name), migration_checksum(m));
        tx.commit();
      } catch (const pqxx::sql_error& e) {
        return make_error(Errc::database, fmt::format("migration {} failed and was rolled back: {}",
                                                      label(m.version, m.name),
                                                      without_trailing_newlines(e.what())));
      }
      report.applied.push_back({m.version, std::string(m.name)});
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
    pqxx::connection conn(conninfo);
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
        s.state = it->second.checksum == s.checksum ? MigrationState::applied
                                                    : MigrationState::checksum_mismatch;
        s.applied_at = it->second.applied_at;
      }
      out[m.version] = std::move(s);
    }
    for (const auto& [version, rec] : recorded) {
      if (out.count(version)) continue;
      out[version] =
          MigrationStatus{version, rec.name, rec.checksum, MigrationState::unknown, rec.applied_at};
    }
    std::vector<MigrationStatus> list;
    for (auto& [version, s] : out) list.push_back(std::move(s));
    return list;
  } catch (const std::exception& e) {
    return make_error(Errc::database, fmt::format("reading the migration status failed: {}",
                                                  without_trailing_newlines(e.what())));
  }
}

}  // namespace flowreg::detail
