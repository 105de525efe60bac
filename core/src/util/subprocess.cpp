#include "util/subprocess.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>

#include "util/process_tree.hpp"

namespace flowreg::detail {

std::string SubprocessResult::describe_end() const {
  if (!started) return "could not start: " + error;
  if (timed_out) return "did not finish in time and was killed";
  if (signal != 0) return fmt::format("was killed by signal {} ({})", signal, strsignal(signal));
  return fmt::format("exited with status {}", exit_code);
}

SubprocessResult run_subprocess(const std::vector<std::string>& argv,
                                std::chrono::milliseconds timeout, std::size_t max_output,
                                const std::string& cwd) {
  SubprocessOptions options;
  options.max_output = max_output;
  options.cwd = cwd;
  return run_subprocess(argv, timeout, options);
}

SubprocessResult run_subprocess(const std::vector<std::string>& argv,
                                std::chrono::milliseconds timeout,
                                const SubprocessOptions& options) {
  SubprocessResult result;
  int out_pipe[2], err_pipe[2];
  if (pipe2(out_pipe, O_CLOEXEC) != 0) {
    result.error = std::strerror(errno);
    return result;
  }
  if (pipe2(err_pipe, O_CLOEXEC) != 0) {
    result.error = std::strerror(errno);
    close(out_pipe[0]);
    close(out_pipe[1]);
    return result;
  }
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  const bool group = options.own_process_group;

  const pid_t pid = fork();
  if (pid < 0) {
    result.error = std::strerror(errno);
    for (int fd : {out_pipe[0], out_pipe[1], err_pipe[0], err_pipe[1]}) close(fd);
    return result;
  }
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec.
    if (group) setpgid(0, 0);
    dup2(out_pipe[1], STDOUT_FILENO);
    dup2(err_pipe[1], STDERR_FILENO);
    const int devnull = open("/dev/null", O_RDONLY);
    if (devnull >= 0) dup2(devnull, STDIN_FILENO);
    if (!options.cwd.empty() && chdir(options.cwd.c_str()) != 0) _exit(127);
    // Nothing else of ours leaks into the child (a long-lived child such as a postmaster would
    // otherwise keep our descriptors open).
    close_range(3, ~0U, 0);
    execv(args[0], args.data());
    _exit(127);
  }
  // Both sides set the group, so that it exists before either of them goes on (the parent's call
  // fails harmlessly once the child has exec'd).
  if (group) setpgid(pid, pid);
  const pid_t target = group ? -pid : pid;  // what a kill hits
  result.started = true;
  close(out_pipe[1]);
  close(err_pipe[1]);

  int status = 0;
  bool reaped = false;
  // The child is gone: whatever is left of its group is killed. Processes it started would
  // otherwise live on, and hold our pipes open until the deadline.
  // Killed and waited for, not only signalled: a SIGKILL takes effect when the process is next
  // scheduled, and returning before that left it running after the command had returned.
  auto end_group = [&] {
    if (!group) return;
    if (kill(-pid, 0) == 0) {
      if (!result.timed_out) result.left_processes = true;
      kill_group_and_wait(pid, std::chrono::steady_clock::now() + std::chrono::seconds(5));
    }
  };

  const auto deadline = std::chrono::steady_clock::now() + timeout;
  std::array<pollfd, 2> fds{{{out_pipe[0], POLLIN, 0}, {err_pipe[0], POLLIN, 0}}};
  int open_fds = 2;
  char buffer[8192];
  while (open_fds > 0) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
        deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      kill(target, SIGKILL);
      result.timed_out = true;
      break;
    }
    // In a group of its own, the child's end is looked for between reads (its descendants may
    // keep the pipes open after it ended).
    if (group && !reaped) left = std::min(left, std::chrono::milliseconds(20));
    const int ready = poll(fds.data(), fds.size(), static_cast<int>(left.count()));
    if (ready < 0 && errno != EINTR) break;
    for (std::size_t i = 0; ready > 0 && i < fds.size(); ++i) {
      if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
      const ssize_t n = read(fds[i].fd, buffer, sizeof buffer);
      if (n <= 0) {
        close(fds[i].fd);
        fds[i].fd = -1;
        --open_fds;
        continue;
      }
      std::string& sink = i == 0 ? result.out : result.err;
      if (sink.size() < options.max_output)
        sink.append(buffer,
                    std::min(static_cast<std::size_t>(n), options.max_output - sink.size()));
    }
    if (group && !reaped && waitpid(pid, &status, WNOHANG) == pid) {
      reaped = true;
      end_group();
    }
  }
  for (auto& fd : fds)
    if (fd.fd >= 0) close(fd.fd);
  // The child may have closed its output and still run: the deadline holds for the wait too.
  while (!reaped) {
    const pid_t done = waitpid(pid, &status, result.timed_out ? 0 : WNOHANG);
    if (done == pid) break;
    if (done < 0 && errno != EINTR) break;
    if (done == 0) {
      if (std::chrono::steady_clock::now() >= deadline) {
        kill(target, SIGKILL);
        result.timed_out = true;
      } else {
        usleep(2000);
      }
    }
  }
  end_group();
  if (WIFEXITED(status)) result.exit_code = WEXITSTATUS(status);
  if (WIFSIGNALED(status)) result.signal = WTERMSIG(status);
  return result;
}

}  // namespace flowreg::detail
