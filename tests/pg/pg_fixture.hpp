#pragma once
// The cluster shared by the cases of one test process (defined in pg_fixture.cpp).

#include <filesystem>
#include <string>
#include <vector>

#include "cluster/embedded_cluster.hpp"
#include "flowreg/flow.hpp"
#include "store/run_store.hpp"

namespace flowreg::pgtest {

// /tmp/flowreg_pg_test_<pid>: this process's scratch space, removed at exit.
std::filesystem::path test_root();
// Started once per process, stopped and removed at exit.
detail::EmbeddedCluster& shared_cluster();
// Another cluster to stop at exit.
void track(const detail::EmbeddedCluster& cluster);
// A new, empty database of the shared cluster (dropped first when it exists); its connection
// string.
std::string empty_database(const std::string& name);
// A new database of the shared cluster with flowreg's migrations and functions applied (dropped
// first when it exists); its connection string. A copy of a template database migrated once per
// process (0.28 s, where creating an empty one and migrating it took 0.6 s). What migrate() does
// to an empty database is tested by the migrations suite, on empty_database().
std::string migrated_database(const std::string& name);
// The data directory of a stopped cluster, made once per process: initialized (no sync), its
// database "flowreg" created and migrated. CliScratch copies its pg/ for the clusters of the
// flowreg processes a test starts, instead of an initdb for each.
const std::filesystem::path& cluster_template();

// A step of a test flow; its handler is "test.noop" (the run store never runs handlers).
StepDef step(const std::string& slug, std::vector<std::string> deps = {},
             StepKind kind = StepKind::single);
// Stores the flow `slug` of module "test" made of `steps`, with `options`, at the version of its
// shape; its key. Throws std::runtime_error when the store refuses it.
detail::FlowKey store_flow(detail::RunStore& store, const std::string& slug,
                           std::vector<StepDef> steps, const Options& options = {});

}  // namespace flowreg::pgtest
