#pragma once
// The name of the host this process runs on, as gethostname(2) reports it; "unknown" when it
// cannot be read.

#include <unistd.h>

#include <climits>
#include <string>

namespace flowreg::detail {

inline std::string host_name() {
  char buf[HOST_NAME_MAX + 1] = {};
  if (gethostname(buf, sizeof buf - 1) != 0) return "unknown";
  return buf;
}

}  // namespace flowreg::detail
