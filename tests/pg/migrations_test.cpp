#include "store/migrations.hpp"

#include <doctest/doctest.h>
#include <fmt/format.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <filesystem>
#include <optional>
#include <pqxx/pqxx>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cluster/embedded_cluster.hpp"
#include "pg/pg_fixture.hpp"
#include "support/result_text.hpp"

using flowreg::Errc;
using flowreg::Result;
using flowreg::detail::EmbeddedCluster;
using flowreg::detail::FunctionFile;
using flowreg::detail::FunctionState;
using flowreg::detail::Migration;
using flowreg::detail::MigrationReport;
using flowreg::detail::MigrationState;
namespace fs = std::filesystem;
namespace fd = flowreg::detail;

namespace {

// Each step needs the one before it: applied out of order, they fail.
constexpr Migration kSteps[] = {
    {1, "create_items", "CREATE TABLE items (id int PRIMARY KEY, label text NOT NULL);"},
    {2, "seed_items", "INSERT INTO items VALUES (1, 'one');"},
    {3, "add_note",
     "ALTER TABLE items ADD COLUMN note text;\nUPDATE items SET note = 'after ' || label;"},
};

std::string fresh_database(const std::string& name) {
  return flowreg::pgtest::empty_database(name);
}

pqxx::result query(const std::string& conninfo, const std::string& sql) {
  pqxx::connection conn(conninfo);
  pqxx::nontransaction tx(conn);
  return tx.exec(sql);
}

std::string query_one(const std::string& conninfo, const std::string& sql) {
  return query(conninfo, sql).at(0).at(0).as<std::string>();
}

void exec(const std::string& conninfo, const std::string& sql) {
  pqxx::connection conn(conninfo);
  pqxx::work tx(conn);
  tx.exec(sql);
  tx.commit();
}

bool contains(const std::string& text, std::string_view part) {
  return text.find(part) != std::string::npos;
}

std::vector<int> versions(const MigrationReport& r) {
  std::vector<int> out;
  for (const auto& a : r.applied) out.push_back(a.version);
  return out;
}

// The schema flowreg of a database as text, one line per object: functions (signature and
// definition), relations (kind and storage options), columns, indexes, constraints, and the
// recorded migrations and function files (without their times).
std::vector<std::string> schema_of(const std::string& conninfo) {
  static const char* const kQueries[] = {
      "SELECT p.oid::regprocedure::text || E'\\n' || pg_get_functiondef(p.oid)"
      " FROM pg_proc p WHERE p.pronamespace = 'flowreg'::regnamespace ORDER BY 1",
      "SELECT c.relname || ' ' || c.relkind::text || ' ' || coalesce(array_to_string(c.reloptions, "
      "','),"
      " '') FROM pg_class c WHERE c.relnamespace = 'flowreg'::regnamespace ORDER BY 1",
      // A column's place among the table's columns, not its attnum: a database that ran a
      // migration moving columns again (0018) holds more dropped ones before them.
      "SELECT table_name || '.' || column_name || ' #' || row_number() OVER (PARTITION BY"
      " table_name ORDER BY ordinal_position) || ' ' || data_type || ' ' || is_nullable || ' ' ||"
      " coalesce(column_default, '')"
      " FROM information_schema.columns WHERE table_schema = 'flowreg' ORDER BY 1",
      "SELECT indexdef FROM pg_indexes WHERE schemaname = 'flowreg' ORDER BY 1",
      "SELECT conrelid::regclass::text || ' ' || conname || ' ' || pg_get_constraintdef(oid)"
      " FROM pg_constraint WHERE connamespace = 'flowreg'::regnamespace ORDER BY 1",
      "SELECT 'migration ' || version || ' ' || name || ' ' || checksum"
      " FROM flowreg_migrations ORDER BY version",
      "SELECT 'function file ' || name || ' ' || checksum FROM flowreg_functions ORDER BY name",
  };
  std::vector<std::string> out;
  for (const char* sql : kQueries)
    for (const auto& row : query(conninfo, sql)) out.push_back(row[0].as<std::string>());
  return out;
}

// The names of the functions of schema flowreg.
std::set<std::string> function_names(const std::string& conninfo) {
  std::set<std::string> out;
  for (const auto& row :
       query(conninfo, "SELECT proname FROM pg_proc WHERE pronamespace = 'flowreg'::regnamespace"))
    out.insert(row[0].as<std::string>());
  return out;
}

// The function files whose functions in the database are not what running the file defines:
// for each file, in a transaction rolled back, the definitions of flowreg.<name> before and after
// dropping them (with the trigger of a trigger function, which its file creates again) and running
// the file again.
std::vector<std::string> files_not_matching(const std::string& conninfo,
                                            std::span<const FunctionFile> files) {
  const std::string defs =
      "SELECT coalesce(string_agg(p.oid::regprocedure::text || E'\\n' ||"
      " pg_get_functiondef(p.oid), E'\\n' ORDER BY 1), '') FROM pg_proc p"
      " WHERE p.pronamespace = 'flowreg'::regnamespace AND p.proname = $1";
  std::vector<std::string> out;
  pqxx::connection conn(conninfo);
  for (const auto& f : files) {
    pqxx::work tx(conn);
    const std::string name(f.name);
    const auto before = tx.exec_params1(defs, name)[0].as<std::string>();
    for (const auto& row : tx.exec_params("SELECT oid::regprocedure::text FROM pg_proc"
                                          " WHERE pronamespace = 'flowreg'::regnamespace"
                                          " AND proname = $1",
                                          name))
      tx.exec0("DROP ROUTINE " + row[0].as<std::string>() + " CASCADE");
    tx.exec(std::string(f.sql));
    if (tx.exec_params1(defs, name)[0].as<std::string>() != before) out.push_back(name);
    tx.abort();
  }
  return out;
}

std::set<std::string> file_names(std::span<const FunctionFile> files) {
  std::set<std::string> out;
  for (const auto& f : files) out.insert(std::string(f.name));
  return out;
}

// A schema flowreg with a table, and two function files over it.
constexpr Migration kItems[] = {
    {1, "items",
     "CREATE SCHEMA flowreg;\n"
     "CREATE TABLE flowreg.items (id int PRIMARY KEY, label text NOT NULL);\n"
     "INSERT INTO flowreg.items VALUES (1, 'one'), (2, 'two');"},
};
constexpr FunctionFile kItemCount = {
    "item_count",
    "CREATE OR REPLACE FUNCTION flowreg.item_count() RETURNS bigint LANGUAGE sql AS\n"
    "$$ SELECT count(*) FROM flowreg.items $$;"};
constexpr FunctionFile kItemLabel = {
    "item_label",
    "CREATE OR REPLACE FUNCTION flowreg.item_label(p_id int) RETURNS text LANGUAGE sql AS\n"
    "$$ SELECT label FROM flowreg.items WHERE id = p_id $$;"};
// item_label with another signature and result.
constexpr FunctionFile kItemLabelV2 = {
    "item_label",
    "-- The label of an item, with a suffix.\n"
    "CREATE OR REPLACE FUNCTION flowreg.item_label(p_id int, p_suffix text) RETURNS text\n"
    "LANGUAGE plpgsql AS $$\n"
    "BEGIN\n"
    "  RETURN (SELECT label || p_suffix FROM flowreg.items WHERE id = p_id);\n"
    "END $$;"};

// "name xmin" of each function of schema flowreg: xmin changes when the function is created again.
std::string function_versions(const std::string& conninfo) {
  return query_one(conninfo,
                   "SELECT coalesce(string_agg(p.oid::regprocedure::text || ' ' || p.xmin::text,"
                   " ',' ORDER BY 1), '') FROM pg_proc p"
                   " WHERE p.pronamespace = 'flowreg'::regnamespace");
}

// Makes the recorded checksums of the built-in migrations those of the earlier releases, where
// one is listed. Returns how many rows it changed.
int record_earlier_checksums(const std::string& conninfo) {
  int changed = 0;
  for (const auto& m : fd::builtin_migrations()) {
    const auto earlier = fd::earlier_checksum(m);
    if (!earlier) continue;
    pqxx::connection conn(conninfo);
    pqxx::work tx(conn);
    changed += static_cast<int>(
        tx.exec_params0("UPDATE flowreg_migrations SET checksum = $1 WHERE version = $2",
                        std::string(*earlier), m.version)
            .affected_rows());
    tx.commit();
  }
  return changed;
}

// The OID of the function given by its signature (flowreg.name(types)).
std::string oid_of(const std::string& conninfo, const std::string& signature) {
  return query_one(conninfo, "SELECT '" + signature + "'::regprocedure::oid::text");
}

}  // namespace

