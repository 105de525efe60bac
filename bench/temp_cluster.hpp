#pragma once
// A throwaway embedded cluster for a benchmark of the store (store_bench, event_bench): a
// temporary data directory, default durability, migrated, stopped and removed at the end.

#include <stdlib.h>

#include <cstdio>
#include <filesystem>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>

#include "cluster/embedded_cluster.hpp"
#include "store/migrations.hpp"

namespace flowreg::bench {

// Runs `body` with the connection string of a fresh migrated cluster; returns 0, or 1 after
// printing "<name>: <what failed>" (what `body` threw included).
inline int on_temp_cluster(const char* name, const std::function<void(const std::string&)>& body) {
  namespace fs = std::filesystem;
  std::string tmpl = std::string("/tmp/flowreg_") + name + "_XXXXXX";
  if (!mkdtemp(tmpl.data())) {
    std::perror("mkdtemp");
    return 1;
  }
  const fs::path dir = tmpl;
  // mkdtemp makes it 0700; when root runs the bench, the cluster's owner (postgres) must enter it.
  fs::permissions(dir, fs::perms::others_exec | fs::perms::group_exec, fs::perm_options::add);
  int rc = 0;
  std::optional<detail::EmbeddedCluster> cluster;
  try {
    detail::ClusterOptions options;
    options.data_dir = dir / "data";
    options.sync_init = false;  // the cluster is thrown away; the server itself runs durably
    auto opened = detail::EmbeddedCluster::open(options);
    if (!opened) throw std::runtime_error("open cluster: " + opened.error().format());
    cluster.emplace(std::move(*opened));
    auto started = cluster->start();
    if (!started) throw std::runtime_error("start cluster: " + started.error().format());
    if (auto migrated = detail::migrate(started->connection_string); !migrated)
      throw std::runtime_error("migrate: " + migrated.error().format());
    body(started->connection_string);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "%s: %s\n", name, e.what());
    rc = 1;
  }
  if (cluster) {
    if (auto stopped = cluster->stop(); !stopped) {
      std::fprintf(stderr, "%s: stopping the cluster: %s\n", name,
                   stopped.error().format().c_str());
      rc = 1;
    }
  }
  std::error_code ec;
  fs::remove_all(dir, ec);
  return rc;
}

}  // namespace flowreg::bench
