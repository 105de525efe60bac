#pragma once
// JSON Schema (draft 7) validation through valijson, with messages written for people: the path of
// the offending value, what was expected and what was found, and "did you mean" for unknown keys.
//
// Thread-safety: a compiled JsonSchema is immutable; validate() may be called concurrently.

#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "flowreg/error.hpp"

namespace flowreg::detail {

struct SchemaProblem {
  std::string pointer;  // JSON pointer of the value the problem is about
  std::string message;  // "flows[0].steps[1].kind: must be one of single, map; got 'mapp' ..."
};

class JsonSchema {
 public:
  // Fails when `schema` is not a schema valijson can use (the message says why).
  static Result<JsonSchema> compile(nlohmann::json schema);

  // Every problem of `instance`, leaf errors only (not the chain of enclosing objects).
  std::vector<SchemaProblem> validate(const nlohmann::json& instance) const;

  const nlohmann::json& document() const noexcept;

  JsonSchema(JsonSchema&&) noexcept;
  JsonSchema& operator=(JsonSchema&&) noexcept;
  ~JsonSchema();

 private:
  struct Impl;
  explicit JsonSchema(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// The schema of flowreg's YAML files (schemas/flow.schema.json, compiled into the binary).
const JsonSchema& flow_file_schema();

// "/flows/0/steps/1/kind" -> "flows[0].steps[1].kind"; "" -> "(top level)".
std::string readable_path(std::string_view pointer);

}  // namespace flowreg::detail
