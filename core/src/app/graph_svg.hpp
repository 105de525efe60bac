#pragma once
// A flow's DAG drawn as SVG by Graphviz's library (libgvc, the `dot` layout), left to right: one
// box per step (a 3-D box for a map step) labelled with its slug and handler, an arrow per
// dependency. Step slugs and handler names are identifiers (validate.hpp), so nothing in the
// picture needs escaping beyond DOT's quoting.
//
// Thread-safety: Graphviz is not thread-safe; calls are serialized internally.

#include <map>
#include <string>
#include <string_view>

#include "flowreg/error.hpp"
#include "flowreg/flow.hpp"

namespace flowreg::detail {

// The flow's DAG in Graphviz DOT (what `flows show --dot` prints).
std::string flow_dot(const FlowDef& flow);
// That DOT laid out and rendered as an SVG document. Errc::invalid_argument, drawing nothing, when
// the layout would be too large (see layout_nodes in graph_svg.cpp); Errc::internal when Graphviz
// fails.
Result<std::string> flow_svg(const FlowDef& flow);

// A run's DAG: `flow` (the run's flow version) with each step filled by its state in `states`
// (step slug -> created, started, completed, failed, cancelled or skipped; a step not in it is
// drawn as created), and the state written in its label with a marker (○ waiting, ▶ started,
// ✓ completed, ✗ failed, ⊘ cancelled, ↷ skipped), so that it reads without colour. Errors as
// flow_svg.
std::string run_dot(const FlowDef& flow, const std::map<std::string, std::string>& states);
Result<std::string> run_svg(const FlowDef& flow, const std::map<std::string, std::string>& states);

// How run_dot draws a step state: its fill and border colours, marker and word.
struct StateStyle {
  const char* fill;
  const char* border;
  const char* marker;
  const char* word;
};
// The style of `state`; created's for a state it does not know.
const StateStyle& state_style(std::string_view state);
// The states in the order a legend lists them, with their style.
inline constexpr const char* kStepStates[] = {"created", "started",   "completed",
                                              "failed",  "cancelled", "skipped"};

}  // namespace flowreg::detail
