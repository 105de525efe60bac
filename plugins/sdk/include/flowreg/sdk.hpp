#pragma once
// flowreg plugin SDK: the one header a plugin author includes.
//
//   #include <flowreg/sdk.hpp>
//   using flowreg::sdk::json;
//
//   static json count_words(const json& line) { ... return n; }
//
//   FLOWREG_PLUGIN(text) {                       // the module name: a slug
//     plugin.handler("count_words", count_words);
//     auto& flow = plugin.flow("word_count").description("Count words").max_attempts(3);
//     flow.step("split", "split_lines");
//     flow.map_step("count", "count_words").depends_on({"split"});
//   }
//
// Handlers take the step's JSON input and return its JSON output. To fail, throw
// flowreg::sdk::retryable_error (retried with backoff until max_attempts) or
// flowreg::sdk::permanent_error (fails the step at once). Any other exception is caught by the SDK
// and treated as retryable; nothing thrown ever crosses into the host. Handlers run concurrently on
// the host's worker threads: they must be thread-safe. A handler that waits for something outside
// calls flowreg::sdk::snooze(30s): its task runs again 30 s later, without spending an attempt.
//
// Build with flowreg_add_plugin() (CMake), which sets the flags the host requires.

#include <boost/dll/alias.hpp>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <initializer_list>
#include <map>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "flowreg/plugin_abi.h"

#define FLOWREG_SDK_STR2(x) #x
#define FLOWREG_SDK_STR(x) FLOWREG_SDK_STR2(x)

#ifndef FLOWREG_SDK_VERSION
#define FLOWREG_SDK_VERSION "0.1.0"
#endif
// Tests override these to build plugins of other ABI versions; plugin authors never do.
#ifndef FLOWREG_SDK_MAGIC
#define FLOWREG_SDK_MAGIC FLOWREG_PLUGIN_MAGIC
#endif
#ifndef FLOWREG_SDK_ABI_MAJOR
#define FLOWREG_SDK_ABI_MAJOR FLOWREG_ABI_MAJOR
#endif
#ifndef FLOWREG_SDK_ABI_MINOR
#define FLOWREG_SDK_ABI_MINOR FLOWREG_ABI_MINOR
#endif

namespace flowreg::sdk {

using json = nlohmann::json;

// The step failed; the task may be retried.
struct retryable_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// The step failed for good ("do not retry this").
struct permanent_error : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Thrown by snooze(); a handler never catches it.
struct snooze_request {
  std::chrono::milliseconds delay;
};
// Ends the handler's call and runs its task again `delay` later (1ms to 366 days), without
// spending an attempt: for polling an outside system politely (docs/flows.md#snooze).
[[noreturn]] inline void snooze(std::chrono::milliseconds delay) { throw snooze_request{delay}; }

// What a handler knows about the task it runs for.
struct Context {
  std::string run_id;  // the run (a UUID); "" outside a run (plugins check, tests)
  std::string flow;    // flow slug
  std::string step;    // step slug
  int task_index = 0;  // index of the element, for a map step; 0 otherwise
  int attempt = 1;     // 1 for the first attempt
};

using Handler = std::function<json(const json& input, const Context& context)>;

// Options shared by flows and steps; durations are strings with a unit: "250ms", "1s", "5m", "1h".
template <class Self>
class WithOptions {
 public:
  Self& max_attempts(int n) { return set("max_attempts", n); }
  Self& base_delay(std::string d) { return set("base_delay", std::move(d)); }
  Self& max_delay(std::string d) { return set("max_delay", std::move(d)); }
  Self& timeout(std::string d) { return set("timeout", std::move(d)); }
  // Claimed highest first among ready tasks, -100..100 (default 0).
  Self& priority(int n) { return set("priority", n); }
  // A concurrency limit per key: on a flow, runs active at once; on a step, tasks running at
  // once. `key`: a JSON pointer into the run's input ("/customer_id"); empty: one key.
  Self& concurrency(int limit, std::string key = {}) {
    concurrency_ = {{"limit", limit}};
    if (!key.empty()) concurrency_["key"] = std::move(key);
    return static_cast<Self&>(*this);
  }
  // A rate limit per key: at most `limit` task starts per `per` ("1s", "1m") with the same key;
  // on a flow over all its steps' tasks, on a step over its own. `key`: as concurrency's.
  Self& rate_limit(int limit, std::string per, std::string key = {}) {
    rate_limit_ = {{"limit", limit}, {"per", std::move(per)}};
    if (!key.empty()) rate_limit_["key"] = std::move(key);
    return static_cast<Self&>(*this);
  }

 protected:
  json options_ = json::object();
  json concurrency_;
  json rate_limit_;

