#pragma once
// What the tests of claims through RunStore share (tests/pg/concurrency_keys_test.cpp,
// rate_limits_test.cpp): a store on a fresh migrated database, flows stored at the version of
// their shape, runs started, tasks claimed and completed, each failure reported where it happens.

#include <doctest/doctest.h>

#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <utility>
#include <vector>

#include "flowreg/flow.hpp"
#include "pg/pg_fixture.hpp"
#include "store/migrations.hpp"
#include "store/run_store.hpp"
#include "support/result_text.hpp"

namespace flowreg::pgtest {

struct ClaimEnv {
  std::string conninfo;
  detail::RunStore store;
};

// A RunStore on the empty, migrated database `db` of the shared cluster.
inline ClaimEnv claim_env(const std::string& db) {
  const auto conninfo = migrated_database(db);
  auto store = detail::RunStore::connect(conninfo);
  REQUIRE_MESSAGE(store, flowreg::testing::failure_text(store));
  return ClaimEnv{conninfo, std::move(*store)};
}

// Stores `flow` (module "test") at the version of its shape.
inline detail::FlowKey store_at_shape(detail::RunStore& store, FlowDef flow) {
  flow.module = "test";
  const std::string version = flow_version(flow);
  auto stored = store.upsert_flow(flow, version);
  REQUIRE_MESSAGE(stored, flowreg::testing::failure_text(stored));
  return detail::FlowKey{flow.slug, version};
}

inline detail::RunId start_one(detail::RunStore& store, const detail::FlowKey& key,
                               const nlohmann::json& input) {
  auto id = store.start_run(key.slug, key.version, input);
  REQUIRE_MESSAGE(id, flowreg::testing::failure_text(id));
  return *id;
}

// Up to `limit` tasks of `keys`, claimed as worker `worker`.
inline std::vector<detail::ClaimedTask> claim_some(detail::RunStore& store,
                                                   std::vector<detail::FlowKey> keys, int limit,
                                                   const std::string& worker) {
  auto claimed = store.claim(worker, keys, limit);
  REQUIRE_MESSAGE(claimed, flowreg::testing::failure_text(claimed));
  return std::move(*claimed);
}

// Each step's state in `run`, "slug=status" sorted by slug.
inline std::string step_states(detail::RunStore& store, const detail::RunId& run) {
  auto steps = store.run_steps(run);
  REQUIRE_MESSAGE(steps, flowreg::testing::failure_text(steps));
  std::map<std::string, std::string> by_slug;
  for (const auto& s : *steps) by_slug[s.slug] = s.status;
  std::string out;
  for (const auto& [slug, status] : by_slug) out += (out.empty() ? "" : " ") + slug + "=" + status;
  return out;
}

// Completes `tasks` (output 1); none is rejected.
inline void complete_all(detail::RunStore& store, const std::vector<detail::ClaimedTask>& tasks) {
  std::vector<detail::Completion> done;
  for (const auto& t : tasks) done.push_back({t.id, t.attempt, nlohmann::json(1)});
  auto rejected = store.complete(done);
  REQUIRE_MESSAGE(rejected, flowreg::testing::failure_text(rejected));
  CHECK(rejected->empty());
}

}  // namespace flowreg::pgtest
