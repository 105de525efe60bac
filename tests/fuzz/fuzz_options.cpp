// Durations and execution options (core/src/model): parse_duration/format_duration, option
// overrides inherited step <- flow <- defaults, and the rules validate_flow applies to them.
// Properties: a parsed duration is within 0..Options::kMaxDuration and survives
// format -> parse unchanged; a flow that validates gives every step options within the documented
// ranges, can be ordered, and has a version that does not depend on the order it was written in.

#include <fuzzer/FuzzedDataProvider.h>

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <limits>
#include <optional>
#include <string>
#include <unordered_map>

#include "flowreg/flow.hpp"
#include "flowreg/options.hpp"
#include "flowreg/validate.hpp"
#include "support.hpp"

namespace {

using flowreg::Millis;
using flowreg::Options;

// A duration as a user writes it (text through parse_duration), or any value at all, as a bug in
// a loader could produce.
std::optional<Millis> consume_duration(FuzzedDataProvider& in) {
  if (!in.ConsumeBool()) return std::nullopt;
  if (in.ConsumeBool()) {
    auto parsed = flowreg::parse_duration(in.ConsumeRandomLengthString(24));
    return parsed ? parsed : std::optional<Millis>(Millis{-1});
  }
  return Millis{in.ConsumeIntegral<std::int64_t>()};
}

flowreg::OptionOverrides consume_overrides(FuzzedDataProvider& in) {
  flowreg::OptionOverrides o;
  if (in.ConsumeBool()) o.max_attempts = in.ConsumeIntegral<int>();
  o.base_delay = consume_duration(in);
  o.max_delay = consume_duration(in);
  o.timeout = consume_duration(in);
  return o;
}

void check_duration_text(const std::string& text) {
  const auto parsed = flowreg::parse_duration(text);
  if (!parsed) return;
  FUZZ_CHECK(parsed->count() >= 0 && *parsed <= Options::kMaxDuration);
  FUZZ_CHECK(flowreg::parse_duration(flowreg::format_duration(*parsed)) == parsed);
}

void check_duration_value(std::int64_t ms) {
  const auto back = flowreg::parse_duration(flowreg::format_duration(Millis{ms}));
  if (ms >= 0 && Millis{ms} <= Options::kMaxDuration)
    FUZZ_CHECK(back == Millis{ms});
  else
    FUZZ_CHECK(!back);
}

bool in_range(const Options& o) {
  return o.max_attempts >= Options::kMinAttempts && o.max_attempts <= Options::kMaxAttempts &&
         o.base_delay >= Millis{0} && o.max_delay >= o.base_delay &&
         o.max_delay <= Options::kMaxDuration && o.timeout >= Millis{1} &&
         o.timeout <= Options::kMaxDuration;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 4096) return 0;
  FuzzedDataProvider in(data, size);
  check_duration_text(in.ConsumeRandomLengthString(32));
  check_duration_value(in.ConsumeIntegral<std::int64_t>());
  FUZZ_CHECK(flowreg::parse_step_kind(flowreg::to_string(flowreg::StepKind::map)) ==
             flowreg::StepKind::map);

  flowreg::FlowDef flow;
  flow.slug = "fuzzed";
  flow.module = "m";
  flow.options = consume_overrides(in).apply(Options{});
  const std::size_t steps = in.ConsumeIntegralInRange<std::size_t>(1, 8);
  for (std::size_t i = 0; i < steps; ++i) {
    flowreg::StepDef step;
    step.slug = in.ConsumeBool() ? std::string(1, static_cast<char>('a' + i))
                                 : in.ConsumeRandomLengthString(8);
    step.kind = in.ConsumeBool() ? flowreg::StepKind::map : flowreg::StepKind::single;
    const auto deps = in.ConsumeIntegral<std::uint8_t>();
    for (std::size_t d = 0; d < 8; ++d)
      if (deps & (1u << d)) step.depends_on.emplace_back(1, static_cast<char>('a' + d));
    step.handler = in.ConsumeBool() ? "m.h" : in.ConsumeRandomLengthString(12);
    step.options = consume_overrides(in);
    flow.steps.push_back(std::move(step));
  }

  if (!flowreg::validate_flow(flow).empty()) return 0;
  FUZZ_CHECK(in_range(flow.options));
  for (const auto& step : flow.steps) FUZZ_CHECK(in_range(flow.step_options(step)));
  const auto order = flowreg::topological_order(flow);
  FUZZ_CHECK(order.size() == flow.steps.size());
  std::unordered_map<std::string, std::size_t> position;
  for (std::size_t i = 0; i < order.size(); ++i) position.emplace(order[i]->slug, i);
  for (const auto* step : order)
    for (const auto& dep : step->depends_on) FUZZ_CHECK(position.at(dep) < position.at(step->slug));
  // The version is a function of the shape, not of the order steps and dependencies are written.
  flowreg::FlowDef reordered = flow;
  std::reverse(reordered.steps.begin(), reordered.steps.end());
  for (auto& step : reordered.steps) std::reverse(step.depends_on.begin(), step.depends_on.end());
  FUZZ_CHECK(flowreg::flow_version(reordered) == flowreg::flow_version(flow));
  return 0;
}
