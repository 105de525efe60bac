#include "store/migrations.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <optional>
#include <pqxx/pqxx>
#include <string>
#include <thread>
#include <vector>

#include "pg/pg_fixture.hpp"
#include "store/embedded_cluster.hpp"

using flowreg::Errc;
using flowreg::Result;
using flowreg::detail::EmbeddedCluster;
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

  TEST_CASE("the built-in migrations apply to a new database and are recorded") {
    const auto conninfo = fresh_database("mig_builtin");
    auto report = fd::migrate(conninfo);
    REQUIRE_MESSAGE(report, report.error().format());
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
    REQUIRE_MESSAGE(report, report.error().format());
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
    REQUIRE_MESSAGE(first, first.error().format());
    const auto stamps = query_one(conninfo,
                                  "SELECT string_agg(applied_at::text, ',') FROM "
                                  "flowreg_migrations");
    auto second = fd::migrate(conninfo, kSteps);
    REQUIRE_MESSAGE(second, second.error().format());
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
    REQUIRE_MESSAGE(*results[0], results[0]->error().format());
    REQUIRE_MESSAGE(*results[1], results[1]->error().format());
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
    REQUIRE_MESSAGE(before, before.error().format());
    REQUIRE(before->size() == 3);
    for (const auto& s : *before) CHECK(s.state == MigrationState::pending);

    REQUIRE(fd::migrate(conninfo, std::span(kSteps).first(2)));
    exec(conninfo,
         "UPDATE flowreg_migrations SET checksum = 'changed' WHERE version = 2;"
         "INSERT INTO flowreg_migrations (version, name, checksum) VALUES (7, 'x', 'y')");
    auto after = fd::migration_status(conninfo, kSteps);
    REQUIRE_MESSAGE(after, after.error().format());
    REQUIRE(after->size() == 4);
    CHECK((*after)[0].state == MigrationState::applied);
    CHECK((*after)[0].applied_at.has_value());
    CHECK((*after)[1].state == MigrationState::checksum_mismatch);
    CHECK((*after)[2].state == MigrationState::pending);
    CHECK_FALSE((*after)[2].applied_at.has_value());
    CHECK((*after)[3].version == 7);
    CHECK((*after)[3].state == MigrationState::unknown);
  }

  TEST_CASE("an unreachable database is a database error naming the step") {
    auto report = fd::migrate("host=/nonexistent port=1 dbname=x connect_timeout=2", kSteps);
    REQUIRE_FALSE(report);
    CHECK(report.error().code == Errc::database);
    CHECK(contains(report.error().message, "connecting"));
  }
}
