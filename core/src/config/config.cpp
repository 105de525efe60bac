#include "flowreg/config.hpp"

#include <arpa/inet.h>
#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <map>
#include <set>

#include "config/definition.hpp"
#include "config/json_schema.hpp"
#include "config/yaml_json.hpp"
#include "flowreg/validate.hpp"
#include "schedule/checks.hpp"
#include "util/json_text.hpp"
#include "util/strings.hpp"

namespace flowreg {

std::string module_name_for_file(const std::filesystem::path& file) {
  std::string name = file.filename().string();
  name = name.substr(0, name.find('.'));
  for (char& c : name) {
    if (c >= 'A' && c <= 'Z') c = static_cast<char>(c - 'A' + 'a');
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_')) c = '_';
  }
  if (name.empty() || !(name[0] >= 'a' && name[0] <= 'z')) name = "m_" + name;
  if (name.size() > kMaxSlugLength) name.resize(kMaxSlugLength);
  return name;
}

namespace {

using nlohmann::json;

Millis duration_of(const json& value) {
  // The schema guarantees the form; the range is checked by validate_flow.
  auto parsed = parse_duration(value.get<std::string>());
  return parsed ? *parsed : Millis{-1};
}

OptionOverrides overrides_of(const json& object) {
  OptionOverrides o;
  if (object.contains("max_attempts")) o.max_attempts = object["max_attempts"].get<int>();
  if (object.contains("base_delay")) o.base_delay = duration_of(object["base_delay"]);
  if (object.contains("max_delay")) o.max_delay = duration_of(object["max_delay"]);
  if (object.contains("timeout")) o.timeout = duration_of(object["timeout"]);
  if (object.contains("priority")) o.priority = object["priority"].get<int>();
  return o;
}

// The schema guarantees the types and ranges.
HandlerLimits limits_of(const json& object) {
  HandlerLimits l;
  if (object.contains("memory_mb")) l.memory_mb = object["memory_mb"].get<std::uint64_t>();
  if (object.contains("cpu")) l.cpu = duration_of(object["cpu"]);
  if (object.contains("open_files")) l.open_files = object["open_files"].get<int>();
  if (object.contains("processes")) l.processes = object["processes"].get<int>();
  return l;
}

// An IP address as listen_addresses takes it ("*": every address).
bool is_listen_address(const std::string& text) {
  unsigned char buffer[sizeof(in6_addr)];
  return text == "*" || ::inet_pton(AF_INET, text.c_str(), buffer) == 1 ||
         ::inet_pton(AF_INET6, text.c_str(), buffer) == 1;
}

// A network as pg_hba.conf takes it: address/prefix, the prefix within the address's bits.
bool is_network(const std::string& text) {
  const auto slash = text.find('/');
  if (slash == std::string::npos || slash + 1 == text.size() || text.size() - slash > 4)
    return false;
  const std::string address = text.substr(0, slash), prefix = text.substr(slash + 1);
  if (!std::all_of(prefix.begin(), prefix.end(), [](char c) { return c >= '0' && c <= '9'; }))
    return false;
  const int bits = std::stoi(prefix);
  unsigned char buffer[sizeof(in6_addr)];
  if (::inet_pton(AF_INET, address.c_str(), buffer) == 1) return bits <= 32;
  return ::inet_pton(AF_INET6, address.c_str(), buffer) == 1 && bits <= 128;
}

// The schema guarantees the types and ranges.
Concurrency concurrency_of(const json& object) {
  Concurrency c;
  c.limit = object.at("limit").get<int>();
  if (object.contains("key")) c.key = object["key"].get<std::string>();
  return c;
}

RateLimit rate_limit_of(const json& object) {
  RateLimit r;
  r.limit = object.at("limit").get<int>();
  r.per = duration_of(object.at("per"));
  if (object.contains("key")) r.key = object["key"].get<std::string>();
  return r;
}

// A retention age: "keep", or a duration whose range validate_flow (a flow's) or
// retention_problems (the worker's) checks; -1 when it does not parse.
Millis retention_age_of(const json& value) {
  const auto text = value.get<std::string>();
  if (text == "keep") return Retention::kKeep;
  return parse_duration(text, Millis::max()).value_or(Millis{-1});
}

Retention retention_of(const json& object) {
  Retention r;
  if (object.contains("completed")) r.completed = retention_age_of(object["completed"]);
  if (object.contains("failed")) r.failed = retention_age_of(object["failed"]);
  if (object.contains("cancelled")) r.cancelled = retention_age_of(object["cancelled"]);
  return r;
}

FlowDef flow_of(const json& j, const std::string& module, const std::string& source) {
  FlowDef flow;
  flow.slug = j.at("slug").get<std::string>();
  flow.module = module;
  flow.source = source;
  flow.description = j.value("description", "");
  if (j.contains("options")) flow.options = overrides_of(j["options"]).apply(Options{});
  if (j.contains("input_schema")) flow.input_schema = j["input_schema"];
  if (j.contains("isolation")) flow.isolation = parse_isolation(j["isolation"].get<std::string>());
  if (j.contains("limits")) flow.limits = limits_of(j["limits"]);
  if (j.contains("concurrency")) flow.concurrency = concurrency_of(j["concurrency"]);
  if (j.contains("rate_limit")) flow.rate_limit = rate_limit_of(j["rate_limit"]);
  if (j.contains("retention")) flow.retention = retention_of(j["retention"]);
  for (const auto& s : j.at("steps")) {
    StepDef step;
    step.slug = s.at("slug").get<std::string>();
    step.kind = parse_step_kind(s.value("kind", "single")).value_or(StepKind::single);
    if (s.contains("depends_on")) step.depends_on = s["depends_on"].get<std::vector<std::string>>();
    step.handler = s.value("handler", "");
    // A sleep's range is checked by validate_flow, which names the value: not parsed against
    // the options' limit of 7 days.
    if (s.contains("duration"))
      step.sleep = Sleep{
          parse_duration(s["duration"].get<std::string>(), Millis::max()).value_or(Millis{-1}),
          std::nullopt};
    if (s.contains("until")) {
      if (!step.sleep) step.sleep = Sleep{};
      step.sleep->until = s["until"].get<std::string>();
    }
    // A wait (docs/flows.md#wait-steps): its timeout's range is checked by validate_flow too.
    if (s.contains("signal") || s.contains("event") || s.contains("match") ||
        s.contains("timeout") || s.contains("default")) {
      Wait w;
      if (s.contains("signal")) w.signal = s["signal"].get<std::string>();
      if (s.contains("event")) w.event = s["event"].get<std::string>();
      if (s.contains("match"))
        for (const auto& [at, from] : s["match"].items())
          w.match.emplace_back(at, from.get<std::string>());
      if (s.contains("timeout"))
        w.timeout =
            parse_duration(s["timeout"].get<std::string>(), Millis::max()).value_or(Millis{-1});
      if (s.contains("default")) w.default_output = s["default"];
      step.wait = std::move(w);
    }
    // A condition (docs/flows.md#conditional-steps): its form is checked by validate_flow, which
    // names the place of each problem in it.
    if (s.contains("when")) step.when = s["when"];
    // A child flow (docs/flows.md#child-flows).
    if (s.contains("flow") || s.contains("map"))
      step.child = Child{s.value("flow", ""), s.value("map", false)};
    if (s.value("trigger", "all") == "any") step.trigger = Trigger::any;
    if (s.contains("options")) step.options = overrides_of(s["options"]);
    if (s.contains("concurrency")) step.concurrency = concurrency_of(s["concurrency"]);
    if (s.contains("rate_limit")) step.rate_limit = rate_limit_of(s["rate_limit"]);
    flow.steps.push_back(std::move(step));
  }
  return flow;
}

// A schedule as the file declares it (its structure checked by the schema already).
tl::expected<ScheduleDef, std::string> schedule_of(const json& item) {
  try {
    ScheduleDef def;
    def.name = item.at("name").get<std::string>();
    def.flow = item.at("flow").get<std::string>();
    def.cron = item.at("cron").get<std::string>();
    def.timezone = item.value("timezone", def.timezone);
    if (item.contains("input")) def.input = item["input"];
    def.time_key = item.value("time_key", def.time_key);
    def.catch_up = item.value("catch_up", def.catch_up);
    def.catch_up_max = item.value("catch_up_max", def.catch_up_max);
    def.overlap = item.value("overlap", def.overlap);
    def.paused = item.value("paused", def.paused);
    return def;
  } catch (const json::exception& e) {
    return tl::unexpected(std::string("schedule: ") + e.what());
  }
}

// Index of the item of the list at `prefix` a JSON pointer lies in (with "/flows/":
// "/flows/3/steps/0" -> 3), or -1.
long index_under(std::string_view pointer, std::string_view prefix) {
  if (!pointer.starts_with(prefix)) return -1;
  pointer.remove_prefix(prefix.size());
  long index = 0;
  std::size_t i = 0;
  for (; i < pointer.size() && pointer[i] >= '0' && pointer[i] <= '9'; ++i)
    index = index * 10 + (pointer[i] - '0');
  return i == 0 ? -1 : index;
}

// Index of the flow a JSON pointer lies in ("/flows/3/steps/0" -> 3), or -1.
long flow_index_of(std::string_view pointer) { return index_under(pointer, "/flows/"); }

// A cycle of flows declared together that start one another through flow steps (a -> b -> a;
// a flow that starts itself is validate_flow's): one problem per cycle, at the step of its first
// flow (in declaration order) that starts the next. A cycle through flows declared elsewhere is
// stopped at run time (Child::kMaxDepth).
void report_child_cycles(const std::vector<FlowDef>& checked, const json& flows,
                         const std::function<Location(std::string_view)>& at,
                         std::vector<Diagnostic>& problems) {
  std::map<std::string, std::size_t> index;  // slug -> position in `checked`
  for (std::size_t i = 0; i < checked.size(); ++i) index.emplace(checked[i].slug, i);
  std::map<std::string, std::size_t> declared;  // slug -> its index in the document's flows
  for (std::size_t i = 0; i < flows.size(); ++i)
    if (flows[i].is_object() && flows[i].contains("slug") && flows[i]["slug"].is_string())
      declared.emplace(flows[i]["slug"].get<std::string>(), i);
  std::set<std::size_t> reported;  // flows already on a reported cycle
  for (std::size_t start = 0; start < checked.size(); ++start) {
    if (reported.contains(start)) continue;
    // Depth-first from `start` along flow steps, iterative (each flow once): a path back to start.
    std::vector<std::size_t> path{start};
    std::vector<std::size_t> next_step{0};
    std::set<std::size_t> seen{start};
    bool found = false;
    while (!path.empty() && !found) {
      const FlowDef& f = checked[path.back()];
      std::size_t& k = next_step.back();
      if (k >= f.steps.size()) {
        path.pop_back();
        next_step.pop_back();
        continue;
      }
      const StepDef& step = f.steps[k++];
      if (!step.child || step.child->flow == f.slug) continue;
      const auto it = index.find(step.child->flow);
      if (it == index.end()) continue;
      if (it->second == start) {
        found = true;
      } else if (seen.insert(it->second).second) {
        path.push_back(it->second);
        next_step.push_back(0);
      }
    }
    if (!found) continue;
    std::vector<std::string> names;
    for (const std::size_t i : path) {
      names.push_back(checked[i].slug);
      reported.insert(i);
    }
    names.push_back(checked[start].slug);
    const FlowDef& first = checked[start];
    std::size_t step_index = 0;
    for (std::size_t k = 0; k < first.steps.size(); ++k)
      if (first.steps[k].child &&
          first.steps[k].child->flow == (path.size() > 1 ? checked[path[1]].slug : first.slug))
        step_index = k;
    const auto where = declared.find(first.slug);
    problems.push_back(Diagnostic{
        at(where == declared.end()
               ? std::string()
               : fmt::format("/flows/{}/steps/{}/flow", where->second, step_index)),
        fmt::format("flow '{}': step '{}' starts flow '{}', and flows start one another in a "
                    "cycle ({}): each run would start another",
                    first.slug, first.steps[step_index].slug, names[1], fmt::join(names, " -> "))});
  }
}

// The checks every flow gets after the JSON Schema, whatever its source (a YAML file or a plugin's
// definition): the semantic rules, a slug declared once per definition, and an input_schema that
// is itself a valid JSON Schema. `flows` is the "flows" value of a document the schema accepted
// except for the flows in `broken` (indexes), which are skipped; `at` locates a JSON pointer of
// the document. Returns the flows checked; their problems are appended to `problems`.
std::vector<FlowDef> check_flows(const json& flows, const std::string& module,
                                 const std::string& source, const std::set<long>& broken,
                                 const std::function<Location(std::string_view)>& at,
                                 std::vector<Diagnostic>& problems) {
  std::vector<FlowDef> out;
  if (!flows.is_array()) return out;
  std::map<std::string, std::size_t> slug_index;
  for (std::size_t i = 0; i < flows.size(); ++i) {
    if (broken.contains(static_cast<long>(i))) continue;
    const std::string base = fmt::format("/flows/{}", i);
    FlowDef flow = flow_of(flows[i], module, source);
    auto located = [&](std::string_view pointer) { return at(base + std::string(pointer)); };
    for (auto& d : validate_flow(flow, located)) problems.push_back(std::move(d));
    if (auto [it, inserted] = slug_index.emplace(flow.slug, i); !inserted)
      problems.push_back(Diagnostic{
          at(base + "/slug"),
          fmt::format("flow slug '{}' is declared twice in this file (flows[{}] and flows[{}])",
                      flow.slug, it->second, i)});
    if (flow.input_schema) {
      if (auto compiled = detail::JsonSchema::compile(*flow.input_schema); !compiled)
        problems.push_back(Diagnostic{
            at(base + "/input_schema"),
            fmt::format("flow '{}': input_schema: {}", flow.slug, compiled.error().message)});
    }
    out.push_back(std::move(flow));
  }
  report_child_cycles(out, flows, at, problems);
  return out;
}

// The limits of a YAML document, on a parsed JSON value whose depth is already known to be bounded
// (the recursion here is at most max_depth + 1 deep): every node at most max_depth levels below
// the root, at most max_nodes nodes. The messages are those of the YAML reader.
class JsonLimitsChecker {
 public:
  explicit JsonLimitsChecker(const detail::YamlLimits& limits) : limits_(limits) {}

