#include "plugin/inspector.hpp"

#include <fmt/format.h>

#include <condition_variable>
#include <mutex>
#include <nlohmann/json.hpp>
#include <thread>
#include <utility>

#include "plugin/plugin_file_check.hpp"
#include "util/process_tree.hpp"
#include "util/strings.hpp"
#include "util/subprocess.hpp"

namespace flowreg::detail {

namespace fs = std::filesystem;

namespace {}  // namespace

tl::expected<void, PluginError> inspect_in_child(const fs::path& inspector, Millis scan_timeout,
                                                 const fs::path& staged, const std::string& source,
                                                 Inspection& inspection) {
  inspection = {};
  if (inspector.empty()) return {};
  SubprocessOptions run;
  run.own_process_group = true;
  const auto result =
      run_subprocess({inspector.string(), "__inspect", staged.string()}, scan_timeout, run);
  if (!result.started)
    return reject(PluginStage::inspect,
                  fmt::format("cannot run the inspector {}: {}", inspector.string(), result.error));
  if (result.timed_out) {
    inspection.quarantined = true;
    inspection.timeout_ms = scan_timeout.count();
    return reject(PluginStage::inspect,
                  fmt::format("did not finish loading within {} ms "
                              "(plugins.scan_timeout) in the inspection process (a "
                              "hang in a static initializer or the entry point?); "
                              "quarantined until the file changes or "
                              "plugins.scan_timeout is raised",
                              scan_timeout.count()));
  }
  const nlohmann::json answer = nlohmann::json::parse(result.out, nullptr, false);
  if (result.signal != 0 || result.exit_code != 0 || answer.is_discarded() || !answer.is_object()) {
    inspection.quarantined = true;
    // The child's stderr is text from outside: cut without splitting a character, made valid.
    std::string err = utf8_valid(utf8_prefix(result.err, 2000));
    while (!err.empty() && (err.back() == '\n' || err.back() == '\r')) err.pop_back();
    return reject(PluginStage::inspect,
                  fmt::format("crashed the inspection process while loading: it {}{}; "
                              "quarantined until the file changes",
                              result.describe_end(), err.empty() ? "" : " (stderr: " + err + ")"));
  }
  const auto killed = answer.find("left_processes");
  if (result.left_processes ||
      (killed != answer.end() && killed->is_number_integer() && killed->get<long long>() > 0)) {
    inspection.quarantined = true;
    return reject(PluginStage::inspect,
                  "started a process that was still running after loading (a fork in a static "
                  "initializer or the entry point?); it was killed, and the file is quarantined "
                  "until it changes");
  }
  if (!answer.value("ok", false)) {
    std::string message = utf8_valid(answer.value("message", "rejected"));
    for (auto at = message.find(staged.string()); at != std::string::npos;
         at = message.find(staged.string(), at + source.size()))
      message.replace(at, staged.string().size(), source);
    return reject(
        plugin_stage_from_string(answer.value("stage", "")).value_or(PluginStage::inspect),
        std::move(message));
  }
  return {};
}

void start_inspection_threads() {
  constexpr int kThreads = 4;
  static std::mutex idle_mutex;
  static std::condition_variable idle;
  for (int i = 0; i < kThreads; ++i)
    std::thread([] {
      std::unique_lock lock(idle_mutex);
      idle.wait(lock, [] { return false; });
    }).detach();
}

void watch_inspection_processes() { become_subreaper(); }

int end_inspection_processes() {
  // Bounded: a process stuck in the kernel is left to the parent, which kills the whole group.
  return kill_descendants(std::chrono::steady_clock::now() + std::chrono::seconds(2));
}

std::string inspection_answer(const PluginInfo& info, const PluginError* error,
                              int left_processes) {
  nlohmann::json out;
  if (!error) {
    out = {{"ok", true},          {"module", info.module},
           {"abi", info.abi},     {"fingerprint", info.fingerprint},
           {"flows", info.flows}, {"handlers", info.handlers}};
  } else {
    out = {{"ok", false}, {"stage", to_string(error->stage)}, {"message", error->message}};
  }
  out["left_processes"] = left_processes;
  return out.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

}  // namespace flowreg::detail
