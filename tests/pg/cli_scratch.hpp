#pragma once
// A scratch directory for runs of the real flowreg binary that own an embedded cluster under
// <dir>/data.

#include <stdlib.h>

#include <filesystem>
#include <stdexcept>
#include <string>
#include <system_error>
#include <vector>

#include "cluster/embedded_cluster.hpp"
#include "pg/pg_fixture.hpp"
#include "support/process.hpp"

namespace flowreg::pgtest {

// A new directory /tmp/<prefix>_XXXXXX and the path of its configuration file, which the test
// writes. With `cluster`, <dir>/data/pg is a copy of cluster_template() (a stopped cluster whose
// database is migrated): the first flowreg command starts it rather than running initdb (what a
// first start does is tested by embedded_cluster, docs/commands and examples/main_command).
// At the end the cluster under <dir>/data, if one was made, is stopped and the directory
// removed. Neither copied nor moved: the destructor owns the directory.
struct CliScratch {
  std::filesystem::path dir, config;

  explicit CliScratch(const std::string& prefix, bool cluster = true) {
    std::string tmpl = "/tmp/" + prefix + "_XXXXXX";
    dir = mkdtemp(tmpl.data());
    // The cluster runs as `postgres` when the tests run as root: it must reach the data dir.
    std::filesystem::permissions(dir, std::filesystem::perms::owner_all |
                                          std::filesystem::perms::group_exec |
                                          std::filesystem::perms::others_exec);
    config = dir / "flowreg.yaml";
    if (cluster) {
      std::filesystem::create_directory(dir / "data");
      // cp -a keeps the owner (postgres, under root) and the modes initdb gave.
      const auto copied = test::run_process(
          {"/bin/cp", "-a", (cluster_template() / "pg").string(), (dir / "data" / "pg").string()});
      if (copied.exit_code != 0)
        throw std::runtime_error("cp -a of the template cluster failed (" +
                                 std::to_string(copied.exit_code) + "): " + copied.err);
    }
  }
  ~CliScratch() {
    if (auto cluster = detail::EmbeddedCluster::open(dir / "data")) (void)cluster->stop();
    std::error_code ec;
    std::filesystem::remove_all(dir, ec);
  }
  CliScratch(const CliScratch&) = delete;
  CliScratch& operator=(const CliScratch&) = delete;

  // `flowreg --config <config> args...`, run to its end.
  test::ProcessResult flowreg(std::vector<std::string> args) const {
    args.insert(args.begin(), {FLOWREG_BINARY, "--config", config.string()});
    return test::run_process(args);
  }
};

}  // namespace flowreg::pgtest
