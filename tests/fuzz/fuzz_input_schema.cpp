// Run inputs against input schemas, as `flowreg run` checks them (detail::JsonSchema). The input
// is one JSON text: [schema, input] compiles the schema (any schema a flow file could carry) and
// validates the input with it; any JSON text is also validated against fixed schemas of the
// example flows and against the schema of flowreg's YAML files. No crash, hang or leak, and
// every message is valid UTF-8 (the CLI prints it and its --json output serializes it).

#include <cstddef>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string_view>
#include <vector>

#include "config/json_schema.hpp"
#include "support.hpp"
#include "util/strings.hpp"

namespace {

using flowreg::detail::JsonSchema;

// Input schemas of the example flows (flows.example.yaml, plugins/*), and one that uses most
// keywords a run input meets.
const std::vector<JsonSchema>& fixed_schemas() {
  static const std::vector<JsonSchema> schemas = [] {
    const char* const texts[] = {
        R"({"type": "object", "required": ["text"], "properties": {"text": {"type": "string"}}})",
        R"({"type": "object", "required": ["order_id"],
            "properties": {"order_id": {"type": "string"}}})",
        R"({"type": "object", "required": ["path"], "additionalProperties": false,
            "properties": {"path": {"type": "string", "minLength": 1, "maxLength": 4096,
                                    "pattern": "^[^\\u0000]+$"}}})",
        R"({"$schema": "http://json-schema.org/draft-07/schema#",
            "definitions": {"item": {"type": "object", "required": ["sku", "qty"],
              "properties": {"sku": {"type": "string", "format": "uuid"},
                             "qty": {"type": "integer", "minimum": 1, "maximum": 1000}}}},
            "type": "object", "required": ["items"],
            "properties": {
              "items": {"type": "array", "items": {"$ref": "#/definitions/item"},
                        "minItems": 1, "uniqueItems": true},
              "email": {"type": "string", "format": "email"},
              "mode": {"enum": ["fast", "safe", null]},
              "note": {"oneOf": [{"type": "string"}, {"type": "null"}]},
              "tags": {"type": "object", "propertyNames": {"pattern": "^[a-z]+$"},
                       "additionalProperties": {"type": "number", "multipleOf": 0.5}}},
            "dependencies": {"email": ["mode"]},
            "if": {"properties": {"mode": {"const": "fast"}}},
            "then": {"properties": {"items": {"maxItems": 10}}}})",
    };
    std::vector<JsonSchema> out;
    for (const char* text : texts) {
      auto compiled = JsonSchema::compile(nlohmann::json::parse(text));
      FUZZ_CHECK(compiled.has_value());
      out.push_back(std::move(*compiled));
    }
    return out;
  }();
  return schemas;
}

void check(const std::vector<flowreg::detail::SchemaProblem>& problems) {
  for (const auto& p : problems) {
    FUZZ_CHECK(!p.message.empty());
    FUZZ_CHECK(flowreg::detail::is_utf8(p.message));
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > flowreg::fuzz::kMaxInputBytes) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  const nlohmann::json document = nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (document.is_discarded()) return 0;
  if (document.is_array() && document.size() == 2) {
    auto schema = JsonSchema::compile(document[0]);
    if (schema)
      check(schema->validate(document[1]));
    else
      FUZZ_CHECK(flowreg::detail::is_utf8(schema.error().message));
  }
  for (const auto& schema : fixed_schemas()) check(schema.validate(document));
  check(flowreg::detail::flow_file_schema().validate(document));
  return 0;
}
