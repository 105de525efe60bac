#include "flowreg/validate.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <set>
#include <unordered_map>
#include <unordered_set>

#include "util/strings.hpp"

namespace flowreg {

std::string slug_problem(std::string_view slug) {
  if (slug.empty()) return "must not be empty";
  if (slug.size() > kMaxSlugLength)
    return fmt::format("is {} characters long; the limit is {}", slug.size(), kMaxSlugLength);
  if (!(slug[0] >= 'a' && slug[0] <= 'z')) return "must start with a lowercase letter";
  for (std::size_t i = 0; i < slug.size(); ++i) {
    const char c = slug[i];
    const bool ok = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
    if (ok) continue;
    // The whole character, not its first byte: the message must stay valid UTF-8.
    std::size_t length = 1;
    while (length < 4 && i + length < slug.size() &&
           (static_cast<unsigned char>(slug[i + length]) & 0xC0) == 0x80)
      ++length;
    return fmt::format("contains '{}'; only lowercase letters, digits and '_' are allowed",
                       c == '\0' ? std::string("\\0") : detail::utf8_valid(slug.substr(i, length)));
  }
  return {};
}

std::optional<std::string> retention_age_problem(Millis age) {
  if (age == Retention::kKeep || (age >= Millis{1'000} && age <= Retention::kMaxAge))
    return std::nullopt;
  if (age < Millis{0}) return std::string("is too long: it is 1s..3660d, or keep");
  return fmt::format("{} is out of range 1s..3660d (or keep)", format_duration_days(age));
}

bool is_valid_slug(std::string_view slug) noexcept {
  if (slug.empty() || slug.size() > kMaxSlugLength) return false;
  if (!(slug[0] >= 'a' && slug[0] <= 'z')) return false;
  return std::all_of(slug.begin(), slug.end(), [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_';
  });
}

bool is_valid_handler_name(std::string_view handler) noexcept {
  const auto dot = handler.find('.');
  if (dot == std::string_view::npos) return false;
  return is_valid_slug(handler.substr(0, dot)) && is_valid_slug(handler.substr(dot + 1));
}

namespace {

class Checker {
 public:
  Checker(const FlowDef& flow, const Locator& locate) : flow_(flow), locate_(locate) {}

  std::vector<Diagnostic> run() {
    const std::string flow_name = flow_.slug.empty() ? std::string("<unnamed>") : flow_.slug;
    prefix_ = fmt::format("flow '{}': ", flow_name);
    check_slug("/slug", "flow slug", flow_.slug);
    check_slug("/module", "module name", flow_.module);
    if (flow_.description.size() > kMaxDescriptionLength)
      report("/description", fmt::format("description is {} characters long; the limit is {}",
                                         flow_.description.size(), kMaxDescriptionLength));
    check_options("/options", flow_.options, "");
    if (flow_.concurrency) check_concurrency("/concurrency", *flow_.concurrency, "");
    if (flow_.rate_limit) check_rate_limit("/rate_limit", *flow_.rate_limit, "");
    check_retention();
    if (flow_.steps.empty()) report("/steps", "has no steps; a flow needs at least one");
    if (flow_.steps.size() > kMaxSteps)
      report("/steps", fmt::format("has {} steps; the limit is {}", flow_.steps.size(), kMaxSteps));
    check_steps();
    check_cycles();
    return std::move(out_);
  }

 private:
  void report(const std::string& pointer, std::string message) {
    Location where = locate_ ? locate_(pointer) : Location{flow_.source, 0, 0};
    out_.push_back(Diagnostic{std::move(where), prefix_ + std::move(message)});
  }

  void check_slug(const std::string& pointer, std::string_view what, std::string_view value) {
    if (auto problem = slug_problem(value); !problem.empty())
      report(pointer, fmt::format("{} '{}' {}", what, value, problem));
  }

  // Checks `o`. For a step (`own` set), only the problems that involve an option the step sets
  // itself: what it inherits from the flow was reported once, on the flow.
  void check_options(const std::string& pointer, const Options& o, std::string_view step,
                     const OptionOverrides* own = nullptr) {
    const std::string who = step.empty() ? std::string() : fmt::format("step '{}': ", step);
    const bool attempts_own = !own || own->max_attempts;
    const bool base_own = !own || own->base_delay;
    const bool max_own = !own || own->max_delay;
    const bool timeout_own = !own || own->timeout;
    const bool priority_own = !own || own->priority;
    if (attempts_own &&
        (o.max_attempts < Options::kMinAttempts || o.max_attempts > Options::kMaxAttempts))
      report(pointer + "/max_attempts",
             fmt::format("{}max_attempts {} is out of range {}..{}", who, o.max_attempts,
                         Options::kMinAttempts, Options::kMaxAttempts));
    auto check_duration = [&](const char* name, bool is_own, Millis value, Millis min) {
      if (is_own && (value < min || value > Options::kMaxDuration))
        report(pointer + "/" + name,
               fmt::format("{}{} {} is out of range {}..{}", who, name, format_duration(value),
                           format_duration(min), format_duration(Options::kMaxDuration)));
    };
    if (priority_own && (o.priority < Options::kMinPriority || o.priority > Options::kMaxPriority))
      report(pointer + "/priority",
             fmt::format("{}priority {} is out of range {}..{}", who, o.priority,
                         Options::kMinPriority, Options::kMaxPriority));
    check_duration("base_delay", base_own, o.base_delay, Millis{0});
    check_duration("max_delay", max_own, o.max_delay, Millis{0});
    check_duration("timeout", timeout_own, o.timeout, Millis{1});
    if ((base_own || max_own) && o.max_delay < o.base_delay)
      report(pointer + "/max_delay",
             fmt::format("{}max_delay {} is shorter than base_delay {}", who,
                         format_duration(o.max_delay), format_duration(o.base_delay)));
  }

  // A limit in range, a key that is a JSON pointer (RFC 6901).
  void check_concurrency(const std::string& pointer, const Concurrency& c, std::string_view step) {
    const std::string who = step.empty() ? std::string() : fmt::format("step '{}': ", step);
    if (c.limit < 1 || c.limit > Concurrency::kMaxLimit)
      report(pointer + "/limit", fmt::format("{}concurrency limit {} is out of range 1..{}", who,
                                             c.limit, Concurrency::kMaxLimit));
    if (c.key) check_key(pointer + "/key", who + "concurrency key", *c.key);
  }

  // Each age of the flow's retention keep, or in range.
  void check_retention() {
    const std::pair<const char*, const std::optional<Millis>*> ages[] = {
        {"completed", &flow_.retention.completed},
        {"failed", &flow_.retention.failed},
        {"cancelled", &flow_.retention.cancelled}};
    for (const auto& [status, age] : ages)
      if (*age)
        if (auto problem = retention_age_problem(**age))
          report(fmt::format("/retention/{}", status),
                 fmt::format("retention of {} runs: {}", status, *problem));
  }

  // A limit and a period in range, a key that is a JSON pointer.
  void check_rate_limit(const std::string& pointer, const RateLimit& r, std::string_view step) {
    const std::string who = step.empty() ? std::string() : fmt::format("step '{}': ", step);
    if (r.limit < 1 || r.limit > RateLimit::kMaxLimit)
      report(pointer + "/limit", fmt::format("{}rate limit {} is out of range 1..{}", who, r.limit,
                                             RateLimit::kMaxLimit));
    if (r.per < Millis{1} || r.per > RateLimit::kMaxPer)
      report(pointer + "/per",
             fmt::format("{}rate limit period {} is out of range 1ms..{}", who,
                         format_duration(r.per), format_duration(RateLimit::kMaxPer)));
    if (r.key) check_key(pointer + "/key", who + "rate limit key", *r.key);
  }

  void check_key(const std::string& pointer, const std::string& what, const std::string& key) {
    std::string problem;
    if (key.size() > Concurrency::kMaxKeyLength)
      problem =
          fmt::format("is {} bytes long; the limit is {}", key.size(), Concurrency::kMaxKeyLength);
    else if (!key.empty() && key.front() != '/')
      problem = "is not a JSON pointer: it must be empty or start with '/' (/customer_id)";
    else
      for (std::size_t i = 0; i < key.size(); ++i)
        if (key[i] == '~' && (i + 1 == key.size() || (key[i + 1] != '0' && key[i + 1] != '1'))) {
          problem = "is not a JSON pointer: '~' must be followed by 0 (for ~) or 1 (for /)";
          break;
        }
    if (!problem.empty()) report(pointer, fmt::format("{} '{}' {}", what, key, problem));
  }

  // The rate limit over a step's tasks and the concurrency limit over them (migration 0024): the
  // claim reads one key per task, so a keyed rate limit shares the concurrency limit's key; and a
  // flow's concurrency limit, held by a run from its first task on, takes no rate limit over its
  // root steps' tasks.
  void check_rate_with_concurrency(const std::string& at, const StepDef& step) {
    const bool root = step.depends_on.empty();
    const RateLimit* rate = step.rate_limit    ? &*step.rate_limit
                            : flow_.rate_limit ? &*flow_.rate_limit
                                               : nullptr;
    if (!rate) return;
    const std::string where = step.rate_limit ? at + "/rate_limit" : std::string("/rate_limit");
    if (root && !step.concurrency && flow_.concurrency) {
      report(where, fmt::format("step '{}': a rate limit over a root step's tasks cannot be "
                                "combined with its flow's concurrency limit (not supported); put "
                                "the rate limit on a later step, or the concurrency limit on the "
                                "step",
                                step.slug));
      return;
    }
    const Concurrency* conc = step.concurrency ? &*step.concurrency : nullptr;
    if (conc && rate->key && rate->key != conc->key)
      report(where + "/key",
             fmt::format("step '{}': the rate limit's key '{}' is not its concurrency limit's "
                         "key ({}): a rate limit over tasks with a concurrency limit has the "
                         "same key, or none (one bucket)",
                         step.slug, *rate->key,
                         conc->key ? "'" + *conc->key + "'" : std::string("none: one key")));
  }

  // A step of a kind that runs no handler (sleep, wait): no handler, and nothing that only a
  // handler's tasks have.
  void check_no_handler(const std::string& at, const StepDef& step, std::string_view kind) {
    if (!step.handler.empty())
      report(at + "/handler",
             fmt::format("step '{}' is a {} step and runs no handler; remove handler '{}'",
                         step.slug, kind, step.handler));
    if (step.concurrency || step.rate_limit)
      report(at + (step.concurrency ? "/concurrency" : "/rate_limit"),
             fmt::format("step '{}' is a {} step: it runs no handler, so it takes no "
                         "concurrency or rate limit",
                         step.slug, kind));
  }

  // A sleep step (docs/flows.md#sleep-steps): no handler, nothing that only a handler's tasks
  // have, and exactly one of a duration in range or a pointer to the time it sleeps until.
  void check_sleep(const std::string& at, const StepDef& step) {
    if (step.kind != StepKind::sleep) {
      report(at + "/kind", fmt::format("step '{}' has a sleep ({}) but is not a sleep step: give "
                                       "it kind: sleep",
                                       step.slug, step.sleep->duration ? "duration" : "until"));
      return;
    }
    check_no_handler(at, step, "sleep");
    const bool duration = step.sleep && step.sleep->duration;
    const bool until = step.sleep && step.sleep->until;
    if (duration == until) {
      report(at, fmt::format("step '{}' is a sleep step: give it either duration (3d) or until "
                             "(a JSON pointer to an RFC 3339 time in its input){}",
                             step.slug, duration ? ", not both" : ""));
      return;
    }
    if (duration &&
        (*step.sleep->duration < Millis{1} || *step.sleep->duration > Sleep::kMaxDuration))
      report(at + "/duration", fmt::format("step '{}': sleep duration {} is out of range 1ms..{}",
                                           step.slug, format_duration_days(*step.sleep->duration),
                                           format_duration_days(Sleep::kMaxDuration)));
    if (until) {
      check_key(at + "/until", fmt::format("step '{}': until", step.slug), *step.sleep->until);
      check_input_pointer(at + "/until", step, "until", *step.sleep->until, "a time");
    }
  }

  // A flow step (docs/flows.md#child-flows): no handler, nothing that only a handler's tasks have,
  // the slug of the flow it starts, which is not its own (a cycle through other flows is found
  // where they are read together, and stopped at run time at Child::kMaxDepth).
  void check_child(const std::string& at, const StepDef& step) {
    if (step.kind != StepKind::flow) {
      report(at + "/kind",
             fmt::format("step '{}' has {} but is not a flow step: give it kind: flow{}", step.slug,
                         step.child && !step.child->flow.empty() ? "flow" : "map",
                         step.child && step.child->flow.empty()
                             ? " (a map over a handler is kind: map)"
                             : ""));
      return;
    }
    check_no_handler(at, step, "flow");
    const Child c = step.child.value_or(Child{});
    if (c.flow.empty()) {
      report(at, fmt::format("step '{}' is a flow step: give it flow, the slug of the flow whose "
                             "run it starts",
                             step.slug));
      return;
    }
    check_slug(at + "/flow", fmt::format("step '{}': flow", step.slug), c.flow);
    if (c.flow == flow_.slug)
      report(at + "/flow", fmt::format("step '{}' starts flow '{}', its own: a flow cannot start "
                                       "itself (each run would start another)",
                                       step.slug, c.flow));
  }

  // A pointer into a step's input (a sleep's until, a wait's match): past a root step, its input
  // is {dependency: output}, so the pointer starts at one of them.
  void check_input_pointer(const std::string& at, const StepDef& step, std::string_view what,
                           const std::string& pointer, std::string_view wanted) {
    if (step.depends_on.empty()) return;
    if (!pointer.starts_with('/')) {
      report(at, fmt::format("step '{}': {} '{}' is its whole input, {{dependency: output}}, "
                             "not {}: point into one of its dependencies ({})",
                             step.slug, what, pointer, wanted, fmt::join(step.depends_on, ", ")));
      return;
    }
    std::string first = pointer.substr(1, pointer.find('/', 1) - 1);
    for (std::size_t i = 0; (i = first.find("~1", i)) != std::string::npos; ++i)
      first.replace(i, 2, "/");
    for (std::size_t i = 0; (i = first.find("~0", i)) != std::string::npos; ++i)
      first.replace(i, 2, "~");
    if (std::find(step.depends_on.begin(), step.depends_on.end(), first) == step.depends_on.end())
      report(at, fmt::format("step '{}': {} '{}' points into '{}', which is not one of its "
                             "dependencies ({}): its input is {{dependency: output}}",
                             step.slug, what, pointer, first, fmt::join(step.depends_on, ", ")));
  }

  // A wait step (docs/flows.md#wait-steps): no handler, nothing that only a handler's tasks have,
  // exactly one of a signal or an event (a match only with an event), names that fit a path
  // segment, a match of pointers into the event's data and into its input, a timeout in range
  // and a default output only with a timeout. A signal names one wait step of its flow.
  void check_wait(const std::string& at, const StepDef& step,
                  std::unordered_map<std::string, std::string>& signals) {
    if (step.kind != StepKind::wait) {
      report(at + "/kind",
             fmt::format("step '{}' has a wait (signal, event, match, timeout or "
                         "default) but is not a wait step: give it kind: wait{}",
                         step.slug,
                         step.wait && step.wait->timeout && !step.wait->signal && !step.wait->event
                             ? " (an attempt's timeout is options: timeout)"
                             : ""));
      return;
    }
    check_no_handler(at, step, "wait");
    const Wait w = step.wait.value_or(Wait{});
    if (w.signal.has_value() == w.event.has_value()) {
      report(at, fmt::format("step '{}' is a wait step: give it either signal (a name sent to its "
                             "run) or event (a name, with match){}",
                             step.slug, w.signal ? ", not both" : ""));
      return;
    }
    const std::string& name = w.signal ? *w.signal : *w.event;
    const std::string name_at = at + (w.signal ? "/signal" : "/event");
    if (!is_valid_wait_name(name))
      report(name_at,
             fmt::format("step '{}': {} name '{}' must be 1 to {} of A-Z a-z 0-9 _ . : "
                         "-, starting with a letter or a digit",
                         step.slug, w.signal ? "signal" : "event", name, Wait::kMaxNameLength));
    if (w.signal) {
      if (auto [it, fresh] = signals.emplace(name, step.slug); !fresh)
        report(name_at, fmt::format("step '{}' waits for signal '{}', as step '{}' does: a "
                                    "signal is delivered to one wait step of its run; give "
                                    "each its own name",
                                    step.slug, name, it->second));
      if (!w.match.empty())
        report(at + "/match", fmt::format("step '{}' waits for a signal, sent to its run: a "
                                          "match is for an event",
                                          step.slug));
    }
    if (w.match.size() > Wait::kMaxMatch)
      report(at + "/match", fmt::format("step '{}': its match has {} pairs; at most {}", step.slug,
                                        w.match.size(), Wait::kMaxMatch));
    for (const auto& [event_pointer, input_pointer] : w.match) {
      const std::string pair_at = detail::pointer_append(at + "/match", event_pointer);
      check_key(pair_at, fmt::format("step '{}': match", step.slug), event_pointer);
      check_key(pair_at, fmt::format("step '{}': match '{}' reads", step.slug, event_pointer),
                input_pointer);
      check_input_pointer(pair_at, step, fmt::format("match '{}' reads", event_pointer),
                          input_pointer, "a value");
    }
    if (w.timeout && (*w.timeout < Millis{1} || *w.timeout > Wait::kMaxTimeout))
      report(at + "/timeout", fmt::format("step '{}': wait timeout {} is out of range 1ms..{}",
                                          step.slug, format_duration_days(*w.timeout),
                                          format_duration_days(Wait::kMaxTimeout)));
    if (w.default_output && !w.timeout)
      report(at + "/default",
             fmt::format("step '{}': a default output is taken when the wait times out; give it "
                         "a timeout too",
                         step.slug));
    if (w.default_output && w.default_output->dump().size() > Wait::kMaxDefaultBytes)
      report(at + "/default",
             fmt::format("step '{}': its default output is {} bytes of JSON; at most {}", step.slug,
                         w.default_output->dump().size(), Wait::kMaxDefaultBytes));
  }

  // A step's condition (docs/flows.md#conditional-steps): each node one of the forms of
  // Condition, nested at most Condition::kMaxDepth deep, Condition::kMaxNodes nodes and
  // Condition::kMaxBytes of JSON in all; each pointer into its input (past a root step, into one
  // of its dependencies). Reports the first problem of each node, at its place.
  void check_when(const std::string& at, const StepDef& step) {
    const nlohmann::json& when = *step.when;
    const std::size_t bytes = when.dump().size();
    if (bytes > Condition::kMaxBytes) {
      report(at, fmt::format("step '{}': its condition is {} bytes of JSON; at most {}", step.slug,
                             bytes, Condition::kMaxBytes));
      return;
    }
    std::size_t nodes = 0;
    check_condition(at, step, when, 1, nodes);
  }

  void check_condition(const std::string& at, const StepDef& step, const nlohmann::json& c,
                       std::size_t depth, std::size_t& nodes) {
    static constexpr std::string_view kForms =
        "{at: /pointer, equals: value}, {at, in: [values]}, {at, exists: true|false}, {all: "
        "[conditions]}, {any: [conditions]} or {not: condition}";
    if (++nodes > Condition::kMaxNodes) {
      if (nodes == Condition::kMaxNodes + 1)
        report(at, fmt::format("step '{}': its condition has more than {} parts", step.slug,
                               Condition::kMaxNodes));
      return;
    }
    if (depth > Condition::kMaxDepth) {
      report(at, fmt::format("step '{}': its condition nests deeper than {} levels", step.slug,
                             Condition::kMaxDepth));
      return;
    }
    if (!c.is_object()) {
      report(at, fmt::format("step '{}': a condition is an object, {}; got {}", step.slug, kForms,
                             detail::utf8_valid(c.dump().substr(0, 60))));
      return;
    }
    std::vector<std::string> keys;
    for (const auto& [k, v] : c.items()) keys.push_back(k);
    const auto has = [&](const char* key) { return c.contains(key); };
    const int tests = int{has("equals")} + int{has("in")} + int{has("exists")};
    const int groups = int{has("all")} + int{has("any")} + int{has("not")};
    for (const auto& k : keys)
      if (k != "at" && k != "equals" && k != "in" && k != "exists" && k != "all" && k != "any" &&
          k != "not") {
        report(detail::pointer_append(at, k),
               fmt::format("step '{}': unknown key '{}' in a condition; a condition is {}",
                           step.slug, detail::utf8_valid(k), kForms));
        return;
      }
    if (groups + tests != 1 || (groups == 1 && has("at")) || (tests == 1 && !has("at"))) {
      report(at, fmt::format("step '{}': a condition has keys {}; it must be one of {}", step.slug,
                             detail::utf8_valid(fmt::format("{}", fmt::join(keys, ", "))), kForms));
      return;
    }
    if (has("all") || has("any")) {
      const char* key = has("all") ? "all" : "any";
      const nlohmann::json& list = c[key];
      if (!list.is_array() || list.empty() || list.size() > Condition::kMaxList) {
        report(at + "/" + key, fmt::format("step '{}': {} takes a list of 1 to {} conditions",
                                           step.slug, key, Condition::kMaxList));
        return;
      }
      for (std::size_t i = 0; i < list.size(); ++i)
        check_condition(fmt::format("{}/{}/{}", at, key, i), step, list[i], depth + 1, nodes);
      return;
    }
    if (has("not")) {
      check_condition(at + "/not", step, c["not"], depth + 1, nodes);
      return;
    }
    if (!c["at"].is_string()) {
      report(at + "/at", fmt::format("step '{}': at is a JSON pointer into the step's input, "
                                     "such as /charge/status",
                                     step.slug));
      return;
    }
    const std::string pointer = c["at"].get<std::string>();
    check_key(at + "/at", fmt::format("step '{}': when at", step.slug), pointer);
    check_input_pointer(at + "/at", step, "when at", pointer, "a value");
    if (has("in") &&
        (!c["in"].is_array() || c["in"].empty() || c["in"].size() > Condition::kMaxList))
      report(at + "/in", fmt::format("step '{}': in takes a list of 1 to {} values", step.slug,
                                     Condition::kMaxList));
    if (has("exists") && !c["exists"].is_boolean())
      report(at + "/exists", fmt::format("step '{}': exists is true or false", step.slug));
  }

  void check_steps() {
    std::unordered_map<std::string_view, std::size_t> first_index;
    std::unordered_map<std::string, std::string> signals;  // name -> the step waiting for it
    for (std::size_t i = 0; i < flow_.steps.size(); ++i) {
      const StepDef& step = flow_.steps[i];
      const std::string at = fmt::format("/steps/{}", i);
      check_slug(at + "/slug", "step slug", step.slug);
      if (auto [it, inserted] = first_index.emplace(step.slug, i); !inserted && !step.slug.empty())
        report(at + "/slug", fmt::format("step slug '{}' is used twice (steps {} and {})",
                                         step.slug, it->second + 1, i + 1));
      // A sleep or wait step runs no handler (each check says what it takes instead).
      const bool sleeps = step.kind == StepKind::sleep || step.sleep;
      const bool waits = step.kind == StepKind::wait || step.wait;
      const bool starts = step.kind == StepKind::flow || step.child;
      if (sleeps) check_sleep(at, step);
      if (waits) check_wait(at, step, signals);
      if (starts) check_child(at, step);
      if (!sleeps && !waits && !starts && !is_valid_handler_name(step.handler))
        report(at + "/handler",
               fmt::format("step '{}': handler '{}' must be 'module.handler', both parts "
                           "lowercase identifiers",
                           step.slug, step.handler));
      check_options(at + "/options", step.options.apply(flow_.options), step.slug, &step.options);
      if (step.concurrency) {
        check_concurrency(at + "/concurrency", *step.concurrency, step.slug);
        // A flow's limit is held by its runs from their root steps' tasks on: a root step's own
        // limit would gate the same tasks twice.
        if (flow_.concurrency && step.depends_on.empty())
          report(at + "/concurrency",
                 fmt::format("step '{}': a root step cannot have a concurrency limit of its own "
                             "when its flow has one (the flow's limit gates its tasks); put it "
                             "on the flow, or on a later step",
                             step.slug));
      }
      if (step.rate_limit) {
        check_rate_limit(at + "/rate_limit", *step.rate_limit, step.slug);
        if (flow_.rate_limit)
          report(at + "/rate_limit",
                 fmt::format("step '{}': a step cannot have a rate limit of its own when its "
                             "flow has one (the flow's limit counts its tasks)",
                             step.slug));
      }
      if (step.kind != StepKind::sleep && step.kind != StepKind::wait &&
          step.kind != StepKind::flow)
        check_rate_with_concurrency(at, step);
      if (step.when) check_when(at + "/when", step);
      if (step.trigger == Trigger::any && step.depends_on.empty())
        report(at + "/trigger",
               fmt::format("step '{}' has trigger: any but no dependency: trigger says which of "
                           "its dependencies it needs completed",
                           step.slug));
    }
    for (std::size_t i = 0; i < flow_.steps.size(); ++i) {
      const StepDef& step = flow_.steps[i];
      const std::string at = fmt::format("/steps/{}", i);
      std::unordered_set<std::string_view> seen;
      for (std::size_t d = 0; d < step.depends_on.size(); ++d) {
        const std::string& dep = step.depends_on[d];
        const std::string dep_at = fmt::format("{}/depends_on/{}", at, d);
        if (!seen.insert(dep).second)
          report(dep_at, fmt::format("step '{}' lists dependency '{}' twice", step.slug, dep));
        else if (dep == step.slug)
          report(dep_at, fmt::format("step '{}' depends on itself", step.slug));
        else if (!first_index.contains(dep))
          report(dep_at, fmt::format("step '{}' depends on unknown step '{}'", step.slug, dep));
      }
      if ((step.kind == StepKind::map || (step.child && step.child->map)) &&
          step.depends_on.size() > 1)
        report(at + "/depends_on",
               fmt::format("map step '{}' has {} dependencies ({}); a map step takes at most one",
                           step.slug, step.depends_on.size(), fmt::join(step.depends_on, ", ")));
    }
  }

  // Reports each elementary cycle reachable by depth-first search once (up to a limit), as
  // "a -> b -> c -> a" starting from the step declared first.
  void check_cycles() {
    const std::size_t n = flow_.steps.size();
    std::unordered_map<std::string_view, std::size_t> index;
    for (std::size_t i = 0; i < n; ++i) index.emplace(flow_.steps[i].slug, i);
    std::vector<std::vector<std::size_t>> edges(n);
    for (std::size_t i = 0; i < n; ++i)
      for (const auto& dep : flow_.steps[i].depends_on)
        if (auto it = index.find(dep); it != index.end() && it->second != i)
          edges[i].push_back(it->second);

    enum class Color { white, gray, black };
    std::vector<Color> color(n, Color::white);
    std::vector<std::size_t> stack;
    std::set<std::vector<std::size_t>> reported;
    constexpr std::size_t kMaxCyclesReported = 10;

    // Iterative DFS (a flow may have 1000 steps in a chain).
    struct Frame {
      std::size_t node;
      std::size_t next_edge;
    };
    for (std::size_t root = 0; root < n; ++root) {
      if (color[root] != Color::white) continue;
      std::vector<Frame> frames{{root, 0}};
      color[root] = Color::gray;
      stack.push_back(root);
      while (!frames.empty()) {
        Frame& f = frames.back();
        if (f.next_edge == edges[f.node].size()) {
          color[f.node] = Color::black;
          stack.pop_back();
          frames.pop_back();
          continue;
        }
        const std::size_t to = edges[f.node][f.next_edge++];
        if (color[to] == Color::white) {
          color[to] = Color::gray;
          stack.push_back(to);
          frames.push_back({to, 0});
        } else if (color[to] == Color::gray && reported.size() < kMaxCyclesReported) {
          auto start = std::find(stack.begin(), stack.end(), to);
          std::vector<std::size_t> cycle(start, stack.end());
          // Edges point from a step to its dependency; show the flow of data instead
          // (dependency -> dependant), starting at the earliest declared step.
          std::reverse(cycle.begin(), cycle.end());
          std::rotate(cycle.begin(), std::min_element(cycle.begin(), cycle.end()), cycle.end());
          if (reported.insert(cycle).second) {
            std::string path;
            for (std::size_t s : cycle) path += flow_.steps[s].slug + " -> ";
            path += flow_.steps[cycle.front()].slug;
            report(fmt::format("/steps/{}/depends_on", cycle.front()),
                   fmt::format("dependency cycle {}", path));
          }
        }
      }
    }
  }

  const FlowDef& flow_;
  const Locator& locate_;
  std::string prefix_;
  std::vector<Diagnostic> out_;
};

}  // namespace

std::vector<Diagnostic> validate_flow(const FlowDef& flow, const Locator& locate) {
  return Checker(flow, locate).run();
}

}  // namespace flowreg
