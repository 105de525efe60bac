#pragma once
// A real `flowreg serve --worker` process on an embedded cluster of its own, for the tests of the
// HTTP API and the dashboard: a scratch directory with a plugins directory (the orders example
// plugin and the wprobe fixture) and a configuration whose YAML flow and handler errors carry
// markup, so that escaping can be checked.

#include <httplib.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>

#include "cluster/embedded_cluster.hpp"
#include "pg/cli_scratch.hpp"
#include "store/run_store.hpp"
#include "support/process.hpp"
#include "support/result_text.hpp"

namespace flowreg::servetest {

namespace fs = std::filesystem;
using nlohmann::json;

inline constexpr const char* kToken = "s3cret-token-for-tests-0123456789";
// A flow description and an order SKU with markup in them.
inline constexpr const char* kScript = "<script>alert('x')</script>";

struct ServeScene {
  pgtest::CliScratch scratch{"flowreg_serve"};
  std::optional<test::Child> server;
  int port = 0;

  // token: "" for none; watch: plugins.watch; server_extra: more keys of `server:` ("k: v, ...").
  // Waits until the server listens.
  explicit ServeScene(const std::string& token = "", bool open_reads = false, bool watch = false,
                      const std::string& server_extra = "") {
    const fs::path plugins = scratch.dir / "plugins.d";
    fs::create_directories(plugins);
    fs::permissions(plugins, fs::perms::owner_all);
    fs::copy_file(fs::path(FLOWREG_EXAMPLE_PLUGIN_DIR) / "orders.so", plugins / "orders.so");
    fs::copy_file(fs::path(FLOWREG_FIXTURE_DIR) / "wprobe_v1.so", plugins / "wprobe.so");
    for (const auto& e : fs::directory_iterator(plugins))
      fs::permissions(e.path(), fs::perms::owner_read | fs::perms::owner_write);
    std::ofstream(scratch.config) << "module: servetest\n"
                                  << "plugins: {dir: plugins.d, watch: "
                                  << (watch ? "true" : "false") << "}\n"
                                  << "database: {data_dir: data}\n"
                                  << "worker: {concurrency: 2, poll_interval: 200ms}\n"
                                  << "server: {listen: \"127.0.0.1:0\""
                                  << (token.empty() ? "" : std::string(", token: ") + token)
                                  << (open_reads ? ", open_reads: true" : "")
                                  << (server_extra.empty() ? "" : ", " + server_extra) << "}\n"
                                  << "flows:\n"
                                  << "  - slug: marked\n"
                                  << "    description: \"" << kScript << " & more\"\n"
                                  << "    input_schema: {type: object, required: [order_id]}\n"
                                  << "    steps:\n"
                                  << "      - {slug: fetch, handler: orders.fetch}\n"
                                  << "  - slug: paced\n"
                                  << "    rate_limit: {limit: 500, per: 1s, key: /tenant}\n"
                                  << "    steps:\n"
                                  << "      - {slug: fetch, handler: orders.fetch,\n"
                                  << "         concurrency: {limit: 3, key: /tenant}}\n";
    const std::string err = (scratch.dir / "serve.err").string();
    server.emplace(test::Child::spawn(
        {FLOWREG_BINARY, "--config", scratch.config.string(), "serve", "--worker"},
        (scratch.dir / "serve.out").string(), err));
    // The port from "listening on http://127.0.0.1:PORT/" (or https://).
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (port == 0 && std::chrono::steady_clock::now() < deadline) {
      std::ifstream in(err);
      std::stringstream text;
      text << in.rdbuf();
      const std::string s = text.str();
      // http, or https with server.tls_cert
      const auto on = s.find("listening on http");
      const auto at = on == std::string::npos ? on : s.find("://127.0.0.1:", on);
      if (at != std::string::npos && s.find('/', at + 13) != std::string::npos)
        port = std::stoi(s.substr(at + 13));
      else if (server->wait(std::chrono::milliseconds(100)))
        break;
    }
  }
  ~ServeScene() {
    if (server) {
      server->signal(SIGTERM);
      (void)server->wait(std::chrono::seconds(20));
    }
  }
  ServeScene(const ServeScene&) = delete;
  ServeScene& operator=(const ServeScene&) = delete;

  std::string log() const {
    std::ifstream in(scratch.dir / "serve.err");
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
  }

  httplib::Client client(const std::string& token = "") const {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(30, 0);
    if (!token.empty()) c.set_bearer_token_auth(token.c_str());
    return c;
  }

  // Polls GET /api/v1/runs/ID until its status is not "started" (at most 60 s).
  json wait_run(const std::string& id, const std::string& token = "") const {
    auto c = client(token);
    json run;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      auto r = c.Get(("/api/v1/runs/" + id).c_str());
      if (r && r->status == 200) {
        run = json::parse(r->body);
        if (run["status"] != "started") return run;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return run;
  }
};

// A store on the scene's embedded cluster.
inline detail::RunStore scene_store(const ServeScene& scene) {
  auto cluster = detail::EmbeddedCluster::open(scene.scratch.dir / "data");
  REQUIRE_MESSAGE(cluster, testing::failure_text(cluster));
  auto url = cluster->ensure_running();
  REQUIRE_MESSAGE(url, testing::failure_text(url));
  auto store = detail::RunStore::connect(*url);
  REQUIRE_MESSAGE(store, testing::failure_text(store));
  return std::move(*store);
}

}  // namespace flowreg::servetest
