#include "support/process.hpp"

#include <chrono>
#include <stdexcept>

#include "util/subprocess.hpp"

namespace flowreg::test {

ProcessResult run_process(const std::vector<std::string>& argv, const std::string& cwd) {
  // Generous: a deadlock guard, not a speed check.
  const auto r = detail::run_subprocess(argv, std::chrono::minutes(5), 64u << 20, cwd);
  if (!r.started) throw std::runtime_error("cannot run " + argv.at(0) + ": " + r.error);
  ProcessResult out;
  out.exit_code = r.signal != 0 ? 128 + r.signal : r.exit_code;
  out.out = r.out;
  out.err = r.err;
  return out;
}

}  // namespace flowreg::test
