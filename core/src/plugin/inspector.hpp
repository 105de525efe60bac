#pragma once
// The inspection: a plugin is loaded first in a child process (`INSPECTOR __inspect FILE`, the
// flowreg binary running PluginLoader::inspect_main), in its own process group, where a crash,
// an abort or a hang is harmless. Both sides of the exchange are here: the parent runs the child
// and reads its answer; the child prints that answer as one JSON line on stdout:
//   {"ok": true, "module", "abi", "fingerprint", "flows", "handlers", "left_processes"}
//   {"ok": false, "stage", "message", "left_processes"}
// The child is a subreaper (become_subreaper) and kills every process the plugin started, in its
// group or not (setsid, a daemon's double fork), before it answers; "left_processes" says how
// many it killed. The parent then kills the child's group and waits until it is gone. What escapes
// both: a process that left the group when the child crashed or hung before it could kill it (the
// parent kills only the group); such a process may also hold the child's output open, so that the
// inspection ends at plugins.scan_timeout.
//
// Thread-safety: free functions; inspect_in_child may be called concurrently (each call runs its
// own child). The child-side functions are for the inspection process only.
// Errors: inspect_in_child returns a PluginError; Inspection says whether the failure quarantines
// the content (the caller records it, see quarantine.hpp).

#include <filesystem>
#include <optional>
#include <string>
#include <tl/expected.hpp>

#include "flowreg/config.hpp"
#include "flowreg/plugins.hpp"

namespace flowreg::detail {

// How an inspection failed.
struct Inspection {
  bool quarantined = false;             // a crash, abort, hang or a process left running
  std::optional<long long> timeout_ms;  // set when it was cut off at the deadline
};

// Loads the staged copy `staged` in a child process first. A crash, abort, or hang is a
// quarantine; so is a process the plugin started that outlives the load (the child kills it
// before answering, or the parent with the child's group, and waits for it). A stage the child
// refused is reported as that stage, with `source` (the file in the plugins directory) replacing
// the staged copy's path in its message. `inspector` empty: no inspection, success. `inspection` is
// reset first, then says how the inspection failed.
tl::expected<void, PluginError> inspect_in_child(const std::filesystem::path& inspector,
                                                 Millis scan_timeout,
                                                 const std::filesystem::path& staged,
                                                 const std::string& source, Inspection& inspection);

// The child's side. The host that loads the plugin next is multi-threaded (a worker): so is the
// inspection process while it loads, so that a plugin that fails only with several threads fails
// there, where it is harmless. Starts idle threads that never end.
void start_inspection_threads();
// The answer line (without its newline) for a load that succeeded (`error` null; `info` holds what
// the plugin described) or failed at `error`'s stage; `left_processes`: how many processes the
// plugin had started and the child killed (end_inspection_processes).
std::string inspection_answer(const PluginInfo& info, const PluginError* error, int left_processes);
// Makes the inspection process a subreaper, so that every process the plugin starts stays within
// reach of end_inspection_processes (call before loading).
void watch_inspection_processes();
// Kills (SIGKILL) and reaps every process the plugin started; returns how many.
int end_inspection_processes();

}  // namespace flowreg::detail
