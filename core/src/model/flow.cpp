#include "flowreg/flow.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <unordered_map>

#include "util/sha256.hpp"

namespace flowreg {

std::string_view to_string(StepKind kind) noexcept {
  switch (kind) {
    case StepKind::map:
      return "map";
    case StepKind::sleep:
      return "sleep";
    case StepKind::wait:
      return "wait";
    case StepKind::flow:
      return "flow";
    case StepKind::single:
      break;
  }
  return "single";
}

std::optional<StepKind> parse_step_kind(std::string_view text) noexcept {
  if (text == "single") return StepKind::single;
  if (text == "map") return StepKind::map;
  if (text == "sleep") return StepKind::sleep;
  if (text == "wait") return StepKind::wait;
  if (text == "flow") return StepKind::flow;
  return std::nullopt;
}

std::string_view to_string(Trigger trigger) noexcept {
  return trigger == Trigger::any ? "any" : "all";
}

std::string shown_pointer(const std::string& pointer) {
  const bool plain = std::none_of(pointer.begin(), pointer.end(), [](char ch) {
    return static_cast<unsigned char>(ch) < 0x20 || ch == 0x7f;
  });
  return plain ? pointer : nlohmann::json(pointer).dump();
}

namespace {

void append_condition(std::string& out, const nlohmann::json& c, bool nested) {
  if (!c.is_object()) return;
  if (c.contains("all") || c.contains("any")) {
    const bool all = c.contains("all");
    const auto& list = c[all ? "all" : "any"];
    if (!list.is_array()) return;
    if (nested && list.size() > 1) out += '(';
    for (std::size_t i = 0; i < list.size(); ++i) {
      if (i > 0) out += all ? " and " : " or ";
      append_condition(out, list[i], true);
    }
    if (nested && list.size() > 1) out += ')';
    return;
  }
  if (c.contains("not")) {
    out += "not ";
    const auto& inner = c["not"];
    const bool group = inner.is_object() && (inner.contains("all") || inner.contains("any"));
    out += group ? "" : "(";
    append_condition(out, inner, true);
    out += group ? "" : ")";
    return;
  }
  const std::string at =
      c.contains("at") && c["at"].is_string() ? c["at"].get<std::string>() : std::string();
  const std::string place = at.empty() ? std::string("the input") : shown_pointer(at);
  if (c.contains("equals"))
    out += place + " equals " + c["equals"].dump();
  else if (c.contains("in"))
    out += place + " in " + c["in"].dump();
  else if (c.contains("exists"))
    out += place + (c["exists"] == true ? " exists" : " is missing");
}

}  // namespace

std::string condition_text(const nlohmann::json& condition) {
  std::string out;
  append_condition(out, condition, false);
  return out;
}

bool is_valid_wait_name(std::string_view name) noexcept {
  if (name.empty() || name.size() > Wait::kMaxNameLength) return false;
  const auto alnum = [](char c) {
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
  };
  if (!alnum(name.front())) return false;
  return std::all_of(name.begin(), name.end(), [&](char c) {
    return alnum(c) || c == '_' || c == '.' || c == ':' || c == '-';
  });
}

std::string_view to_string(Isolation isolation) noexcept {
  return isolation == Isolation::process ? "process" : "thread";
}

std::optional<Isolation> parse_isolation(std::string_view text) noexcept {
  if (text == "thread") return Isolation::thread;
  if (text == "process") return Isolation::process;
  return std::nullopt;
}

HandlerLimits HandlerLimits::over(const HandlerLimits& base) const noexcept {
  HandlerLimits out = *this;
  if (out.memory_mb == 0) out.memory_mb = base.memory_mb;
  if (out.cpu == Millis{0}) out.cpu = base.cpu;
  if (out.open_files == 0) out.open_files = base.open_files;
  if (out.processes == 0) out.processes = base.processes;
  return out;
}

const StepDef* FlowDef::find_step(std::string_view step_slug) const noexcept {
  for (const auto& step : steps)
    if (step.slug == step_slug) return &step;
  return nullptr;
}

std::string flow_version(const FlowDef& flow) {
  // Canonical text of the shape: steps sorted by slug, each with its kind, handler and sorted
  // dependencies. Separators cannot occur inside identifiers, so distinct shapes give distinct
  // text.
  std::vector<const StepDef*> steps;
  steps.reserve(flow.steps.size());
  for (const auto& s : flow.steps) steps.push_back(&s);
  std::sort(steps.begin(), steps.end(),
            [](const StepDef* a, const StepDef* b) { return a->slug < b->slug; });
  std::string text = "flowreg-shape-v1\n";
  for (const StepDef* s : steps) {
    std::vector<std::string> deps = s->depends_on;
    std::sort(deps.begin(), deps.end());
    text += s->slug;
    text += '|';
    text += to_string(s->kind);
    text += '|';
    text += s->handler;
    text += '|';
    for (const auto& d : deps) {
      text += d;
      text += ',';
    }
    // A sleep (added later: a shape without one hashes as it did before).
    if (s->sleep && s->sleep->duration)
      text += fmt::format("|sleep {}ms", s->sleep->duration->count());
    if (s->sleep && s->sleep->until)
      text += fmt::format("|until {}:{}", s->sleep->until->size(), *s->sleep->until);
    // A wait (added later, as a sleep): each part with its length, so that no text in it can be
    // read as another part.
    if (s->wait) {
      const Wait& w = *s->wait;
      const auto part = [&](std::string_view name, std::string_view value) {
        text += fmt::format("|{} {}:{}", name, value.size(), value);
      };
      if (w.signal) part("signal", *w.signal);
      if (w.event) part("event", *w.event);
      for (const auto& [at, from] : w.match) {
        part("match", at);
        part("from", from);
      }
      if (w.timeout) text += fmt::format("|timeout {}ms", w.timeout->count());
      if (w.default_output) part("default", w.default_output->dump());
    }
    // A condition and a trigger (added later, as a sleep).
    if (s->when) {
      const std::string c = s->when->dump();
      text += fmt::format("|when {}:{}", c.size(), c);
    }
    if (s->trigger == Trigger::any) text += "|trigger any";
    // A child flow (added later, as a sleep).
    if (s->child)
      text += fmt::format("|flow {}:{}{}", s->child->flow.size(), s->child->flow,
                          s->child->map ? " map" : "");
    text += '\n';
  }
  return detail::sha256_hex(text).substr(0, 16);
}

std::vector<const StepDef*> topological_order(const FlowDef& flow) {
  // Kahn's algorithm, always taking the earliest declared ready step.
  std::unordered_map<std::string_view, std::size_t> index;
  for (std::size_t i = 0; i < flow.steps.size(); ++i) index.emplace(flow.steps[i].slug, i);
  std::vector<std::size_t> remaining(flow.steps.size());
  std::vector<std::vector<std::size_t>> dependants(flow.steps.size());
  for (std::size_t i = 0; i < flow.steps.size(); ++i) {
    for (const auto& dep : flow.steps[i].depends_on) {
      auto it = index.find(dep);
      if (it == index.end()) continue;
      ++remaining[i];
      dependants[it->second].push_back(i);
    }
  }
  std::vector<const StepDef*> out;
  out.reserve(flow.steps.size());
  std::vector<bool> done(flow.steps.size(), false);
  while (out.size() < flow.steps.size()) {
    std::size_t next = flow.steps.size();
    for (std::size_t i = 0; i < flow.steps.size(); ++i) {
      if (!done[i] && remaining[i] == 0) {
        next = i;
        break;
      }
    }
    if (next == flow.steps.size()) break;  // a cycle: the precondition was violated
    done[next] = true;
    out.push_back(&flow.steps[next]);
    for (std::size_t d : dependants[next]) --remaining[d];
  }
  return out;
}

}  // namespace flowreg
