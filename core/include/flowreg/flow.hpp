#pragma once
// The flow model: a flow is a DAG of steps with a slug, options and handlers.
//
// Plain values (copyable, comparable). A FlowDef says nothing about where its handlers' code lives;
// the registry pairs it with the module that defines it.

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "flowreg/options.hpp"

namespace flowreg {

enum class StepKind {
  single,  // one task with the step's input
  map,     // one task per element of its input array; outputs aggregated in order
};

std::string_view to_string(StepKind kind) noexcept;
std::optional<StepKind> parse_step_kind(std::string_view text) noexcept;

struct StepDef {
  std::string slug;
  StepKind kind = StepKind::single;
  std::vector<std::string> depends_on;  // slugs of steps of the same flow
  std::string handler;                  // "module.handler"
  OptionOverrides options;              // on top of the flow's options

  friend bool operator==(const StepDef&, const StepDef&) = default;
};

struct FlowDef {
  std::string slug;
  std::string module;  // the plugin or YAML file that defines it
  std::string description;
  Options options;                             // the flow's options, defaults filled in
  std::optional<nlohmann::json> input_schema;  // JSON Schema (draft 7) for the run input
  std::vector<StepDef> steps;
  std::string source;  // file it was read from, for messages ("" when built in code)

  // The options a step runs with: its overrides on top of the flow's options.
  Options step_options(const StepDef& step) const noexcept { return step.options.apply(options); }
  const StepDef* find_step(std::string_view step_slug) const noexcept;

  friend bool operator==(const FlowDef&, const FlowDef&) = default;
};

// Content hash of the flow's shape: steps, kinds, dependencies and handlers, not its tuning
// options, description or schema. 16 lowercase hex digits. Two flows with the same shape have the
// same version whatever the order their steps and dependencies were written in.
std::string flow_version(const FlowDef& flow);

// Steps in an order where every step comes after its dependencies (stable: declaration order among
// independent steps). REQUIRES: the flow is valid (no cycle, no unknown dependency).
std::vector<const StepDef*> topological_order(const FlowDef& flow);

}  // namespace flowreg
