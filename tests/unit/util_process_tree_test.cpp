#include <doctest/doctest.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <vector>

#include "util/process_tree.hpp"

namespace pt = flowreg::detail;
using namespace std::chrono_literals;

namespace {

// Writes a number as one line to `fd` (from a forked process: write(2) only).
void tell(int fd, long value) {
  char line[32];
  const int n = std::snprintf(line, sizeof line, "%ld\n", value);
  if (write(fd, line, static_cast<std::size_t>(n)) != n) _exit(3);
}

// Reads the numbers written to `fd` until its end, or until `count` of them were read (the
// processes that hold the other end may run on).
std::vector<long> hear(int fd, std::size_t count = SIZE_MAX) {
  std::string text;
  char buffer[256];
  while (static_cast<std::size_t>(std::count(text.begin(), text.end(), '\n')) < count) {
    const ssize_t n = read(fd, buffer, sizeof buffer);
    if (n == 0) break;
    if (n < 0 && errno == EINTR) continue;
    REQUIRE(n > 0);
    text.append(buffer, static_cast<std::size_t>(n));
  }
  std::vector<long> values;
  for (std::size_t at = 0, end; (end = text.find('\n', at)) != std::string::npos; at = end + 1)
    values.push_back(std::stol(text.substr(at, end - at)));
  return values;
}

// Runs `body` in a forked host process, so that what it makes of itself (a subreaper) and what it
// kills (all its children) stays out of this test runner; returns what the host told, in order.
template <class Body>
std::vector<long> in_host(Body body) {
  int pipe_fds[2];
  REQUIRE(pipe(pipe_fds) == 0);
  const pid_t host = fork();
  REQUIRE(host >= 0);
  if (host == 0) {
    close(pipe_fds[0]);
    body(pipe_fds[1]);
    _exit(0);
  }
  close(pipe_fds[1]);
  const auto told = hear(pipe_fds[0]);
  close(pipe_fds[0]);
  int status = 0;
  REQUIRE(waitpid(host, &status, 0) == host);
  REQUIRE(WIFEXITED(status));
  REQUIRE(WEXITSTATUS(status) == 0);
  return told;
}

// Starts a process that waits to be killed, and tells its pid on `fd`.
pid_t start_sleeper(int fd) {
  const pid_t pid = fork();
  if (pid < 0) _exit(4);
  if (pid == 0)
    for (;;) pause();
  tell(fd, pid);
  return pid;
}

// No process has this pid any more (or it is a zombie: it runs no code).
bool runs_no_more(pid_t pid) {
  if (kill(pid, 0) != 0 && errno == ESRCH) return true;
  std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
  std::string line;
  std::getline(stat, line);
  const auto close = line.rfind(')');
  return close != std::string::npos && close + 2 < line.size() && line[close + 2] == 'Z';
}

}  // namespace

TEST_SUITE("process_tree") {
  TEST_CASE("a forked child is listed, then killed and reaped by kill_descendants") {
    const auto told = in_host([](int fd) {
      const pid_t child = start_sleeper(fd);
      const auto before = pt::child_pids();
      tell(fd, before.size() == 1 && before[0] == child ? 1 : 0);
      tell(fd, pt::kill_descendants(std::chrono::steady_clock::now() + 10s));
      // Reaped: not ours to wait for any more.
      tell(fd, waitpid(child, nullptr, WNOHANG) < 0 && errno == ECHILD ? 1 : 0);
      tell(fd, static_cast<long>(pt::child_pids().size()));
    });
    REQUIRE(told.size() == 5);
    CHECK(told[1] == 1);  // listed
    CHECK(told[2] == 1);  // one killed
    CHECK(told[3] == 1);  // reaped
    CHECK(told[4] == 0);  // none left
    // It was reaped before the host went on: no process has its pid now.
    CHECK((kill(static_cast<pid_t>(told[0]), 0) != 0 && errno == ESRCH));
  }

  TEST_CASE(
      "a grandchild that left the session and was orphaned is found and reaped through the "
      "subreaper") {
    const auto told = in_host([](int fd) {
      tell(fd, pt::become_subreaper() ? 1 : 0);
      // A daemon's double fork: the middle process leaves the session, forks, and exits.
      const pid_t middle = fork();
      if (middle < 0) _exit(4);
      if (middle == 0) {
        setsid();
        start_sleeper(fd);
        _exit(0);
      }
      if (waitpid(middle, nullptr, 0) != middle) _exit(5);
      // The orphan is ours now.
      tell(fd, static_cast<long>(pt::child_pids().size()));
      tell(fd, pt::kill_descendants(std::chrono::steady_clock::now() + 10s));
      tell(fd, static_cast<long>(pt::child_pids().size()));
    });
    REQUIRE(told.size() == 5);
    CHECK(told[0] == 1);  // became a subreaper
    const auto grandchild = static_cast<pid_t>(told[1]);
    CHECK(told[2] == 1);  // the orphan reparented to the host
    CHECK(told[3] == 1);  // killed
    CHECK(told[4] == 0);
    CHECK((kill(grandchild, 0) != 0 && errno == ESRCH));
  }

  TEST_CASE("kill_descendants returns 0 and kills nothing when there is no child") {
    const auto told = in_host(
        [](int fd) { tell(fd, pt::kill_descendants(std::chrono::steady_clock::now() + 1s)); });
    REQUIRE(told.size() == 1);
    CHECK(told[0] == 0);
  }

  TEST_CASE("kill_group_and_wait kills every process of a group and returns once it is gone") {
    int pipe_fds[2];
    REQUIRE(pipe(pipe_fds) == 0);
    const pid_t leader = fork();
    REQUIRE(leader >= 0);
    if (leader == 0) {
      setpgid(0, 0);
      close(pipe_fds[0]);
      start_sleeper(pipe_fds[1]);
      start_sleeper(pipe_fds[1]);
      close(pipe_fds[1]);
      for (;;) pause();
    }
    setpgid(leader, leader);  // both sides: the group exists before either goes on
    close(pipe_fds[1]);
    const auto members = hear(pipe_fds[0], 2);  // each sleeper holds the pipe until it is killed
    close(pipe_fds[0]);
    REQUIRE(members.size() == 2);
    for (const long member : members) REQUIRE(getpgid(static_cast<pid_t>(member)) == leader);

    CHECK(pt::kill_group_and_wait(leader, std::chrono::steady_clock::now() + 30s));
    // The leader, our child, was reaped; the members (the leader's children, now orphans) run no
    // more code the moment it returns.
    CHECK((waitpid(leader, nullptr, WNOHANG) < 0 && errno == ECHILD));
    for (const long member : members) {
      CAPTURE(member);
      CHECK(runs_no_more(static_cast<pid_t>(member)));
    }
  }
}
