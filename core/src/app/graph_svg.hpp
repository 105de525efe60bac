#pragma once
// A flow's DAG drawn as SVG by Graphviz's library (libgvc, the `dot` layout), left to right: one
// box per step (a 3-D box for a map step) labelled with its slug and handler, an arrow per
// dependency. Step slugs and handler names are identifiers (validate.hpp), so nothing in the
// picture needs escaping beyond DOT's quoting.
//
// Thread-safety: Graphviz is not thread-safe; calls are serialized internally.

#include <string>

#include "flowreg/error.hpp"
#include "flowreg/flow.hpp"

namespace flowreg::detail {

// The flow's DAG in Graphviz DOT (what `flows show --dot` prints).
std::string flow_dot(const FlowDef& flow);
// That DOT laid out and rendered as an SVG document. Errc::invalid_argument, drawing nothing, when
// the layout would be too large (see layout_nodes in graph_svg.cpp); Errc::internal when Graphviz
// fails.
Result<std::string> flow_svg(const FlowDef& flow);

}  // namespace flowreg::detail