  std::string check(const json& value, int depth = 0) {
    if (++nodes_ > limits_.max_nodes)
      return fmt::format("the definition has more than {} nodes; refusing it", limits_.max_nodes);
    if (depth > limits_.max_depth)
      return fmt::format("nesting is deeper than {} levels", limits_.max_depth);
    if (value.is_structured())
      for (const auto& child : value)
        if (auto problem = check(child, depth + 1); !problem.empty()) return problem;
    return {};
  }

 private:
  const detail::YamlLimits& limits_;
  std::size_t nodes_ = 0;
};

}  // namespace

Result<Config> parse_config(std::string_view text, const std::filesystem::path& file) {
  const std::string name = file.string();
  auto doc = detail::parse_yaml(text, name);
  if (!doc)
    return make_error(Errc::parse, fmt::format("{}: not a valid flowreg file", name),
                      std::move(doc.error()));
  std::vector<Diagnostic> problems;
  if (!doc->value.is_object()) {
    problems.push_back(Diagnostic{doc->locate(""),
                                  "expected a mapping at the top level (keys: "
                                  "module, plugins, database, worker, server, flows, schedules)"});
    return make_error(Errc::invalid_definition, fmt::format("{}: not a valid flowreg file", name),
                      std::move(problems));
  }

  // Structure first. Flows with a structural problem are not checked further; the others get the
  // semantic checks too, so one run reports as much as can be known.
  std::set<long> broken_flows;
  std::set<long> broken_schedules;
  for (auto& p : detail::flow_file_schema().validate(doc->value)) {
    if (const long s = index_under(p.pointer, "/schedules/"); s >= 0) broken_schedules.insert(s);
    broken_flows.insert(flow_index_of(p.pointer));
    problems.push_back(Diagnostic{doc->locate(p.pointer), std::move(p.message)});
  }
  const bool broken_outside_flows = broken_flows.contains(-1);

  Config config;
  config.file = file;
  const json& root = doc->value;
  config.module = root.contains("module") && root["module"].is_string()
                      ? root["module"].get<std::string>()
                      : module_name_for_file(file);

  if (!broken_outside_flows) {
    const auto base_dir = file.has_parent_path() ? file.parent_path() : std::filesystem::path(".");
    if (auto p = root.find("plugins"); p != root.end()) {
      if (p->contains("dir")) config.plugins.dir = base_dir / (*p)["dir"].get<std::string>();
      config.plugins.watch = p->value("watch", config.plugins.watch);
      config.plugins.allow_symlinks = p->value("allow_symlinks", config.plugins.allow_symlinks);
      config.plugins.allow_unsafe = p->value("allow_unsafe", config.plugins.allow_unsafe);
      config.plugins.max_bytes = p->value("max_bytes", config.plugins.max_bytes);
      if (p->contains("scan_timeout"))
        config.plugins.scan_timeout = duration_of((*p)["scan_timeout"]);
      config.plugins.sha256_allowlist = p->value("sha256_allowlist", std::vector<std::string>{});
    } else {
      config.plugins.dir = base_dir / config.plugins.dir;
    }
    if (auto d = root.find("database"); d != root.end()) {
      config.database.url = d->value("url", "");
      if (d->contains("data_dir")) config.database.data_dir = (*d)["data_dir"].get<std::string>();
      if (auto l = d->find("listen"); l != d->end()) {
        auto& listen = config.database.listen;
        listen.addresses = l->value("addresses", std::vector<std::string>{});
        listen.port = l->value("port", listen.port);
        listen.allow = l->value("allow", std::vector<std::string>{});
        for (std::size_t i = 0; i < listen.addresses.size(); ++i)
          if (!is_listen_address(listen.addresses[i]))
            problems.push_back(Diagnostic{
                doc->locate(fmt::format("/database/listen/addresses/{}", i)),
                fmt::format("'{}' is not an IP address (nor '*')", listen.addresses[i])});
        for (std::size_t i = 0; i < listen.allow.size(); ++i)
          if (!is_network(listen.allow[i]))
            problems.push_back(
                Diagnostic{doc->locate(fmt::format("/database/listen/allow/{}", i)),
                           fmt::format("'{}' is not a network (address/prefix, such as "
                                       "10.0.0.0/24)",
                                       listen.allow[i])});
        if (l->contains("ssl_cert_file") != l->contains("ssl_key_file"))
          problems.push_back(Diagnostic{doc->locate("/database/listen"),
                                        "ssl_cert_file and ssl_key_file go together: give both "
                                        "or neither"});
        if (l->contains("ssl_cert_file"))
          listen.ssl_cert_file = base_dir / (*l)["ssl_cert_file"].get<std::string>();
        if (l->contains("ssl_key_file"))
          listen.ssl_key_file = base_dir / (*l)["ssl_key_file"].get<std::string>();
      }
    }
    // Relative to the file, as plugins.dir is: the same file used from two working directories
    // must mean the same cluster.
    config.database.data_dir = base_dir / config.database.data_dir;
    if (auto w = root.find("worker"); w != root.end()) {
      config.worker.concurrency = w->value("concurrency", config.worker.concurrency);
      config.worker.flows = w->value("flows", std::vector<std::string>{});
      config.worker.batch_size = w->value("batch_size", config.worker.batch_size);
      if (w->contains("poll_interval"))
        config.worker.poll_interval = duration_of((*w)["poll_interval"]);
      if (w->contains("shutdown_grace"))
        config.worker.shutdown_grace = duration_of((*w)["shutdown_grace"]);
      if (w->contains("lease")) config.worker.lease = duration_of((*w)["lease"]);
      config.worker.max_output_bytes = w->value("max_output_bytes", config.worker.max_output_bytes);
      if (w->contains("isolation"))
        config.worker.isolation =
            parse_isolation((*w)["isolation"].get<std::string>()).value_or(Isolation::thread);
      if (w->contains("limits")) config.worker.limits = limits_of((*w)["limits"]);
      if (auto r = w->find("retention"); r != w->end()) {
        auto& retention = config.worker.retention;
        const Retention given = retention_of(*r);
        retention.runs = given.over(retention.runs);
        if (r->contains("events")) retention.events = retention_age_of((*r)["events"]);
        if (r->contains("interval")) retention.interval = duration_of((*r)["interval"]);
        retention.enabled = r->value("enabled", retention.enabled);
        const std::pair<const char*, Millis> ages[] = {{"completed", *retention.runs.completed},
                                                       {"failed", *retention.runs.failed},
                                                       {"cancelled", *retention.runs.cancelled},
                                                       {"events", retention.events}};
        for (const auto& [key, age] : ages)
          if (auto problem = retention_age_problem(age); problem && r->contains(key))
            problems.push_back(
                Diagnostic{doc->locate(fmt::format("/worker/retention/{}", key)),
                           fmt::format("worker retention of {}: {}", key, *problem)});
        if (retention.interval < Millis{1'000} || retention.interval > RetentionSettings::kDay)
          problems.push_back(
              Diagnostic{doc->locate("/worker/retention/interval"),
                         fmt::format("worker retention interval {} is out of range 1s..1d",
                                     format_duration_days(retention.interval))});
      }
    }
    if (auto v = root.find("server"); v != root.end()) {
      config.server.listen = v->value("listen", config.server.listen);
      config.server.token = v->value("token", config.server.token);
      config.server.open_reads = v->value("open_reads", config.server.open_reads);
      config.server.max_connections = v->value("max_connections", config.server.max_connections);
      config.server.max_event_streams =
          v->value("max_event_streams", config.server.max_event_streams);
      if (v->contains("timeout")) config.server.timeout = duration_of((*v)["timeout"]);
      config.server.max_open_connections =
          v->value("max_open_connections", config.server.max_open_connections);
      config.server.allowed_hosts = v->value("allowed_hosts", std::vector<std::string>{});
      if (v->contains("tls_cert"))
        config.server.tls_cert = base_dir / (*v)["tls_cert"].get<std::string>();
      if (v->contains("tls_key"))
        config.server.tls_key = base_dir / (*v)["tls_key"].get<std::string>();
      config.server.access_log = v->value("access_log", config.server.access_log);
      if (v->contains("session_ttl")) config.server.session_ttl = duration_of((*v)["session_ttl"]);
    }
  }

  if (auto f = root.find("flows"); f != root.end())
    config.flows = check_flows(
        *f, config.module, name, broken_flows,
        [&](std::string_view pointer) { return doc->locate(pointer); }, problems);

  if (auto list = root.find("schedules"); list != root.end() && list->is_array()) {
    std::map<std::string, std::size_t> names;
    for (std::size_t i = 0; i < list->size(); ++i) {
      const json& item = (*list)[i];
      if (broken_schedules.contains(static_cast<long>(i))) continue;  // the schema said why
      const std::string base = fmt::format("/schedules/{}", i);
      auto def = schedule_of(item);
      if (!def) {
        problems.push_back(Diagnostic{doc->locate(base), def.error()});
        continue;
      }
      for (auto& p : schedule::schedule_problems(*def)) {
        const std::string at = item.contains(p.field) ? base + "/" + p.field : base;
        problems.push_back(
            Diagnostic{doc->locate(at), fmt::format("schedule '{}': {}", def->name, p.message)});
      }
      if (auto [it, inserted] = names.emplace(def->name, i); !inserted)
        problems.push_back(Diagnostic{
            doc->locate(base + "/name"),
            fmt::format("schedule name '{}' is declared twice in this file (schedules[{}] and "
                        "schedules[{}])",
                        def->name, it->second, i)});
      config.schedules.push_back(std::move(*def));
    }
  }

  if (!problems.empty()) {
    std::stable_sort(
        problems.begin(), problems.end(), [](const Diagnostic& a, const Diagnostic& b) {
          return std::pair(a.where.line, a.where.column) < std::pair(b.where.line, b.where.column);
        });
    // The message is built before `problems` is moved into the error (argument order is
    // unspecified).
    std::string message =
        fmt::format("{}: {} problem{}", name, problems.size(), problems.size() == 1 ? "" : "s");
    return make_error(Errc::invalid_definition, std::move(message), std::move(problems));
  }
  return config;
}

namespace detail {

tl::expected<PluginDefinition, std::vector<Diagnostic>> parse_plugin_definition(
    std::string_view text, const std::string& source, const YamlLimits& limits) {
  std::vector<Diagnostic> problems;
  auto fail = [&](std::string message) {
    problems.push_back(Diagnostic{Location{source}, std::move(message)});
    return tl::unexpected(std::move(problems));
  };
  // The limits of a YAML file, in the order the YAML reader applies them: size, then nesting
  // (bounded on the raw text first: parsing, walking, copying, validating and printing a JSON
  // value all recurse), then the node count.
  if (text.size() > limits.max_file_bytes)
    return fail(fmt::format("the definition is {} bytes; the limit is {} bytes", text.size(),
                            limits.max_file_bytes));
  if (nesting_beyond(text, static_cast<std::size_t>(limits.max_depth) + 1))
    return fail(fmt::format("nesting is deeper than {} levels", limits.max_depth));
  json definition;
  // Duplicate keys are refused as in YAML (a JSON parser would silently keep the last one).
  std::vector<std::set<std::string>> keys;
  std::vector<std::string> duplicates;
  try {
    definition = json::parse(text, [&](int, json::parse_event_t event, json& parsed) {
      if (event == json::parse_event_t::object_start) {
        keys.emplace_back();
      } else if (event == json::parse_event_t::object_end) {
        if (!keys.empty()) keys.pop_back();
      } else if (event == json::parse_event_t::key && !keys.empty()) {
        const std::string& key = parsed.get_ref<const std::string&>();
        if (!keys.back().insert(key).second && duplicates.size() < 10) duplicates.push_back(key);
      }
      return true;
    });
  } catch (const json::exception& e) {
    return fail(utf8_valid(fmt::format("invalid JSON: {}", e.what())));
  }
  for (const auto& key : duplicates)
    problems.push_back(
        Diagnostic{Location{source}, utf8_valid(fmt::format("duplicate key '{}'", key))});
  if (!problems.empty()) return tl::unexpected(std::move(problems));
  if (auto problem = JsonLimitsChecker(limits).check(definition); !problem.empty())
    return fail(std::move(problem));

  if (!definition.is_object() || !definition.contains("module") || !definition.contains("flows"))
    return fail("the plugin's definition lacks 'module' or 'flows'");
  PluginDefinition out;
  const json& handlers = definition.value("handlers", json::array());
  if (!handlers.is_array()) return fail("the plugin's definition: 'handlers' is not a list");
  std::set<std::string> names;
  for (const auto& h : handlers) {
    if (!h.is_string() || !is_valid_slug(h.get<std::string>()))
      problems.push_back(Diagnostic{Location{source}, fmt::format("handler name {} {}", h.dump(),
                                                                  "is not a valid identifier")});
    else if (!names.insert(h.get<std::string>()).second)
      problems.push_back(Diagnostic{
          Location{source}, fmt::format("handler '{}' is exported twice", h.get<std::string>())});
    else
      out.handlers.push_back(h.get<std::string>());
  }
  // The flow part is checked against the same schema as a YAML file, then as a YAML file's flows.
  json document = json::object();
  document["module"] = std::move(definition["module"]);
  document["flows"] = std::move(definition["flows"]);
  std::set<long> broken;
  for (auto& p : flow_file_schema().validate(document)) {
    broken.insert(flow_index_of(p.pointer));
    problems.push_back(Diagnostic{Location{source}, std::move(p.message)});
  }
  if (broken.contains(-1)) return tl::unexpected(std::move(problems));
  out.module = document["module"].get<std::string>();
  out.flows = check_flows(
      document["flows"], out.module, source, broken,
      [&](std::string_view) { return Location{source}; }, problems);
  // A step naming a handler of this module must name one it exports.
  for (const auto& flow : out.flows)
    for (const auto& step : flow.steps) {
      const auto dot = step.handler.find('.');
      if (dot == std::string::npos || step.handler.substr(0, dot) != out.module) continue;
      if (!names.contains(step.handler.substr(dot + 1)))
        problems.push_back(Diagnostic{
            Location{source}, fmt::format("flow '{}': step '{}' uses handler '{}', which this "
                                          "plugin does not export",
                                          flow.slug, step.slug, step.handler)});
    }
  if (!problems.empty()) return tl::unexpected(std::move(problems));
  return out;
}

}  // namespace detail

Result<Config> load_config(const std::filesystem::path& file) {
  auto text = detail::read_text_file(file, detail::YamlLimits{}.max_file_bytes);
  if (!text)
    return make_error(Errc::io, fmt::format("{}: cannot load", file.string()), {text.error()});
  return parse_config(*text, file);
}

}  // namespace flowreg
