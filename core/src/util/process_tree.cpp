#include "util/process_tree.hpp"

#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <optional>
#include <string>
#include <thread>

namespace flowreg::detail {

namespace fs = std::filesystem;

namespace {

// The fields of /proc/<pid>/stat after the command (which may hold spaces and parentheses).
struct ProcStat {
  char state = '?';
  pid_t ppid = 0;
  pid_t pgrp = 0;
};

std::optional<ProcStat> read_proc_stat(const fs::path& dir) {
  std::ifstream in(dir / "stat");
  std::string line;
  if (!std::getline(in, line)) return std::nullopt;
  const auto close = line.rfind(')');
  if (close == std::string::npos) return std::nullopt;
  ProcStat stat;
  long ppid = 0, pgrp = 0;
  if (std::sscanf(line.c_str() + close + 1, " %c %ld %ld", &stat.state, &ppid, &pgrp) != 3)
    return std::nullopt;
  stat.ppid = static_cast<pid_t>(ppid);
  stat.pgrp = static_cast<pid_t>(pgrp);
  return stat;
}

std::optional<pid_t> pid_of_entry(const fs::directory_entry& entry) {
  const std::string name = entry.path().filename().string();
  if (name.empty() ||
      !std::all_of(name.begin(), name.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return std::nullopt;
  return static_cast<pid_t>(std::stol(name));
}

// Calls `each` with the stat of every process in /proc (those that vanish meanwhile skipped).
template <class F>
void for_each_process(F&& each) {
  std::error_code ec;
  for (fs::directory_iterator it("/proc", ec), end; !ec && it != end; it.increment(ec)) {
    const auto pid = pid_of_entry(*it);
    if (!pid) continue;
    if (const auto stat = read_proc_stat(it->path())) each(*pid, *stat);
  }
}

// Some process of group `pgid` is not a zombie (it may still run code).
bool group_has_live_member(pid_t pgid) {
  bool live = false;
  for_each_process([&](pid_t, const ProcStat& stat) {
    if (stat.pgrp == pgid && stat.state != 'Z' && stat.state != 'X') live = true;
  });
  return live;
}

// A pause that grows from 1 ms to 10 ms, never past `deadline`.
void pause_until(std::chrono::steady_clock::time_point deadline, int round) {
  const auto step = std::chrono::milliseconds(std::min(10, 1 + round));
  std::this_thread::sleep_until(std::min(deadline, std::chrono::steady_clock::now() + step));
}

}  // namespace

bool become_subreaper() noexcept { return prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0; }

std::vector<pid_t> child_pids() {
  std::vector<pid_t> pids;
  std::error_code ec;
  bool listed = false;
  for (fs::directory_iterator it("/proc/self/task", ec), end; !ec && it != end; it.increment(ec)) {
    std::ifstream in(it->path() / "children");
    if (!in) continue;
    listed = true;
    long pid = 0;
    while (in >> pid) pids.push_back(static_cast<pid_t>(pid));
  }
  if (!listed) {
    const pid_t self = getpid();
    for_each_process([&](pid_t pid, const ProcStat& stat) {
      if (stat.ppid == self) pids.push_back(pid);
    });
  }
  std::sort(pids.begin(), pids.end());
  pids.erase(std::unique(pids.begin(), pids.end()), pids.end());
  return pids;
}

int kill_descendants(std::chrono::steady_clock::time_point deadline) {
  int killed = 0;
  const pid_t self = getpid();
  for (;;) {
    std::vector<pid_t> children = child_pids();
    std::erase(children, self);
    if (children.empty()) return killed;
    // A child of ours cannot be reused before we reap it: each pid here is still that process.
    for (const pid_t pid : children) {
      int status = 0;
      if (waitpid(pid, &status, WNOHANG) == pid) continue;  // had ended already
      if (kill(pid, SIGKILL) == 0) ++killed;
    }
    // Reaped, each killed child's children are already ours (the kernel reparents them as the
    // child exits, before it becomes a zombie): the next round finds them.
    for (int wait_round = 0; !children.empty(); ++wait_round) {
      std::erase_if(children, [](pid_t pid) {
        int status = 0;
        const pid_t done = waitpid(pid, &status, WNOHANG);
        return done == pid || (done < 0 && errno == ECHILD);
      });
      if (children.empty()) break;
      if (std::chrono::steady_clock::now() >= deadline) return killed;
      pause_until(deadline, wait_round);
    }
    if (std::chrono::steady_clock::now() >= deadline) return killed;
  }
}

bool kill_group_and_wait(pid_t pgid, std::chrono::steady_clock::time_point deadline) {
  if (pgid < 2) return false;
  // Reaps the members that are our children and have ended.
  const auto reap = [pgid] {
    int status = 0;
    while (waitpid(-pgid, &status, WNOHANG) > 0) {
    }
  };
  kill(-pgid, SIGKILL);
  for (int round = 0;; ++round) {
    reap();
    if (kill(-pgid, 0) != 0 && errno == ESRCH) return true;
    // Members remain, perhaps only zombies that another parent (an init that does not reap) holds.
    // Those of ours that ended since the reap above are reaped now.
    if (round > 0 && !group_has_live_member(pgid)) {
      reap();
      return true;
    }
    if (std::chrono::steady_clock::now() >= deadline) return false;
    // Again: a member forking while the first kill was on its way may have added one. The group
    // was not empty a moment ago, so its id has not been given to another group meanwhile (that
    // would take the pids to wrap around between two polls).
    kill(-pgid, SIGKILL);
    pause_until(deadline, round);
  }
}

}  // namespace flowreg::detail
