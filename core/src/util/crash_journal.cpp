#include "util/crash_journal.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "util/json_text.hpp"

namespace flowreg::detail {

namespace fs = std::filesystem;

unsigned long long process_start_time(long pid) {
  std::ifstream in(fmt::format("/proc/{}/stat", pid));
  std::string stat((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  // "pid (comm) state ppid ...": comm may contain spaces and parentheses; fields count from the
  // last ')'. The start time is field 22, the 20th after comm.
  const auto close = stat.rfind(')');
  if (close == std::string::npos) return 0;
  std::istringstream fields(stat.substr(close + 1));
  std::string field;
  for (int i = 0; i < 20 && fields >> field; ++i) {
  }
  try {
    return fields ? std::stoull(field) : 0;
  } catch (const std::exception&) {
    return 0;
  }
}

namespace {

// "<pid>-<start>-<n>.json" -> pid and start; false for a name of another form.
bool parse_name(const std::string& name, long& pid, unsigned long long& start) {
  unsigned long n = 0;
  char tail[8] = {};
  return std::sscanf(name.c_str(), "%ld-%llu-%lu.%5s", &pid, &start, &n, tail) == 4 &&
         std::string_view(tail) == "json";
}

}  // namespace

CrashJournal::CrashJournal(fs::path dir) : dir_(std::move(dir)) {}

CrashJournal::Entry& CrashJournal::Entry::operator=(Entry&& other) noexcept {
  if (this != &other) {
    if (!path_.empty()) {
      std::error_code ec;
      fs::remove(path_, ec);
    }
    path_ = std::move(other.path_);
    other.path_.clear();
  }
  return *this;
}

CrashJournal::Entry::~Entry() {
  if (path_.empty()) return;
  std::error_code ec;
  fs::remove(path_, ec);
}

CrashJournal::Entry CrashJournal::begin(const nlohmann::json& record) {
  // This process's identity (recomputed in a forked child, which has another pid and start).
  thread_local long self_pid = 0;
  thread_local unsigned long long self_start = 0;
  if (self_pid != getpid()) {
    self_pid = getpid();
    self_start = process_start_time(self_pid);
  }
  // Without /proc nobody could tell this process alive from dead: no record rather than a false
  // crash.
  if (self_start == 0) return Entry{};
  std::error_code ec;
  fs::create_directories(dir_, ec);
  fs::permissions(dir_, fs::perms::owner_all, fs::perm_options::replace, ec);
  const std::string name = fmt::format("{}-{}-{}.json", self_pid, self_start, next_++);
  const fs::path tmp = dir_ / ("." + name + ".tmp");
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << record.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
    if (!out) {
      fs::remove(tmp, ec);
      return Entry{};
    }
  }
  fs::rename(tmp, dir_ / name, ec);
  if (ec) {
    fs::remove(tmp, ec);
    return Entry{};
  }
  return Entry{dir_ / name};
}

std::vector<CrashJournal::Orphan> CrashJournal::collect_orphans() {
  std::vector<Orphan> out;
  std::error_code ec;
  const std::string me = fmt::format("{}-{}", getpid(), process_start_time(getpid()));
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    const std::string name = entry.path().filename().string();
    long pid = 0;
    unsigned long long start = 0;
    if (!parse_name(name, pid, start)) continue;
    if (start != 0 && process_start_time(pid) == start) continue;  // its process still runs
    // Claimed by renaming it to a name of ours: of several collectors, one rename succeeds.
    const fs::path claimed = dir_ / fmt::format(".{}.claimed-{}", name, me);
    std::error_code rename_ec;
    fs::rename(entry.path(), claimed, rename_ec);
    if (rename_ec) continue;
    Orphan orphan;
    orphan.id = name.substr(0, name.size() - 5);
    orphan.record = parse_state_file(claimed);
    fs::remove(claimed, rename_ec);
    if (orphan.record.is_object()) out.push_back(std::move(orphan));
  }
  return out;
}

}  // namespace flowreg::detail
