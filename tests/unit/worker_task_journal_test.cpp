// The worker's task journal (core/src/worker/task_journal.hpp) on real files and real processes:
// how it is created while other workers collect, and what a child forked by a handler holds.

#include <doctest/doctest.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

#include "worker/task_journal.hpp"

namespace {

namespace fs = std::filesystem;
using flowreg::detail::TaskJournal;

// This process's scratch directory, removed when the test program exits (the children the tests
// fork end with _exit, which leaves it alone).
struct ScratchRoot {
  const pid_t owner = ::getpid();
  const fs::path path = fs::temp_directory_path() / ("flowreg_journal_" + std::to_string(owner));
  ~ScratchRoot() {
    std::error_code ignored;
    if (::getpid() == owner) fs::remove_all(path, ignored);
  }
};

fs::path scratch(const std::string& name) {
  static const ScratchRoot root;
  const fs::path dir = root.path / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

}  // namespace

TEST_SUITE("task_journal") {
  TEST_CASE(
      "a journal being created was taken by a concurrent collect() as a dead worker's (it was "
      "unlocked between open and flock): collect() now never gets one, and every open() works") {
    const fs::path dir = scratch("race");
    std::atomic<bool> done{false};
    std::atomic<int> taken{0};
    std::thread collector([&] {
      while (!done.load()) {
        for (auto& leftover : TaskJournal::collect(dir)) {
          ++taken;
          leftover.discard();
        }
      }
    });
    int failed_opens = 0;
    // Each open() keeps one descriptor for the life of the process (see TaskJournal::close()).
    for (int i = 0; i < 400; ++i) {
      auto journal = TaskJournal::open(dir);
      if (!journal) {
        ++failed_opens;
        continue;
      }
      (*journal)->close();
    }
    done = true;
    collector.join();
    CHECK(taken.load() == 0);
    CHECK(failed_opens == 0);
  }

  TEST_CASE(
      "the records of a dead worker's handler threads are collected, those in the mapped slots "
      "and those after them (written with pwrite), and ended ones are not") {
    const fs::path dir = scratch("slots");
    constexpr int kThreads = 1100;  // more than the 1,024 mapped slots
    const pid_t worker = ::fork();
    REQUIRE(worker >= 0);
    if (worker == 0) {
      // The "worker": one thread after the other (each its own slot) begins a task; every
      // tenth ends it too. Then it dies without closing its journal.
      auto journal = TaskJournal::open(dir);
      if (!journal) ::_exit(2);
      for (int i = 1; i <= kThreads; ++i) {
        std::thread([&] {
          (*journal)->begin(i, 1 + i % 3);
          if (i % 10 == 0) (*journal)->end();
        }).join();
      }
      ::_exit(0);
    }
    int status = 0;
    REQUIRE(::waitpid(worker, &status, 0) == worker);
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 0);
    auto leftovers = TaskJournal::collect(dir);
    REQUIRE(leftovers.size() == 1);
    std::vector<int> attempt_of(kThreads + 1, 0);
    int records = 0;
    for (const auto& e : leftovers[0].entries()) {
      REQUIRE(e.id >= 1);
      REQUIRE(e.id <= kThreads);
      CHECK_FALSE(e.signal.has_value());
      attempt_of[static_cast<std::size_t>(e.id)] = e.attempt;
      ++records;
    }
    CHECK(records == kThreads - kThreads / 10);
    for (int i = 1; i <= kThreads; ++i)
      CHECK(attempt_of[static_cast<std::size_t>(i)] == (i % 10 == 0 ? 0 : 1 + i % 3));
    leftovers[0].discard();
  }

  TEST_CASE("collect() ignores a journal still under its creation name") {
    const fs::path dir = scratch("creating");
    const fs::path creating = dir / "1-00000000.journal.new";
    { std::ofstream(creating.string()) << ""; }
    CHECK(TaskJournal::collect(dir).empty());
    CHECK(fs::exists(creating));
  }

  TEST_CASE(
      "a child forked by a handler kept a dead worker's journal locked for as long as it lived: "
      "it now closes its copy, and the journal is collected while the child still runs") {
    const fs::path dir = scratch("fork");
    int hold[2];
    REQUIRE(::pipe(hold) == 0);
    const pid_t worker = ::fork();
    REQUIRE(worker >= 0);
    if (worker == 0) {
      // The "worker": opens its journal, forks a long-lived child, and dies without closing it.
      ::close(hold[1]);
      auto journal = TaskJournal::open(dir);
      if (!journal) ::_exit(2);
      (*journal)->begin(42, 1);
      const pid_t child = ::fork();
      if (child == 0) {
        char c = 0;
        while (::read(hold[0], &c, 1) < 0) {
        }
        ::_exit(0);
      }
      ::_exit(child > 0 ? 0 : 3);
    }
    ::close(hold[0]);
    int status = 0;
    REQUIRE(::waitpid(worker, &status, 0) == worker);
    REQUIRE(WIFEXITED(status));
    REQUIRE(WEXITSTATUS(status) == 0);
    // The worker is dead, its child is alive (blocked on `hold`). The child closes its copy in
    // the fork handler, which runs when the child is first scheduled: possibly after the worker
    // died, so the journal may stay locked for a moment, never for as long as the child lives.
    auto leftovers = TaskJournal::collect(dir);
    for (int i = 0; i < 1000 && leftovers.empty(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      leftovers = TaskJournal::collect(dir);
    }
    CHECK(leftovers.size() == 1);
    if (leftovers.size() == 1) {
      REQUIRE(leftovers[0].entries().size() == 1);
      CHECK(leftovers[0].entries()[0].id == 42);
      leftovers[0].discard();
    }
    ::close(hold[1]);  // the child ends
  }
}
