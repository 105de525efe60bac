#include "plugin/quarantine.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <utility>

#include "util/json_text.hpp"
#include "util/strings.hpp"

namespace flowreg::detail {

namespace fs = std::filesystem;

namespace {

// A quarantine record's error from its stored stage and message. A stage this version does not
// know keeps the record (as an inspection's): the content stays quarantined.
PluginError quarantined_at(std::string_view stage, std::string message) {
  return plugin_error(plugin_stage_from_string(stage).value_or(PluginStage::inspect),
                      std::move(message));
}

}  // namespace

Quarantine::Quarantine(fs::path cache_dir)
    : cache_dir_(std::move(cache_dir)), journal_(cache_dir_ / "journal") {}

void Quarantine::load() {
  read_records();
  count_load_crashes();
}

const QuarantineRecord* Quarantine::find(const std::string& sha256) const {
  auto it = records_.find(sha256);
  return it == records_.end() ? nullptr : &it->second;
}

// Records are JSON ({"stage", "message", "timeout_ms"?}): the message is kept whole, also when
// it spans lines (a crash report with the child's stderr). Records of older versions are text,
// the stage on the first line and the message after it.
void Quarantine::read_records() {
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(records_dir(), ec)) {
    const std::string sha = entry.path().stem().string();
    std::ifstream in(entry.path());
    std::stringstream text;
    text << in.rdbuf();
    if (entry.path().extension() == ".json") {
      const nlohmann::json record = parse_state_file_text(text.str());
      if (!record.is_object() || !record.contains("stage") || !record["stage"].is_string() ||
          !record.contains("message") || !record["message"].is_string())
        continue;
      QuarantineRecord q{quarantined_at(record["stage"].get<std::string>(),
                                        utf8_valid(record["message"].get<std::string>())),
                         std::nullopt};
      if (auto t = record.find("timeout_ms"); t != record.end() && t->is_number_integer())
        q.timeout_ms = t->get<long long>();
      records_[sha] = std::move(q);
    } else if (entry.path().extension() == ".txt" && !records_.contains(sha)) {
      const std::string all = text.str();
      const auto eol = all.find('\n');
      if (eol == std::string::npos) continue;
      std::string message = all.substr(eol + 1);
      while (!message.empty() && message.back() == '\n') message.pop_back();
      if (message.empty()) continue;
      QuarantineRecord q{quarantined_at(all.substr(0, eol), utf8_valid(message)), std::nullopt};
      // A hang recorded by an older version names its time limit only in the message.
      long long ms = 0;
      if (const auto at = message.find("did not finish loading within ");
          at != std::string::npos &&
          std::sscanf(message.c_str() + at, "did not finish loading within %lld ms", &ms) == 1)
        q.timeout_ms = ms;
      records_[sha] = std::move(q);
    }
  }
}

void Quarantine::remember(const std::string& sha, const PluginError& error,
                          std::optional<long long> timeout_ms) {
  records_[sha] = {error, timeout_ms};
  std::error_code ec;
  fs::create_directories(records_dir(), ec);
  nlohmann::json record = {{"stage", to_string(error.stage)}, {"message", error.message}};
  if (timeout_ms) record["timeout_ms"] = *timeout_ms;
  const fs::path target = records_dir() / (sha + ".json");
  const fs::path tmp = records_dir() / (sha + ".json.tmp" + std::to_string(getpid()));
  {
    std::ofstream out(tmp, std::ios::trunc);
    out << record.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
  }
  fs::rename(tmp, target, ec);
  fs::remove(records_dir() / (sha + ".txt"), ec);  // an older record of the same content
}

void Quarantine::forget(const std::string& sha) {
  records_.erase(sha);
  std::error_code ec;
  fs::remove(records_dir() / (sha + ".json"), ec);
  fs::remove(records_dir() / (sha + ".txt"), ec);
}

// Loads that a process did not survive: each orphaned journal record counts one crash against
// the content it was loading (a file per crash under crashes/<sha256>/, so that processes
// counting at the same time never lose one). After kMaxLoadCrashes in a row (a load that
// succeeds clears the count) the content is quarantined until the file changes.
void Quarantine::count_load_crashes() {
  for (auto& orphan : journal_.collect_orphans()) {
    const nlohmann::json& r = orphan.record;
    if (r.value("kind", "") != "plugin-load" || !r.contains("sha256") || !r["sha256"].is_string())
      continue;
    const std::string sha = r["sha256"].get<std::string>();
    if (sha.size() != 64 || sha.find_first_not_of("0123456789abcdef") != std::string::npos)
      continue;
    std::error_code ec;
    fs::create_directories(crashes_dir(sha), ec);
    std::ofstream(crashes_dir(sha) / (orphan.id + ".json"))
        << r.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace) << '\n';
    spdlog::warn("plugin {}: a flowreg process (pid {}) died while loading it",
                 r.value("file", sha), r.value("pid", 0L));
  }
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(cache_dir_ / "crashes", ec)) {
    const std::string sha = entry.path().filename().string();
    if (records_.contains(sha)) continue;
    const std::size_t crashes = load_crashes(sha);
    if (crashes >= kMaxLoadCrashes)
      remember(sha, plugin_error(PluginStage::load,
                                 fmt::format("crashed flowreg while loading ({} times); "
                                             "quarantined until the file changes",
                                             crashes)));
  }
}

std::size_t Quarantine::load_crashes(const std::string& sha) const {
  std::size_t n = 0;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(crashes_dir(sha), ec)) {
    (void)entry;
    ++n;
  }
  return n;
}

CrashJournal::Entry Quarantine::begin_load(const std::string& sha256, const fs::path& file) {
  return journal_.begin({{"kind", "plugin-load"},
                         {"sha256", sha256},
                         {"file", utf8_valid(file.string())},
                         {"pid", static_cast<long>(getpid())}});
}

void Quarantine::clear_load_crashes(const std::string& sha256) {
  if (load_crashes(sha256) > 0) {
    std::error_code ec;
    fs::remove_all(crashes_dir(sha256), ec);
  }
}

}  // namespace flowreg::detail