 private:
  template <class V>
  Self& set(const char* key, V value) {
    options_[key] = std::move(value);
    return static_cast<Self&>(*this);
  }
};

class Step : public WithOptions<Step> {
 public:
  Step(std::string slug, std::string handler, bool map)
      : slug_(std::move(slug)), handler_(std::move(handler)), kind_(map ? "map" : "") {}
  // A sleep step (no handler): `field` is "duration" ("3d") or "until" (a JSON pointer to an
  // RFC 3339 time in its input).
  static Step sleep(std::string slug, const char* field, std::string value) {
    Step s(std::move(slug), "", false);
    s.kind_ = "sleep";
    s.fields_ = {{field, std::move(value)}};
    return s;
  }
  // A flow step (no handler): starts a run of flow `flow`, one per element with `map`.
  static Step child(std::string slug, std::string flow, bool map) {
    Step s(std::move(slug), "", false);
    s.kind_ = "flow";
    s.fields_ = {{"flow", std::move(flow)}};
    if (map) s.fields_["map"] = true;
    return s;
  }
  // A wait step (no handler): `field` is "signal" or "event", `name` its name.
  static Step wait(std::string slug, const char* field, std::string name) {
    Step s(std::move(slug), "", false);
    s.kind_ = "wait";
    s.fields_ = {{field, std::move(name)}};
    return s;
  }
  // A wait step on an event: it takes only an event whose data has, at `event_pointer`, the
  // value its input has at `input_pointer` ("/order_id", "/order/id"). Pairs add up (all hold).
  Step& match(std::string event_pointer, std::string input_pointer) {
    fields_["match"][std::move(event_pointer)] = std::move(input_pointer);
    return *this;
  }
  // A wait step's timeout ("2d"): then the step fails.
  Step& wait_timeout(std::string duration) {
    fields_["timeout"] = std::move(duration);
    return *this;
  }
  // A wait step's timeout ("2d"): then the step ends with `default_output` as its output.
  Step& wait_timeout(std::string duration, json default_output) {
    fields_["timeout"] = std::move(duration);
    fields_["default"] = std::move(default_output);
    return *this;
  }
  // Runs only when `condition` holds for its input, else is skipped (docs/flows.md#conditional-
  // steps): {{"at", "/charge/status"}, {"equals", "paid"}}, {"in": [...]}, {"exists": true},
  // {"all": [...]}, {"any": [...]}, {"not": {...}}.
  Step& when(json condition) {
    fields_["when"] = std::move(condition);
    return *this;
  }
  // Starts once each dependency completed or was skipped, when at least one completed (default:
  // every dependency must complete; a skipped one skips this step too).
  Step& trigger_any() {
    fields_["trigger"] = "any";
    return *this;
  }
  Step& depends_on(std::initializer_list<std::string> slugs) {
    deps_.insert(deps_.end(), slugs.begin(), slugs.end());
    return *this;
  }
  json to_json(const std::string& module) const {
    json j = {{"slug", slug_}};
    if (kind_ != "sleep" && kind_ != "wait" && kind_ != "flow")
      j["handler"] = handler_.find('.') == std::string::npos ? module + "." + handler_ : handler_;
    if (!kind_.empty()) j["kind"] = kind_;
    for (const auto& [k, v] : fields_.items()) j[k] = v;
    if (!deps_.empty()) j["depends_on"] = deps_;
    if (!options_.empty()) j["options"] = options_;
    if (!concurrency_.is_null()) j["concurrency"] = concurrency_;
    if (!rate_limit_.is_null()) j["rate_limit"] = rate_limit_;
    return j;
  }

