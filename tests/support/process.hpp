#pragma once
// Runs a program and captures its exit code, stdout and stderr (tests only).

#include <sys/types.h>

#include <chrono>
#include <optional>
#include <string>
#include <vector>

namespace flowreg::test {

struct ProcessResult {
  int exit_code = -1;  // the exit status, or 128 + signal when killed by a signal
  std::string out;
  std::string err;
};

ProcessResult run_process(const std::vector<std::string>& argv, const std::string& cwd = {});

// A program running in the background, its stdout and stderr written to files. The destructor
// kills (SIGKILL) and reaps it if it still runs. Movable, not copyable.
class Child {
 public:
  static Child spawn(const std::vector<std::string>& argv, const std::string& out_file,
                     const std::string& err_file);
  Child(Child&& other) noexcept : pid_(other.pid_), status_(other.status_) { other.pid_ = -1; }
  Child& operator=(Child&&) = delete;
  Child(const Child&) = delete;
  Child& operator=(const Child&) = delete;
  ~Child();

  pid_t pid() const noexcept { return pid_; }
  void signal(int sig) const;
  // The exit status (128 + signal when killed by one), or nullopt if it still runs after timeout.
  std::optional<int> wait(std::chrono::milliseconds timeout);

 private:
  explicit Child(pid_t pid) : pid_(pid) {}
  pid_t pid_ = -1;
  std::optional<int> status_;
};

}  // namespace flowreg::test
