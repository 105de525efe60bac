#pragma once
// The cluster shared by the cases of one test process (defined in pg_fixture.cpp).

#include <filesystem>
#include <string>

#include "store/embedded_cluster.hpp"

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

}  // namespace flowreg::pgtest
