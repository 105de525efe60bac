#pragma once
// Runs a program to completion, or kills it when it overruns a deadline, capturing its output.

#include <chrono>
#include <string>
#include <vector>

namespace flowreg::detail {

struct SubprocessResult {
  bool started = false;    // false: fork or exec failed (see `error`)
  bool timed_out = false;  // killed (SIGKILL) after the deadline
  int exit_code = -1;      // when it exited
  int signal = 0;          // when a signal ended it (also SIGKILL after a time-out)
  // With own_process_group: processes of its group outlived it (they were killed).
  bool left_processes = false;
  std::string out, err;
  std::string error;

  bool exited_ok() const noexcept { return started && !timed_out && signal == 0 && exit_code == 0; }
  // "exited with status 3", "killed by signal 11 (Segmentation fault)", "timed out after 2s"
  std::string describe_end() const;
};

struct SubprocessOptions {
  std::size_t max_output = 16u << 20;  // per stream; output beyond it is dropped
  std::string cwd;                     // runs there when not empty
  // The child leads a process group of its own, and the whole group is killed (SIGKILL) and
  // waited for (kill_group_and_wait) when the child ends or overruns the deadline: nothing it
  // started runs once run_subprocess returns (unless it left the group with setsid or setpgid:
  // the child itself must end those, see kill_descendants). Off for programs whose children are
  // meant to outlive them (pg_ctl's server).
  bool own_process_group = false;
};

// argv[0] is the path of the program; it runs in `cwd` when given. Output beyond `max_output`
// bytes per stream is dropped.
SubprocessResult run_subprocess(const std::vector<std::string>& argv,
                                std::chrono::milliseconds timeout,
                                std::size_t max_output = 16u << 20, const std::string& cwd = {});

SubprocessResult run_subprocess(const std::vector<std::string>& argv,
                                std::chrono::milliseconds timeout,
                                const SubprocessOptions& options);

}  // namespace flowreg::detail
