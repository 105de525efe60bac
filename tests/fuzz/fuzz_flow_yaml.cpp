// YAML flow and configuration files, as `flowreg flows validate`, `flows list` and every worker
// read them (flowreg::parse_config). Whatever the text: no crash, hang or leak; a refusal carries
// located problems; what is accepted obeys the model's rules and can be run and listed.

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <unordered_map>

#include "config/json_schema.hpp"
#include "flowreg/config.hpp"
#include "flowreg/validate.hpp"
#include "support.hpp"
#include "util/strings.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace flowreg;
  if (size > fuzz::kMaxInputBytes) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const auto config = parse_config(text, "fuzz/flows.yaml");
  if (!config) {
    FUZZ_CHECK(!config.error().message.empty());
    FUZZ_CHECK(!config.error().details.empty());
    // Messages quote the input, which is made valid UTF-8 where it enters: they are valid too.
    for (const auto& d : config.error().details) FUZZ_CHECK(detail::is_utf8(d.format()));
    return 0;
  }
  for (const FlowDef& flow : config->flows) {
    FUZZ_CHECK(validate_flow(flow).empty());
    FUZZ_CHECK(detail::is_utf8(flow.description));
    // Every accepted flow can be scheduled: each step after the steps it depends on.
    const auto order = topological_order(flow);
    FUZZ_CHECK(order.size() == flow.steps.size());
    std::unordered_map<std::string_view, std::size_t> position;
    for (std::size_t i = 0; i < order.size(); ++i) position.emplace(order[i]->slug, i);
    for (const StepDef* step : order)
      for (const auto& dep : step->depends_on)
        FUZZ_CHECK(position.contains(dep) && position[dep] < position[step->slug]);
    FUZZ_CHECK(flow_version(flow).size() == 16);
    // What `flowreg run` and `flows list --json` do with the input schema.
    if (flow.input_schema) {
      FUZZ_CHECK(detail::JsonSchema::compile(*flow.input_schema).has_value());
      (void)flow.input_schema->dump();
    }
  }
  return 0;
}
