// `flowreg serve --worker` as one process: one flow catalogue shared by the API and the worker
// (the plugins directory loaded and watched once), and the embedded cluster started again when
// its postmaster dies, as `flowreg worker` does.

#include <doctest/doctest.h>
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <string>
#include <thread>

#include "cluster/embedded_cluster.hpp"
#include "serve/serve_scene.hpp"
#include "support/result_text.hpp"

namespace flowreg::servetest {

namespace {

using namespace std::chrono_literals;

template <typename F>
bool eventually(F&& ready, std::chrono::milliseconds timeout) {
  const auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    if (ready()) return true;
    std::this_thread::sleep_for(100ms);
  }
  return ready();
}

// The inotify instances a process holds: one per directory watcher.
int inotify_instances(pid_t pid) {
  int count = 0;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator("/proc/" + std::to_string(pid) + "/fd", ec)) {
    std::error_code link_ec;
    if (fs::read_symlink(e.path(), link_ec).string() == "anon_inode:inotify") ++count;
  }
  return count;
}

}  // namespace

TEST_SUITE("serve_process") {
  TEST_CASE(
      "serve --worker watches the plugins directory once: the API and the worker share one "
      "catalogue") {
    // Before the app/ layer the worker loaded a second catalogue and watched the directory again:
    // two inotify instances, and two loaders writing the same owners file.
    ServeScene scene("", false, /*watch=*/true);
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    REQUIRE(eventually([&] { return scene.log().find("worker") != std::string::npos; }, 30s));
    CHECK(inotify_instances(scene.server->pid()) == 1);
    // The worker serves the flows the API lists: a run started through the API completes.
    auto c = scene.client();
    auto r =
        c.Post("/api/v1/flows/wprobe_chain/runs",
               json({{"log", (scene.scratch.dir / "w.log").string()}}).dump(), "application/json");
    REQUIRE(r);
    REQUIRE_MESSAGE(r->status == 201, r->body);
    CHECK_MESSAGE(scene.wait_run(json::parse(r->body)["id"])["status"] == "completed", scene.log());
  }

  TEST_CASE(
      "serve --worker starts the embedded cluster again when its postmaster is killed, and runs "
      "started afterwards complete") {
    ServeScene scene;
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto cluster = detail::EmbeddedCluster::open(scene.scratch.dir / "data");
    REQUIRE_MESSAGE(cluster, testing::failure_text(cluster));
    auto status = cluster->status();
    REQUIRE_MESSAGE(status, testing::failure_text(status));
    REQUIRE(status->running);
    const pid_t postmaster = status->postmaster_pid;
    REQUIRE(::kill(postmaster, SIGKILL) == 0);
    // Nobody here starts it: the in-process worker does.
    REQUIRE_MESSAGE(eventually(
                        [&] {
                          auto now = cluster->status();
                          return now && now->running && now->postmaster_pid != postmaster;
                        },
                        120s),
                    scene.log());
    auto c = scene.client();
    std::string id;
    // The API's connections reconnect on their next use.
    REQUIRE_MESSAGE(eventually(
                        [&] {
                          auto r =
                              c.Post("/api/v1/flows/wprobe_chain/runs",
                                     json({{"log", (scene.scratch.dir / "w.log").string()}}).dump(),
                                     "application/json");
                          if (!r || r->status != 201) return false;
                          id = json::parse(r->body)["id"];
                          return true;
                        },
                        60s),
                    scene.log());
    CHECK_MESSAGE(scene.wait_run(id)["status"] == "completed", scene.log());
    CHECK(scene.server->wait(0ms) == std::nullopt);
  }
}

}  // namespace flowreg::servetest
