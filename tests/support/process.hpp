#pragma once
// Runs a program and captures its exit code, stdout and stderr (tests only).

#include <string>
#include <vector>

namespace flowreg::test {

struct ProcessResult {
  int exit_code = -1;  // the exit status, or 128 + signal when killed by a signal
  std::string out;
  std::string err;
};

ProcessResult run_process(const std::vector<std::string>& argv, const std::string& cwd = {});

}  // namespace flowreg::test