 private:
  std::string slug_, handler_, kind_;
  json fields_ = json::object();  // a sleep's, a wait's (duration, signal, ...), when, trigger
  std::vector<std::string> deps_;
};

class Flow : public WithOptions<Flow> {
 public:
  explicit Flow(std::string slug) : slug_(std::move(slug)) {}
  Flow& description(std::string text) {
    description_ = std::move(text);
    return *this;
  }
  Flow& input_schema(json schema) {
    input_schema_ = std::move(schema);
    return *this;
  }
  // Where its handlers run in a worker: "thread" or "process" (docs/plugins.md, "Isolation").
  Flow& isolation(std::string where) {
    isolation_ = std::move(where);
    return *this;
  }
  // What one handler process may use: {"memory_mb": 256, "cpu": "10s", "open_files": 64,
  // "processes": 32} (any of them).
  Flow& limits(json limits) {
    limits_ = std::move(limits);
    return *this;
  }
  // How long its ended runs are kept (docs/operations.md#retention): {"completed": "1d",
  // "failed": "90d", "cancelled": "keep"} (any of them; the others: the worker's default).
  Flow& retention(json retention) {
    retention_ = std::move(retention);
    return *this;
  }
  // `handler` is a handler of this plugin ("count_words") or of another module
  // ("text.count_words").
  Step& step(std::string slug, std::string handler) {
    return steps_.emplace_back(std::move(slug), std::move(handler), false);
  }
  Step& map_step(std::string slug, std::string handler) {
    return steps_.emplace_back(std::move(slug), std::move(handler), true);
  }
  // A sleep step (docs/flows.md#sleep-steps): ends `duration` ("10m", "3d") after it starts,
  // holding no worker while it waits.
  Step& sleep_step(std::string slug, std::string duration) {
    return steps_.emplace_back(Step::sleep(std::move(slug), "duration", std::move(duration)));
  }
  // A sleep step until the RFC 3339 time at `pointer` in its input ("/order/remind_at").
  Step& sleep_until_step(std::string slug, std::string pointer) {
    return steps_.emplace_back(Step::sleep(std::move(slug), "until", std::move(pointer)));
  }
  // A wait step (docs/flows.md#wait-steps): ends when signal `name` is sent to its run, its data
  // the step's output; with .wait_timeout(...) it fails or takes a default then.
  Step& wait_signal_step(std::string slug, std::string name) {
    return steps_.emplace_back(Step::wait(std::move(slug), "signal", std::move(name)));
  }
  // A flow step (docs/flows.md#child-flows): starts a run of flow `flow` with its input, waits
  // for it holding no worker, and ends with its end: its output the child run's, or failed.
  Step& flow_step(std::string slug, std::string flow) {
    return steps_.emplace_back(Step::child(std::move(slug), std::move(flow), false));
  }
  // The same, one child run per element of its input array; its output their outputs in order.
  Step& flow_map_step(std::string slug, std::string flow) {
    return steps_.emplace_back(Step::child(std::move(slug), std::move(flow), true));
  }
  // A wait step ending when event `name` is sent whose data matches its input (.match(...)).
  Step& wait_event_step(std::string slug, std::string name) {
    return steps_.emplace_back(Step::wait(std::move(slug), "event", std::move(name)));
  }
  json to_json(const std::string& module) const {
    json j = {{"slug", slug_}};
    if (!description_.empty()) j["description"] = description_;
    if (!input_schema_.is_null()) j["input_schema"] = input_schema_;
    if (!options_.empty()) j["options"] = options_;
    if (!isolation_.empty()) j["isolation"] = isolation_;
    if (!limits_.is_null()) j["limits"] = limits_;
    if (!concurrency_.is_null()) j["concurrency"] = concurrency_;
    if (!rate_limit_.is_null()) j["rate_limit"] = rate_limit_;
    if (!retention_.is_null()) j["retention"] = retention_;
    j["steps"] = json::array();
    for (const auto& s : steps_) j["steps"].push_back(s.to_json(module));
    return j;
  }

 private:
  std::string slug_, description_, isolation_;
  json input_schema_, limits_, retention_;
  std::vector<Step> steps_;
};

class Plugin {
 public:
  explicit Plugin(std::string module) : module_(std::move(module)) {}
  Plugin& handler(std::string name, Handler fn) {
    handlers_.emplace_back(std::move(name), std::move(fn));
    return *this;
  }
  // A handler that does not need its context.
  Plugin& handler(std::string name, std::function<json(const json& input)> fn) {
    return handler(
        std::move(name),
        Handler([fn = std::move(fn)](const json& input, const Context&) { return fn(input); }));
  }
  template <class F>
  Plugin& handler(std::string name, F* fn) {
    return handler(std::move(name), std::function<std::remove_pointer_t<F*>>(fn));
  }
  Flow& flow(std::string slug) { return flows_.emplace_back(std::move(slug)); }

  const std::string& module() const noexcept { return module_; }
  const std::vector<std::pair<std::string, Handler>>& handlers() const noexcept {
    return handlers_;
  }
  json to_json() const {
    json j = {{"module", module_}, {"handlers", json::array()}, {"flows", json::array()}};
    for (const auto& [name, fn] : handlers_) j["handlers"].push_back(name);
    for (const auto& f : flows_) j["flows"].push_back(f.to_json(module_));
    return j;
  }

