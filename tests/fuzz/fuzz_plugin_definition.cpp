// A plugin's self-description: the text its describe() returns, checked as the host checks it
// (detail::parse_plugin_definition bounds the text, then parses it). Whatever the bytes: no crash,
// hang or leak, and every message valid UTF-8; what is accepted is what a YAML file could declare,
// and the host can use it (compile its input schemas, list it as JSON).

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <string_view>

#include "config/definition.hpp"
#include "config/json_schema.hpp"
#include "flowreg/validate.hpp"
#include "support.hpp"
#include "util/strings.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace flowreg;
  if (size > fuzz::kMaxInputBytes) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto parsed = detail::parse_plugin_definition(text, "fuzz/plugin.so");
  if (!parsed) {
    FUZZ_CHECK(!parsed.error().empty());
    for (const auto& d : parsed.error()) FUZZ_CHECK(detail::is_utf8(d.format()));
    return 0;
  }
  FUZZ_CHECK(is_valid_slug(parsed->module));
  const std::set<std::string> handlers(parsed->handlers.begin(), parsed->handlers.end());
  FUZZ_CHECK(handlers.size() == parsed->handlers.size());
  for (const auto& h : parsed->handlers) FUZZ_CHECK(is_valid_slug(h));
  for (const FlowDef& flow : parsed->flows) {
    FUZZ_CHECK(flow.module == parsed->module);
    FUZZ_CHECK(validate_flow(flow).empty());
    FUZZ_CHECK(topological_order(flow).size() == flow.steps.size());
    for (const StepDef& step : flow.steps) {
      const std::string own = parsed->module + ".";
      if (step.handler.starts_with(own))
        FUZZ_CHECK(handlers.contains(step.handler.substr(own.size())));
    }
    if (flow.input_schema) {
      if (auto schema = detail::JsonSchema::compile(*flow.input_schema))
        (void)schema->validate(nlohmann::json::object());
      (void)nlohmann::json::parse(flow.input_schema->dump());
    }
  }
  return 0;
}
