#pragma once
// What the files of RunStore and Listener share, and no other file includes (it brings in
// <pqxx/pqxx>): the reading of rows, the translation of errors, and RunStore::Impl, the connection
// every RunStore call goes through. The files: run_store.cpp (connecting, the session, the plain
// functions of run_store.hpp), run_store_starts.cpp (storing flows, starting runs),
// run_store_lifecycle.cpp (what workers record: claims, leases, results, crashes, heartbeats; and
// cancel, retry, prune), run_store_reads.cpp (runs, steps, workers, metrics' counts),
// run_store_listener.cpp. The statements they send are the files of schemas/queries/
// (store/queries.hpp).

#include <fmt/format.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <pqxx/pqxx>
#include <random>
#include <set>
#include <span>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "store/queries.hpp"
#include "store/run_store.hpp"
#include "util/strings.hpp"

namespace flowreg::detail {

TimePoint from_micros(std::int64_t us);

// Text read from the server enters here. A UTF8 database only holds valid UTF-8, but a
// database.url may name one in SQL_ASCII, which stores any byte: invalid sequences become U+FFFD.
std::string row_text(const pqxx::field& f);

Json row_json(const pqxx::field& f);

// A name a caller gave (a flow slug or version, a run id, an idempotency key) in a message: at
// most 200 bytes of it (a 100,000-byte slug would otherwise be repeated in full), valid UTF-8.
std::string shown_name(std::string_view name);

// The text of a libpq/pqxx exception as one line of a message: valid UTF-8 (it comes from the
// server), without the trailing newlines libpq ends its messages with, nor its "ERROR:  " prefix,
// and at most 2,000 bytes of it (the server's message may quote what it was given in full).
std::string server_text(std::string_view text);

// Whether the server refused a value itself: SQLSTATE class 22 or 54.
bool refused_class(const pqxx::sql_error& e);

// Runs `body`, translating what pqxx and the JSON parser throw into an Error naming `what` (made
// valid UTF-8: it may hold a caller's slug or run id as given).
template <class F>
auto guarded(std::string_view what, F&& body) -> decltype(body()) {
  const auto fail = [&](Errc code, std::string_view how, const char* text) {
    return make_error(code, fmt::format("{}: {}{}", utf8_valid(what), how, server_text(text)));
  };
  try {
    return body();
  } catch (const pqxx::sql_error& e) {
    const std::string state = e.sqlstate();
    Errc code = Errc::database;
    if (state == "P0002") code = Errc::not_found;
    if (state == "22023" || state == "22P02") code = Errc::invalid_argument;
    // Connection exceptions (08) and operator intervention (57: shutdown, crash recovery).
    if (state.rfind("08", 0) == 0 || state.rfind("57", 0) == 0) code = Errc::unavailable;
    return fail(code, "", e.what());
  } catch (const pqxx::broken_connection& e) {
    return fail(Errc::unavailable, "connection lost: ", e.what());
  } catch (const pqxx::in_doubt_error& e) {
    return fail(Errc::unavailable, "connection lost during commit: ", e.what());
  } catch (const std::exception& e) {
    return fail(Errc::database, "", e.what());
  }
}

// A RunStore's connection and what it keeps between calls; as RunStore, not safe for concurrent
// use.
struct RunStore::Impl {
  // Connects, sets the session's settings (schemas/queries/session_settings.sql) and prepares
  // the statements of schemas/queries/ (run_store.cpp).
  explicit Impl(const std::string& conninfo);

  // Runs a prepared statement in autocommit. A deadlock or serialization failure aborted the
  // statement's whole transaction (nothing of it was written): it is sent again, after a short
  // randomized pause, up to kTransientRetries times in all.
  template <class... Args>
  pqxx::result exec(Query query, const Args&... args) {
    return retried([&] { return exec_once(query, args...); });
  }

  template <class... Args>
  pqxx::result exec_once(Query query, const Args&... args) {
    return once([&] {
      pqxx::nontransaction tx(conn);  // autocommit: the function call is its own transaction
      return tx.exec_prepared(query_name(query), args...);
    });
  }

  // Runs body(tx) in one transaction (READ COMMITTED), committed when body returns, rolled back
  // when it throws; retried whole, like exec's statement, after a deadlock or serialization
  // failure.
  template <class F>
  auto transact(F&& body) -> decltype(body(std::declval<pqxx::work&>())) {
    return retried([&] {
      return once([&] {
        pqxx::work tx(conn);
        auto out = body(tx);
        tx.commit();
        return out;
      });
    });
  }

  // Calls f, again after a deadlock or serialization failure (see exec).
  template <class F>
  auto retried(F&& f) -> decltype(f()) {
    for (int attempt = 1;; ++attempt) {
      try {
        return f();
      } catch (const pqxx::sql_error& e) {
        const std::string state = e.sqlstate();
        if ((state != "40P01" && state != "40001") || attempt >= kTransientRetries || lost) throw;
        std::uniform_int_distribution<int> pause_us(200, 1000 << attempt);
        std::this_thread::sleep_for(std::chrono::microseconds(pause_us(rng)));
      }
    }
  }

  // Calls f, marking the connection lost when what it throws says so.
  template <class F>
  auto once(F&& f) -> decltype(f()) {
    try {
      return f();
    } catch (const pqxx::broken_connection&) {
      lost = true;
      throw;
    } catch (const pqxx::in_doubt_error&) {
      lost = true;
      throw;
    } catch (const pqxx::sql_error& e) {
      const std::string state = e.sqlstate();
      if (state.rfind("08", 0) == 0 || state.rfind("57", 0) == 0 || !conn.is_open()) lost = true;
      throw;
    } catch (const pqxx::failure&) {
      if (!conn.is_open()) lost = true;
      throw;
    }
  }

  // Why the server refuses `json` as jsonb (its message), or nullopt when it accepts it.
  std::optional<std::string> output_refusal(const std::string& json) {
    try {
      exec_once(Query::probe_output, json);
      return std::nullopt;
    } catch (const pqxx::sql_error& e) {
      // Only a refusal of the value itself; anything else (the connection, memory, a lock) is
      // not this output's fault and fails the call as before.
      if (lost || !refused_class(e)) throw;
      return server_text(e.what());
    }
  }

  bool record_unusable(std::span<const Failure> unusable);  // run_store_lifecycle.cpp

  pqxx::connection conn;
  bool lost = false;
  std::minstd_rand rng{std::random_device{}()};
  // Flow versions start_runs started without COPY (several steps, a map step; see
  // RunStore::start_runs), "<slug's length>:<slug><version>": their next batches skip
  // _start_copying. Should a version be stored again with one step under the same name, its
  // batches still start right, by start_runs. Bounded: emptied when full.
  std::set<std::string, std::less<>> uncopied;
  static constexpr std::size_t kUncopiedMax = 4096;
};

}  // namespace flowreg::detail