 private:
  std::string module_;
  std::vector<std::pair<std::string, Handler>> handlers_;
  std::vector<Flow> flows_;
};

namespace detail {

inline void fill(flowreg_buffer* out, const std::string& text) noexcept {
  out->data = static_cast<char*>(std::malloc(text.size() + 1));
  if (!out->data) {
    out->size = 0;
    return;
  }
  std::memcpy(out->data, text.data(), text.size());
  out->data[text.size()] = '\0';
  out->size = text.size();
}

inline std::string describe_exception(const char* what_kind) {
  try {
    throw;
  } catch (const std::exception& e) {
    return std::string(what_kind) + " threw " + typeid(e).name() + ": " + e.what();
  } catch (...) {
    return std::string(what_kind) + " threw a non-standard exception";
  }
}

// Everything the plugin exposes, built once, on the first call of its entry point.
struct State {
  Plugin plugin;
  std::string definition;  // JSON, or the error of the definition function
  bool defined = false;
  flowreg_plugin_v1 abi{};
};

inline State*& state_slot() noexcept {
  static State* state = nullptr;
  return state;
}

inline int32_t describe(flowreg_buffer* out) noexcept {
  const State* s = state_slot();
  fill(out, s->definition);
  return s->defined ? FLOWREG_OK : FLOWREG_PERMANENT;
}

inline int32_t invoke(uint32_t index, const char* input, size_t size, const char* context,
                      size_t context_size, flowreg_buffer* out) noexcept {
  const State* s = state_slot();
  if (!s->defined || index >= s->plugin.handlers().size()) {
    fill(out, "no handler with index " + std::to_string(index));
    return FLOWREG_NO_HANDLER;
  }
  const auto& [name, fn] = s->plugin.handlers()[index];
  try {
    json parsed = json::parse(input, input + size);
    Context ctx;
    if (context && context_size > 0) {
      const json c = json::parse(context, context + context_size);
      ctx.run_id = c.value("run_id", "");
      ctx.flow = c.value("flow", "");
      ctx.step = c.value("step", "");
      ctx.task_index = c.value("task_index", 0);
      ctx.attempt = c.value("attempt", 1);
    }
    fill(out, fn(parsed, ctx).dump());
    return FLOWREG_OK;
  } catch (const snooze_request& r) {
    fill(out, std::to_string(r.delay.count()));
    return FLOWREG_SNOOZE;
  } catch (const permanent_error& e) {
    fill(out, e.what());
    return FLOWREG_PERMANENT;
  } catch (const retryable_error& e) {
    fill(out, e.what());
    return FLOWREG_RETRY;
  } catch (const json::exception& e) {
    // Bad input or output JSON will not get better by retrying.
    fill(out, "handler '" + s->plugin.module() + "." + name + "': JSON error: " + e.what());
    return FLOWREG_PERMANENT;
  } catch (...) {
    fill(out, describe_exception(("handler '" + s->plugin.module() + "." + name + "'").c_str()));
    return FLOWREG_RETRY;
  }
}

inline void release(flowreg_buffer* buffer) noexcept {
  std::free(buffer->data);
  buffer->data = nullptr;
  buffer->size = 0;
}

inline const flowreg_plugin_v1* entry(const char* module, void (*define)(Plugin&)) noexcept {
  static State state{Plugin(module), {}, false, {}};
  static const bool once = [&] {
    state_slot() = &state;
    try {
      define(state.plugin);
      state.definition = state.plugin.to_json().dump();
      state.defined = true;
    } catch (...) {
      state.definition = describe_exception("the plugin's definition");
    }
    state.abi.magic = FLOWREG_SDK_MAGIC;
    state.abi.abi_major = FLOWREG_SDK_ABI_MAJOR;
    state.abi.abi_minor = FLOWREG_SDK_ABI_MINOR;
    state.abi.struct_size = sizeof(flowreg_plugin_v1);
    state.abi.fingerprint = "flowreg-sdk " FLOWREG_SDK_VERSION
                            "; "
#if defined(__clang__)
                            "clang " __clang_version__
#elif defined(__GNUC__)
                            "gcc " __VERSION__
#endif
#if defined(_GLIBCXX_RELEASE)
                            "; libstdc++ " FLOWREG_SDK_STR(_GLIBCXX_RELEASE)
#endif
        ;
    state.abi.describe = &describe;
    state.abi.invoke = &invoke;
    state.abi.release = &release;
    return true;
  }();
  (void)once;
  return &state.abi;
}

}  // namespace detail
}  // namespace flowreg::sdk

// Defines the plugin of module `module` (a slug): write the body as a function of `plugin`.
#define FLOWREG_PLUGIN(module)                                          \
  static void flowreg_sdk_define(::flowreg::sdk::Plugin& plugin);       \
  static const flowreg_plugin_v1* flowreg_sdk_entry() noexcept {        \
    return ::flowreg::sdk::detail::entry(#module, &flowreg_sdk_define); \
  }                                                                     \
  BOOST_DLL_ALIAS_SECTIONED(flowreg_sdk_entry, flowreg_plugin, flowreg) \
  static void flowreg_sdk_define([[maybe_unused]] ::flowreg::sdk::Plugin& plugin)