TEST_SUITE("migrations") {
  TEST_CASE("the built-in migrations come from schemas/ in version order") {
    auto builtin = fd::builtin_migrations();
    REQUIRE(!builtin.empty());
    CHECK(builtin[0].version == 1);
    CHECK(builtin[0].name == "init");
    CHECK(contains(std::string(builtin[0].sql), "CREATE SCHEMA IF NOT EXISTS flowreg;"));
    for (std::size_t i = 1; i < builtin.size(); ++i)
      CHECK(builtin[i].version > builtin[i - 1].version);
  }

  TEST_CASE("the built-in function files come from schemas/functions/, by name") {
    auto builtin = fd::builtin_functions();
    REQUIRE(builtin.size() >= 10);
    for (std::size_t i = 0; i < builtin.size(); ++i) {
      CAPTURE(builtin[i].name);
      if (i > 0) CHECK(builtin[i].name > builtin[i - 1].name);
      CHECK(contains(std::string(builtin[i].sql),
                     "CREATE OR REPLACE FUNCTION flowreg." + std::string(builtin[i].name) + "("));
    }
    // Numbered migrations hold tables and data; every function lives in a function file.
    for (const auto& m : fd::builtin_migrations()) {
      CAPTURE(m.name);
      CHECK_FALSE(contains(std::string(m.sql), "CREATE FUNCTION"));
      CHECK_FALSE(contains(std::string(m.sql), "CREATE OR REPLACE FUNCTION"));
      CHECK_FALSE(contains(std::string(m.sql), "ALTER FUNCTION"));
    }
    CHECK(file_names(builtin).count("work") == 1);
    CHECK(file_names(builtin).count("claim_tasks") == 0);
  }

  TEST_CASE("the built-in migrations apply to a new database and are recorded") {
    const auto conninfo = fresh_database("mig_builtin");
    auto report = fd::migrate(conninfo);
    REQUIRE_MESSAGE(report, flowreg::testing::failure_text(report));
    CHECK(report->applied.size() == fd::builtin_migrations().size());
    CHECK(report->applied.at(0).version == 1);
    CHECK(report->applied.at(0).name == "init");
    CHECK(query_one(conninfo, "SELECT count(*) FROM pg_namespace WHERE nspname = 'flowreg'") ==
          "1");
    CHECK(query_one(conninfo, "SELECT checksum FROM flowreg_migrations WHERE version = 1") ==
          fd::migration_checksum(fd::builtin_migrations()[0]));
  }

  TEST_CASE("migrations apply in version order, each recorded with name, checksum and time") {
    const auto conninfo = fresh_database("mig_order");
    auto report = fd::migrate(conninfo, kSteps);
    REQUIRE_MESSAGE(report, flowreg::testing::failure_text(report));
    CHECK(versions(*report) == std::vector<int>{1, 2, 3});
    CHECK(report->already_applied == 0);
    CHECK(query_one(conninfo, "SELECT note FROM items WHERE id = 1") == "after one");
    auto rows = query(conninfo,
                      "SELECT version, name, checksum, applied_at IS NOT NULL"
                      " FROM flowreg_migrations ORDER BY applied_at, version");
    REQUIRE(rows.size() == 3);
    for (std::size_t i = 0; i < 3; ++i) {
      const auto row = rows[i];
      CHECK(row[0].as<int>() == kSteps[i].version);
      CHECK(row[1].as<std::string>() == kSteps[i].name);
      CHECK(row[2].as<std::string>() == fd::migration_checksum(kSteps[i]));
      CHECK(row[3].as<bool>());
    }
  }

  TEST_CASE("running migrate twice is a no-op the second time") {
    const auto conninfo = fresh_database("mig_twice");
    auto first = fd::migrate(conninfo, kSteps);
    REQUIRE_MESSAGE(first, flowreg::testing::failure_text(first));
    const auto stamps = query_one(conninfo,
                                  "SELECT string_agg(applied_at::text, ',') FROM "
                                  "flowreg_migrations");
    auto second = fd::migrate(conninfo, kSteps);
    REQUIRE_MESSAGE(second, flowreg::testing::failure_text(second));
    CHECK(second->applied.empty());
    CHECK(second->already_applied == 3);
    CHECK(query_one(conninfo, "SELECT count(*) FROM items") == "1");
    CHECK(query_one(conninfo,
                    "SELECT string_agg(applied_at::text, ',') FROM "
                    "flowreg_migrations") == stamps);
  }

  TEST_CASE("two migrators started at once apply each migration exactly once") {
    const auto conninfo = fresh_database("mig_race");
    // Hold the migration lock so that both migrators are surely waiting on it at the same time.
    pqxx::connection holder(conninfo);
    {
      pqxx::nontransaction tx(holder);
      tx.exec_params("SELECT pg_advisory_lock($1)", fd::kMigrationLockKey);
    }
    std::optional<Result<MigrationReport>> results[2];
    std::thread threads[2];
    for (int i = 0; i < 2; ++i)
      threads[i] = std::thread([&, i] { results[i] = fd::migrate(conninfo, kSteps); });

    int waiting = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (waiting < 2 && std::chrono::steady_clock::now() < deadline) {
      waiting = std::stoi(query_one(conninfo,
                                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                    "AND NOT granted AND database = (SELECT oid FROM pg_database "
                                    "WHERE datname = current_database())"));
      if (waiting < 2) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    CHECK(waiting == 2);
    {
      pqxx::nontransaction tx(holder);
      tx.exec_params("SELECT pg_advisory_unlock($1)", fd::kMigrationLockKey);
    }
    for (auto& t : threads) t.join();

    REQUIRE(results[0].has_value());
    REQUIRE(results[1].has_value());
    REQUIRE_MESSAGE(*results[0], flowreg::testing::failure_text(*results[0]));
    REQUIRE_MESSAGE(*results[1], flowreg::testing::failure_text(*results[1]));
    const auto& a = **results[0];
    const auto& b = **results[1];
    CHECK(a.applied.size() + b.applied.size() == 3);
    const auto& winner = a.applied.empty() ? b : a;
    const auto& loser = a.applied.empty() ? a : b;
    CHECK(versions(winner) == std::vector<int>{1, 2, 3});
    CHECK(loser.applied.empty());
    CHECK(loser.already_applied == 3);
    CHECK(query_one(conninfo, "SELECT count(*) FROM flowreg_migrations") == "3");
    CHECK(query_one(conninfo, "SELECT count(*) FROM items") == "1");  // the seed ran once
  }

  TEST_CASE("an applied migration whose checksum changed is refused") {
    const auto conninfo = fresh_database("mig_tamper");
    REQUIRE(fd::migrate(conninfo, kSteps));
    std::vector<Migration> next(std::begin(kSteps), std::end(kSteps));
    next.push_back({4, "more", "CREATE TABLE more_items (id int);"});

    SUBCASE("the SQL of a released migration was edited") {
      next[1].sql = "INSERT INTO items VALUES (1, 'uno');";
      auto report = fd::migrate(conninfo, next);
      REQUIRE_FALSE(report);
      CHECK(report.error().code == Errc::database);
      INFO(report.error().message);
      CHECK(contains(report.error().message, "migration 0002_seed_items"));
      CHECK(contains(report.error().message, "never edit a released migration"));
    }
    SUBCASE("the recorded checksum was tampered with") {
      exec(conninfo, "UPDATE flowreg_migrations SET checksum = 'tampered' WHERE version = 1");
      auto report = fd::migrate(conninfo, next);
      REQUIRE_FALSE(report);
      INFO(report.error().message);
      CHECK(contains(report.error().message, "migration 0001_create_items"));
      CHECK(contains(report.error().message, "tampered"));
      CHECK(contains(report.error().message, "never edit a released migration"));
    }
    // Refused before anything was applied.
    CHECK(query_one(conninfo, "SELECT count(*) FROM flowreg_migrations") == "3");
    CHECK(query_one(conninfo, "SELECT to_regclass('more_items') IS NULL") == "t");
  }

  TEST_CASE("a failing migration is rolled back, named, and stops the run") {
    const auto conninfo = fresh_database("mig_fail");
    const Migration broken[] = {
        kSteps[0],
        {2, "broken", "CREATE TABLE half_done (x int);\nSELECT no_such_function();"},
        {3, "after", "CREATE TABLE after_broken (x int);"},
    };
    auto report = fd::migrate(conninfo, broken);
    REQUIRE_FALSE(report);
    CHECK(report.error().code == Errc::database);
    INFO(report.error().message);
    CHECK(contains(report.error().message, "migration 0002_broken failed and was rolled back"));
    CHECK(contains(report.error().message, "no_such_function"));
    CHECK(query_one(conninfo, "SELECT string_agg(version::text, ',') FROM flowreg_migrations") ==
          "1");
    CHECK(query_one(conninfo, "SELECT to_regclass('half_done') IS NULL") == "t");
    CHECK(query_one(conninfo, "SELECT to_regclass('after_broken') IS NULL") == "t");
  }

  TEST_CASE("migrations must be listed in strictly ascending version order") {
    const Migration unordered[] = {kSteps[1], kSteps[0]};
    auto report = fd::migrate("host=/nonexistent", unordered);
    REQUIRE_FALSE(report);
    CHECK(report.error().code == Errc::invalid_argument);
    CHECK(contains(report.error().message, "0001_create_items comes after 0002_seed_items"));
  }

  TEST_CASE("a database migrated by a newer flowreg is refused") {
    const auto conninfo = fresh_database("mig_newer");
    REQUIRE(fd::migrate(conninfo, kSteps));
    exec(conninfo,
         "INSERT INTO flowreg_migrations (version, name, checksum) VALUES (9, 'future', 'x')");
    auto report = fd::migrate(conninfo, kSteps);
    REQUIRE_FALSE(report);
    CHECK(contains(report.error().message, "0009_future"));
    CHECK(contains(report.error().message, "newer flowreg"));
  }

  TEST_CASE("migration_status lists applied, pending, changed and unknown migrations") {
    const auto conninfo = fresh_database("mig_status");
    auto before = fd::migration_status(conninfo, kSteps);
    REQUIRE_MESSAGE(before, flowreg::testing::failure_text(before));
    REQUIRE(before->size() == 3);
    for (const auto& s : *before) CHECK(s.state == MigrationState::pending);

    REQUIRE(fd::migrate(conninfo, std::span(kSteps).first(2)));
    exec(conninfo,
         "UPDATE flowreg_migrations SET checksum = 'changed' WHERE version = 2;"
         "INSERT INTO flowreg_migrations (version, name, checksum) VALUES (7, 'x', 'y')");
    auto after = fd::migration_status(conninfo, kSteps);
    REQUIRE_MESSAGE(after, flowreg::testing::failure_text(after));
    REQUIRE(after->size() == 4);
    CHECK((*after)[0].state == MigrationState::applied);
    CHECK((*after)[0].applied_at.has_value());
    CHECK((*after)[1].state == MigrationState::checksum_mismatch);
    CHECK((*after)[2].state == MigrationState::pending);
    CHECK_FALSE((*after)[2].applied_at.has_value());
    CHECK((*after)[3].version == 7);
    CHECK((*after)[3].state == MigrationState::unknown);
  }

  TEST_CASE("a database migrated release by release from 0001 ends like a new one") {
    const auto builtin = fd::builtin_migrations();
    REQUIRE(builtin.size() >= 7);
    // Upgraded one migration at a time, with no function file until the last step, which brings
    // every function.
    const auto upgraded = fresh_database("mig_upgraded");
    for (std::size_t n = 1; n < builtin.size(); ++n) {
      auto step = fd::migrate(upgraded, builtin.first(n));
      REQUIRE_MESSAGE(step, flowreg::testing::failure_text(step));
      CHECK(versions(*step) == std::vector<int>{builtin[n - 1].version});
      CHECK(step->functions.empty());
    }
    auto last = fd::migrate(upgraded);
    REQUIRE_MESSAGE(last, flowreg::testing::failure_text(last));
    CHECK(versions(*last) == std::vector<int>{builtin.back().version});
    CHECK(last->functions.size() == fd::builtin_functions().size());

    const auto fresh = fresh_database("mig_fresh");
    auto all = fd::migrate(fresh);
    REQUIRE_MESSAGE(all, flowreg::testing::failure_text(all));
    CHECK(all->applied.size() == builtin.size());

    const auto upgraded_schema = schema_of(upgraded);
    const auto fresh_schema = schema_of(fresh);
    CHECK(upgraded_schema.size() > 100);
    CHECK(upgraded_schema == fresh_schema);
    for (std::size_t i = 0; i < std::min(upgraded_schema.size(), fresh_schema.size()); ++i) {
      if (upgraded_schema[i] == fresh_schema[i]) continue;
      FAIL_CHECK("first difference:\n", upgraded_schema[i], "\n  !=\n", fresh_schema[i]);
      break;
    }
    // Every function of schema flowreg is defined by the file of its name, as that file defines it
    // (no leftover of the numbered migrations' history).
    for (const auto* conninfo : {&upgraded, &fresh}) {
      CHECK(function_names(*conninfo) == file_names(fd::builtin_functions()));
      CHECK(files_not_matching(*conninfo, fd::builtin_functions()).empty());
    }
  }

  TEST_CASE("a function file is applied when new or changed, and only then") {
    const auto conninfo = fresh_database("mig_functions");
    const FunctionFile v1[] = {kItemCount, kItemLabel};
    auto first = fd::migrate(conninfo, kItems, v1);
    REQUIRE_MESSAGE(first, flowreg::testing::failure_text(first));
    CHECK(first->functions == std::vector<std::string>{"item_count", "item_label"});
    CHECK(query_one(conninfo, "SELECT flowreg.item_count()") == "2");
    CHECK(query_one(conninfo, "SELECT flowreg.item_label(1)") == "one");
    CHECK(query_one(conninfo, "SELECT checksum FROM flowreg_functions WHERE name = 'item_label'") ==
          fd::function_checksum(kItemLabel));
    const auto versions_v1 = function_versions(conninfo);
    const auto stamps_v1 = query_one(conninfo,
                                     "SELECT string_agg(applied_at::text, ',' ORDER BY name)"
                                     " FROM flowreg_functions");

    SUBCASE("unchanged files are not applied again") {
      auto again = fd::migrate(conninfo, kItems, v1);
      REQUIRE_MESSAGE(again, flowreg::testing::failure_text(again));
      CHECK(again->functions.empty());
      CHECK(again->applied.empty());
      CHECK(function_versions(conninfo) == versions_v1);
      CHECK(query_one(conninfo,
                      "SELECT string_agg(applied_at::text, ',' ORDER BY name)"
                      " FROM flowreg_functions") == stamps_v1);
    }
    SUBCASE("a changed file replaces every overload of its function; the others stay") {
      const FunctionFile v2[] = {kItemCount, kItemLabelV2};
      auto second = fd::migrate(conninfo, kItems, v2);
      REQUIRE_MESSAGE(second, flowreg::testing::failure_text(second));
      CHECK(second->functions == std::vector<std::string>{"item_label"});
      CHECK(query_one(conninfo, "SELECT flowreg.item_label(2, '!')") == "two!");
      CHECK(query_one(conninfo,
                      "SELECT string_agg(oid::regprocedure::text, ',') FROM pg_proc"
                      " WHERE proname = 'item_label'") == "flowreg.item_label(integer,text)");
      CHECK(
          query_one(conninfo, "SELECT checksum FROM flowreg_functions WHERE name = 'item_label'") ==
          fd::function_checksum(kItemLabelV2));
      // item_count was not touched.
      const auto now = function_versions(conninfo);
      const auto count_version = [](const std::string& all) {
        return all.substr(0, all.find(','));
      };
      CHECK(count_version(now) == count_version(versions_v1));
      CHECK(now != versions_v1);
      CHECK(files_not_matching(conninfo, v2).empty());

      // Back to the first text: applied again.
      auto third = fd::migrate(conninfo, kItems, v1);
      REQUIRE_MESSAGE(third, flowreg::testing::failure_text(third));
      CHECK(third->functions == std::vector<std::string>{"item_label"});
      CHECK(query_one(conninfo,
                      "SELECT string_agg(oid::regprocedure::text, ',') FROM pg_proc"
                      " WHERE proname = 'item_label'") == "flowreg.item_label(integer)");
    }
  }

  TEST_CASE("a migration recorded with its earlier release's checksum counts as applied") {
    const auto conninfo = fresh_database("mig_earlier");
    REQUIRE(fd::migrate(conninfo));
    const auto fresh_schema_rows = query_one(conninfo, "SELECT count(*) FROM flowreg_migrations");
    // 0001 to 0006 were released with other texts (they defined functions too).
    CHECK(record_earlier_checksums(conninfo) == 6);
    for (const auto& m : fd::builtin_migrations())
      CHECK(fd::earlier_checksum(m).has_value() == (m.version <= 6));

    auto status = fd::migration_status(conninfo);
    REQUIRE_MESSAGE(status, flowreg::testing::failure_text(status));
    for (const auto& s : *status) {
      CAPTURE(s.version);
      CHECK(s.state == MigrationState::applied);
      CHECK(s.earlier_text == (s.version <= 6));
    }
    auto again = fd::migrate(conninfo);
    REQUIRE_MESSAGE(again, flowreg::testing::failure_text(again));
    CHECK(again->applied.empty());
    CHECK(again->functions.empty());
    CHECK(query_one(conninfo, "SELECT count(*) FROM flowreg_migrations") == fresh_schema_rows);

    // Any other checksum is still refused, and reported as changed.
    exec(conninfo,
         "UPDATE flowreg_migrations SET checksum = "
         "'0000000000000000000000000000000000000000000000000000000000000000' WHERE version = 3");
    auto refused = fd::migrate(conninfo);
    REQUIRE_FALSE(refused);
    INFO(refused.error().message);
    CHECK(contains(refused.error().message, "migration 0003_workers"));
    CHECK(contains(refused.error().message, "never edit a released migration"));
    auto after = fd::migration_status(conninfo);
    REQUIRE_MESSAGE(after, flowreg::testing::failure_text(after));
    CHECK((*after)[2].state == MigrationState::checksum_mismatch);
    CHECK_FALSE((*after)[2].earlier_text);
  }

  TEST_CASE("a database migrated by the release before function files ends like a new one") {
    const auto fresh = fresh_database("mig_prev_fresh");
    REQUIRE(fd::migrate(fresh));

    // What the previous release left: migrations 0001 to 0006 recorded with their texts of then,
    // no public.flowreg_functions, functions of then (other bodies, work() with another result),
    // the functions nothing calls any more, and 0004's fillfactors (0010 changes two).
    const auto old = fresh_database("mig_prev_old");
    REQUIRE(fd::migrate(old));
    REQUIRE(record_earlier_checksums(old) == 6);
    exec(old,
         "DELETE FROM flowreg_migrations WHERE version >= 7;"
         "DROP TABLE public.flowreg_functions;"
         "ALTER TABLE flowreg.runs SET (fillfactor = 50);"
         "ALTER TABLE flowreg.step_states SET (fillfactor = 60);"
         "CREATE OR REPLACE FUNCTION flowreg.prune(p_older_than interval) RETURNS bigint"
         " LANGUAGE sql AS $$ SELECT 0::bigint $$;"
         "CREATE OR REPLACE FUNCTION flowreg._claim(p_worker text, p_flows jsonb, p_limit int,"
         " p_lease_ms bigint) RETURNS TABLE (id bigint, run_id uuid, flow_slug text,"
         " flow_version text, step_slug text, task_index int, attempt int, input jsonb,"
         " max_attempts int, timeout_ms bigint, lease_expires_at timestamptz)"
         " LANGUAGE sql AS $$ SELECT NULL::bigint, NULL::uuid, NULL::text, NULL::text, NULL::text,"
         " NULL::int, NULL::int, NULL::jsonb, NULL::int, NULL::bigint, NULL::timestamptz"
         " WHERE false $$;"
         "DROP FUNCTION flowreg.work(text, jsonb, jsonb, jsonb, int, bigint);"
         "CREATE FUNCTION flowreg.work(p_worker text, p_completions jsonb, p_failures jsonb,"
         " p_flows jsonb, p_limit int, p_lease_ms bigint) RETURNS TABLE (kind text, id bigint)"
         " LANGUAGE sql AS $$ SELECT 'due'::text, 0::bigint $$;"
         "CREATE FUNCTION flowreg.claim_tasks(p_worker text, p_flows jsonb, p_limit int)"
         " RETURNS SETOF bigint LANGUAGE sql AS $$ SELECT 1::bigint $$;"
         "CREATE FUNCTION flowreg.renew_leases(p_worker text, p_batch jsonb) RETURNS bigint[]"
         " LANGUAGE sql AS $$ SELECT '{}'::bigint[] $$;"
         "CREATE FUNCTION flowreg.worker_heartbeat(p_worker text, p_host text, p_pid int,"
         " p_flows jsonb, p_concurrency int, p_stopped boolean) RETURNS void"
         " LANGUAGE sql AS $$ SELECT $$;"
         "CREATE FUNCTION flowreg._steps_completed(p_runs uuid[], p_steps text[]) RETURNS void"
         " LANGUAGE sql AS $$ SELECT $$;");
    REQUIRE(function_names(old).count("claim_tasks") == 1);
    REQUIRE(
        files_not_matching(old, fd::builtin_functions()) ==
        std::vector<std::string>{"_claim", "prune", "renew_leases", "work", "worker_heartbeat"});
    const auto claim_oid = oid_of(old, "flowreg._claim(text, jsonb, int, bigint)");
    const auto prune_oid = oid_of(old, "flowreg.prune(interval)");

    auto upgrade = fd::migrate(old);
    REQUIRE_MESSAGE(upgrade, flowreg::testing::failure_text(upgrade));
    CHECK(versions(*upgrade) ==
          std::vector<int>({7,  8,  9,  10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20,
                            21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32, 33, 34}));
    CHECK(upgrade->functions.size() == fd::builtin_functions().size());

    // Alike but for the checksums recorded for 0001 to 0006, which stay those of their time.
    const auto without_checksums = [](std::vector<std::string> schema) {
      for (auto& line : schema)
        if (line.rfind("migration ", 0) == 0) line = line.substr(0, line.rfind(' '));
      return schema;
    };
    const auto old_schema = without_checksums(schema_of(old));
    const auto fresh_schema = without_checksums(schema_of(fresh));
    CHECK(old_schema == fresh_schema);
    for (std::size_t i = 0; i < std::min(old_schema.size(), fresh_schema.size()); ++i) {
      if (old_schema[i] == fresh_schema[i]) continue;
      FAIL_CHECK("first difference:\n", old_schema[i], "\n  !=\n", fresh_schema[i]);
      break;
    }
    CHECK(function_names(old) == file_names(fd::builtin_functions()));
    CHECK(files_not_matching(old, fd::builtin_functions()).empty());
    // Replaced in place: the functions whose result did not change kept their OIDs. _claim's
    // file now defines it with a fifth parameter: that one is new, the former one gone (the
    // schemas compared above list every overload).
    CHECK(oid_of(old, "flowreg.prune(interval)") == prune_oid);
    CHECK(oid_of(old, "flowreg._claim(text, jsonb, int, bigint, int)") != claim_oid);
    CHECK(query_one(old, "SELECT count(*) FROM pg_proc WHERE oid = " + claim_oid) == "0");
  }

  TEST_CASE("a function file replaces its functions in place when PostgreSQL allows it") {
    const auto conninfo = fresh_database("mig_in_place");
    const FunctionFile v1[] = {kItemCount, kItemLabel};
    REQUIRE(fd::migrate(conninfo, kItems, v1));
    const auto count_oid = oid_of(conninfo, "flowreg.item_count()");
    const auto label_oid = oid_of(conninfo, "flowreg.item_label(int)");

    SUBCASE("a changed body keeps the function's OID") {
      const FunctionFile v2[] = {
          {"item_count",
           "CREATE OR REPLACE FUNCTION flowreg.item_count() RETURNS bigint LANGUAGE sql AS\n"
           "$$ SELECT count(*) * 10 FROM flowreg.items $$;"},
          kItemLabel};
      auto report = fd::migrate(conninfo, kItems, v2);
      REQUIRE_MESSAGE(report, flowreg::testing::failure_text(report));
      CHECK(report->functions == std::vector<std::string>{"item_count"});
      CHECK(query_one(conninfo, "SELECT flowreg.item_count()") == "20");
      CHECK(oid_of(conninfo, "flowreg.item_count()") == count_oid);
    }
    SUBCASE("a changed result type is applied: dropped and created again") {
      const FunctionFile v2[] = {
          {"item_count",
           "CREATE OR REPLACE FUNCTION flowreg.item_count() RETURNS text LANGUAGE sql AS\n"
           "$$ SELECT count(*) || ' items' FROM flowreg.items $$;"},
          kItemLabel};
      auto report = fd::migrate(conninfo, kItems, v2);
      REQUIRE_MESSAGE(report, flowreg::testing::failure_text(report));
      CHECK(report->functions == std::vector<std::string>{"item_count"});
      CHECK(query_one(conninfo, "SELECT flowreg.item_count()") == "2 items");
      CHECK(oid_of(conninfo, "flowreg.item_count()") != count_oid);
      CHECK(files_not_matching(conninfo, v2).empty());
    }
    SUBCASE("a changed parameter name is applied") {
      const FunctionFile v2[] = {
          kItemCount,
          {"item_label",
           "CREATE OR REPLACE FUNCTION flowreg.item_label(p_item int) RETURNS text LANGUAGE sql\n"
           "AS $$ SELECT upper(label) FROM flowreg.items WHERE id = p_item $$;"}};
      auto report = fd::migrate(conninfo, kItems, v2);
      REQUIRE_MESSAGE(report, flowreg::testing::failure_text(report));
      CHECK(query_one(conninfo, "SELECT flowreg.item_label(p_item => 1)") == "ONE");
      CHECK(files_not_matching(conninfo, v2).empty());
    }
    SUBCASE("an overload the file no longer defines is dropped; the one it keeps keeps its OID") {
      const FunctionFile two[] = {
          kItemCount,
          {"item_label",
           "CREATE OR REPLACE FUNCTION flowreg.item_label(p_id int) RETURNS text LANGUAGE sql AS\n"
           "$$ SELECT label FROM flowreg.items WHERE id = p_id $$;\n"
           "CREATE OR REPLACE FUNCTION flowreg.item_label(p_label text) RETURNS int LANGUAGE sql\n"
           "AS $$ SELECT id FROM flowreg.items WHERE label = p_label $$;"}};
      REQUIRE(fd::migrate(conninfo, kItems, two));
      CHECK(query_one(conninfo, "SELECT flowreg.item_label('two')") == "2");
      CHECK(oid_of(conninfo, "flowreg.item_label(int)") == label_oid);

      auto back = fd::migrate(conninfo, kItems, v1);
      REQUIRE_MESSAGE(back, flowreg::testing::failure_text(back));
      CHECK(back->functions == std::vector<std::string>{"item_label"});
      CHECK(query_one(conninfo,
                      "SELECT string_agg(oid::regprocedure::text, ',') FROM pg_proc"
                      " WHERE proname = 'item_label'") == "flowreg.item_label(integer)");
      CHECK(oid_of(conninfo, "flowreg.item_label(int)") == label_oid);
    }
  }

  TEST_CASE("a function file that fails rolls back every function file of the run") {
    const auto conninfo = fresh_database("mig_function_fail");
    REQUIRE(fd::migrate(conninfo, kItems));
    SUBCASE("its SQL fails") {
      const FunctionFile files[] = {
          kItemCount,
          {"item_zzz",
           "CREATE OR REPLACE FUNCTION flowreg.item_zzz() RETURNS int LANGUAGE sql"
           " AS $$ SELECT no_such_column FROM flowreg.items $$;"}};
      auto report = fd::migrate(conninfo, kItems, files);
      REQUIRE_FALSE(report);
      CHECK(report.error().code == Errc::database);
      INFO(report.error().message);
      CHECK(contains(report.error().message, "functions/item_zzz.sql failed"));
      CHECK(contains(report.error().message, "no_such_column"));
    }
    SUBCASE("it defines no function of its name") {
      const FunctionFile files[] = {kItemCount,
                                    {"item_zzz",
                                     "CREATE FUNCTION flowreg.other() RETURNS int LANGUAGE sql"
                                     " AS $$ SELECT 1 $$;"}};
      auto report = fd::migrate(conninfo, kItems, files);
      REQUIRE_FALSE(report);
      INFO(report.error().message);
      CHECK(contains(report.error().message, "functions/item_zzz.sql defines no function"));
    }
    CHECK(function_names(conninfo).empty());
    CHECK(query_one(conninfo, "SELECT count(*) FROM flowreg_functions") == "0");
    CHECK(query_one(conninfo, "SELECT count(*) FROM flowreg_migrations") == "1");
  }

  TEST_CASE("the last pending migration commits with the function files, or not at all") {
    // A migration may change the layout the functions read: committed apart, a worker would call
    // the previous functions on the new layout in between.
    const auto conninfo = fresh_database("mig_last_with_functions");
    REQUIRE(fd::migrate(conninfo, kItems, std::span<const FunctionFile>{}));
    const Migration more[] = {
        kItems[0],
        {2, "tags", "CREATE TABLE flowreg.tags (id int PRIMARY KEY);"},
        {3, "notes", "CREATE TABLE flowreg.notes (id int PRIMARY KEY);"},
    };
    const FunctionFile broken[] = {
        kItemCount,
        {"item_zzz",
         "CREATE OR REPLACE FUNCTION flowreg.item_zzz() RETURNS int LANGUAGE sql"
         " AS $$ SELECT no_such_column FROM flowreg.notes $$;"}};
    auto report = fd::migrate(conninfo, more, broken);
    REQUIRE_FALSE(report);
    INFO(report.error().message);
    CHECK(contains(report.error().message,
                   "functions/item_zzz.sql failed and the function files "
                   "and migration 0003_notes were rolled back"));
    // 0002 committed on its own; 0003 and the function files not at all.
    CHECK(query_one(conninfo,
                    "SELECT string_agg(version::text, ',' ORDER BY version) FROM "
                    "flowreg_migrations") == "1,2");
    CHECK(query_one(conninfo, "SELECT to_regclass('flowreg.tags') IS NOT NULL") == "t");
    CHECK(query_one(conninfo, "SELECT to_regclass('flowreg.notes') IS NULL") == "t");
    CHECK(function_names(conninfo).empty());
    CHECK(query_one(conninfo, "SELECT count(*) FROM flowreg_functions") == "0");

    // Fixed, the next run applies 0003 and the function files in one transaction: they were
    // recorded at the same now(), the start of that transaction.
    const FunctionFile fixed[] = {kItemCount};
    auto again = fd::migrate(conninfo, more, fixed);
    REQUIRE_MESSAGE(again, flowreg::testing::failure_text(again));
    CHECK(versions(*again) == std::vector<int>({3}));
    CHECK(query_one(conninfo,
                    "SELECT count(DISTINCT applied_at) FROM (SELECT applied_at FROM "
                    "flowreg_migrations WHERE version = 3 UNION ALL SELECT applied_at "
                    "FROM flowreg_functions) x") == "1");
  }

  TEST_CASE(
      "a migration waiting for a table lock steps back so other sessions go on, then "
      "gives up naming the holder, or applies once the holder is gone") {
    const auto conninfo = fresh_database("mig_lock_wait");
    REQUIRE(fd::migrate(conninfo, kItems, std::span<const FunctionFile>{}));
    const Migration more[] = {kItems[0],
                              {2, "note", "ALTER TABLE flowreg.items ADD COLUMN note text;"}};
    // A session left idle in a transaction that read the table: ALTER TABLE needs it to end.
    pqxx::connection holder(conninfo);
    // (Ended by the server after 20 s should the migration never step back: the test then fails
    // rather than waits forever.)
    pqxx::nontransaction(holder).exec0(
        "SET application_name = 'flowreg-test-holder';"
        " SET idle_in_transaction_session_timeout = '20s'");
    auto holding = std::make_optional<pqxx::work>(holder);
    holding->exec("SELECT count(*) FROM flowreg.items");
    const int holder_pid = holder.backendpid();

    fd::MigrateOptions options;
    options.lock_timeout = std::chrono::milliseconds(100);
    options.lock_wait = std::chrono::milliseconds(3000);
    std::optional<Result<MigrationReport>> gave_up;
    std::thread migrator([&] { gave_up = fd::migrate(conninfo, more, {}, options); });
    // Once the migration waits for its lock, a reader of the table arrives: queued behind it, it
    // goes on when the migration steps back (without the lock timeout it would wait for the
    // holder, that is, past its statement timeout).
    bool seen_waiting = false;
    for (int i = 0; i < 3000 && !seen_waiting; ++i) {
      seen_waiting = query_one(conninfo,
                               "SELECT count(*) FROM pg_locks WHERE NOT granted"
                               " AND relation = 'flowreg.items'::regclass") != "0";
      if (!seen_waiting) std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    CHECK(seen_waiting);
    std::string reader_error;
    try {
      pqxx::connection reader(conninfo);
      pqxx::work tx(reader);
      tx.exec0("SET LOCAL statement_timeout = '10s'");
      CHECK(tx.exec1("SELECT count(*) FROM flowreg.items")[0].as<int>() == 2);
    } catch (const std::exception& e) {
      reader_error = e.what();
    }
    CHECK_MESSAGE(reader_error.empty(), reader_error);
    migrator.join();
    REQUIRE(gave_up.has_value());
    REQUIRE_FALSE(*gave_up);
    const std::string message = gave_up->error().message;
    INFO(message);
    CHECK(gave_up->error().code == Errc::database);
    CHECK(contains(message, "migration 0002_note was rolled back"));
    CHECK(contains(message, "each time waiting at most 100 ms"));
    CHECK(contains(message, fmt::format("pid {} (application 'flowreg-test-holder', idle in "
                                        "transaction",
                                        holder_pid)));
    CHECK(contains(message, "SELECT count(*) FROM flowreg.items"));
    CHECK(query_one(conninfo, "SELECT string_agg(version::text, ',') FROM flowreg_migrations") ==
          "1");
    CHECK(query_one(conninfo,
                    "SELECT count(*) FROM information_schema.columns WHERE table_schema = "
                    "'flowreg' AND table_name = 'items' AND column_name = 'note'") == "0");

    // The holder ends while the next run waits: that run applies the migration.
    options.lock_wait = std::chrono::milliseconds(60'000);
    std::optional<Result<MigrationReport>> applied;
    std::thread again([&] { applied = fd::migrate(conninfo, more, {}, options); });
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    holding->commit();
    holding.reset();
    again.join();
    REQUIRE(applied.has_value());
    REQUIRE_MESSAGE(*applied, flowreg::testing::failure_text(*applied));
    CHECK(versions(**applied) == std::vector<int>({2}));
    CHECK(query_one(conninfo,
                    "SELECT count(*) FROM information_schema.columns WHERE table_schema = "
                    "'flowreg' AND table_name = 'items' AND column_name = 'note'") == "1");
  }

  TEST_CASE("function_status lists applied, pending, changed and unknown function files") {
    const auto conninfo = fresh_database("mig_function_status");
    const FunctionFile v1[] = {kItemCount, kItemLabel};
    auto before = fd::function_status(conninfo, v1);
    REQUIRE_MESSAGE(before, flowreg::testing::failure_text(before));
    REQUIRE(before->size() == 2);
    for (const auto& s : *before) CHECK(s.state == FunctionState::pending);

    REQUIRE(fd::migrate(conninfo, kItems, std::span(v1).first(1)));
    REQUIRE(fd::migrate(conninfo, kItems, std::span(v1).first(1)));
    exec(conninfo, "INSERT INTO flowreg_functions (name, checksum) VALUES ('gone', 'x')");
    const FunctionFile now[] = {{"item_count", "-- edited\n"}, kItemLabel};
    auto after = fd::function_status(conninfo, now);
    REQUIRE_MESSAGE(after, flowreg::testing::failure_text(after));
    REQUIRE(after->size() == 3);
    CHECK((*after)[0].name == "gone");
    CHECK((*after)[0].state == FunctionState::unknown);
    CHECK((*after)[1].name == "item_count");
    CHECK((*after)[1].state == FunctionState::changed);
    CHECK((*after)[1].applied_at.has_value());
    CHECK((*after)[2].name == "item_label");
    CHECK((*after)[2].state == FunctionState::pending);
    CHECK(to_string(FunctionState::changed) == "changed");

    auto current = fd::function_status(conninfo, std::span(v1).first(1));
    REQUIRE_MESSAGE(current, flowreg::testing::failure_text(current));
    CHECK((*current)[1].state == FunctionState::applied);
  }

  TEST_CASE("function files must be listed in strictly ascending name order") {
    const FunctionFile unordered[] = {kItemLabel, kItemCount};
    auto report = fd::migrate("host=/nonexistent", kItems, unordered);
    REQUIRE_FALSE(report);
    CHECK(report.error().code == Errc::invalid_argument);
    CHECK(contains(report.error().message, "item_count comes after item_label"));
  }

  TEST_CASE("migrators started at once apply the built-in migrations and functions once") {
    const auto conninfo = fresh_database("mig_race_builtin");
    pqxx::connection holder(conninfo);
    {
      pqxx::nontransaction tx(holder);
      tx.exec_params("SELECT pg_advisory_lock($1)", fd::kMigrationLockKey);
    }
    constexpr int kMigrators = 3;
    std::optional<Result<MigrationReport>> results[kMigrators];
    std::thread threads[kMigrators];
    for (int i = 0; i < kMigrators; ++i)
      threads[i] = std::thread([&, i] { results[i] = fd::migrate(conninfo); });
    int waiting = 0;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (waiting < kMigrators && std::chrono::steady_clock::now() < deadline) {
      waiting = std::stoi(query_one(conninfo,
                                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                                    "AND NOT granted AND database = (SELECT oid FROM pg_database "
                                    "WHERE datname = current_database())"));
      if (waiting < kMigrators) std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    CHECK(waiting == kMigrators);
    {
      pqxx::nontransaction tx(holder);
      tx.exec_params("SELECT pg_advisory_unlock($1)", fd::kMigrationLockKey);
    }
    for (auto& t : threads) t.join();

    std::size_t migrations = 0, functions = 0;
    for (auto& r : results) {
      REQUIRE(r.has_value());
      REQUIRE_MESSAGE(*r, flowreg::testing::failure_text(*r));
      migrations += (*r)->applied.size();
      functions += (*r)->functions.size();
    }
    CHECK(migrations == fd::builtin_migrations().size());
    CHECK(functions == fd::builtin_functions().size());
    CHECK(function_names(conninfo) == file_names(fd::builtin_functions()));
  }

  TEST_CASE("an unreachable database is a database error naming the step") {
    auto report = fd::migrate("host=/nonexistent port=1 dbname=x connect_timeout=2", kSteps);
    REQUIRE_FALSE(report);
    CHECK(report.error().code == Errc::database);
    CHECK(contains(report.error().message, "connecting"));
  }
}
