#pragma once
// flowreg's YAML files: one format for the configuration (flowreg.yaml) and for files of flows.
// schemas/flow.schema.json describes it; flows.example.yaml shows all of it.
//
// Loading validates the document against the schema, then applies the semantic rules of
// validate.hpp to each flow, and reports every problem with file:line:column. Nothing is returned
// unless the whole file is valid.

#include <cstdint>
#include <filesystem>
#include <string>
#include <vector>

#include "flowreg/error.hpp"
#include "flowreg/flow.hpp"
#include "flowreg/schedule.hpp"

namespace flowreg {

struct PluginSettings {
  std::filesystem::path dir = "plugins.d";
  bool watch = true;
  bool allow_symlinks = false;
  bool allow_unsafe = false;
  std::uint64_t max_bytes = 64u << 20;
  Millis scan_timeout{10'000};
  std::vector<std::string> sha256_allowlist;  // empty: any digest
};

// TCP access to the embedded cluster for workers on other hosts (database.listen). Without
// addresses the cluster listens on its unix socket only.
struct DatabaseListen {
  std::vector<std::string> addresses;  // IP addresses to listen on ("*": all)
  int port = 5432;
  // Networks (address/prefix) admitted with scram-sha-256 and the generated password; no other
  // address may connect over TCP.
  std::vector<std::string> allow;
  // TLS: both or neither. With them the server accepts TLS connections only.
  std::filesystem::path ssl_cert_file, ssl_key_file;

  bool enabled() const { return !addresses.empty(); }
};

struct DatabaseSettings {
  std::string url;  // empty: the embedded cluster under data_dir
  // Relative to the configuration file's directory, as plugins.dir is (the built-in defaults,
  // used without a file: to the working directory).
  std::filesystem::path data_dir = ".flowreg";
  DatabaseListen listen;  // the embedded cluster only
};

struct WorkerSettings {
  int concurrency = 4;
  std::vector<std::string> flows;  // empty: every loaded flow
  int batch_size = 32;
  Millis poll_interval{1'000};
  Millis shutdown_grace{30'000};
  Millis lease{10'000};  // a claimed task's lease, renewed while its handler runs
  std::int64_t max_output_bytes = std::int64_t{16} << 20;  // larger handler outputs fail the task
  Isolation isolation = Isolation::thread;  // where handlers run unless their flow says
  HandlerLimits limits;                     // of handler processes, unless their flow says
  RetentionSettings retention;              // how long ended runs are kept, and who deletes them
};

// `flowreg serve` (the HTTP API and dashboard).
struct ServerSettings {
  std::string listen = "127.0.0.1:8080";  // HOST:PORT; anything but loopback needs a token
  std::string token;               // Bearer token; FLOWREG_TOKEN in the environment overrides it
  bool open_reads = false;         // with a token: read-only routes answer without it
  int max_connections = 16;        // requests handled at once (handler threads); as many may wait
  int max_open_connections = 512;  // sockets open at once, idle or not; more get 503
  int max_event_streams = 8;       // /events streams open at once (a thread each)
  Millis timeout{10'000};          // a whole request, writing a response, an idle keep-alive
  // Host header names accepted besides loopback names, IP literals and the listen host: the
  // names clients reach this server by (DNS rebinding is refused otherwise).
  std::vector<std::string> allowed_hosts;
  std::filesystem::path tls_cert, tls_key;  // PEM: serve HTTPS (both, or neither)
  bool access_log = true;                   // one log line per request
  Millis session_ttl{12 * 3'600'000};       // a dashboard sign-in lasts this long
};

struct Config {
  std::filesystem::path file;  // "" for built-in defaults
  std::string module;          // module name of the file's flows
  PluginSettings plugins;
  DatabaseSettings database;
  WorkerSettings worker;
  ServerSettings server;
  std::vector<FlowDef> flows;
  std::vector<ScheduleDef> schedules;  // stored (source "config:<module>") by workers and serve
};

// Loads and validates a configuration or flow file. Relative plugin directories are resolved
// against the file's directory. On failure the Error carries one Diagnostic per problem.
Result<Config> load_config(const std::filesystem::path& file);

// Same as load_config, from text; `file` names it in messages and resolves relative paths.
Result<Config> parse_config(std::string_view text, const std::filesystem::path& file);

// The module name a file's flows get when the file does not say `module:`: the file name up to
// its first '.', lowercased, other characters than [a-z0-9_] turned into '_', prefixed with 'm_'
// when it does not start with a letter.
std::string module_name_for_file(const std::filesystem::path& file);

}  // namespace flowreg
