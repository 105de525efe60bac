#pragma once
// The `flowreg` command line. Exit codes: 0 success, 1 failure (invalid input, not found, a run
// that failed), 2 usage error (unknown command or option, missing argument).

namespace flowreg::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitUsage = 2;

int run(int argc, char** argv);

}  // namespace flowreg::cli
