#include "server/graph_svg.hpp"

#include <fmt/format.h>
#include <graphviz/cgraph.h>
#include <graphviz/gvc.h>

#include <mutex>

namespace flowreg::detail {

namespace {

std::string dot_escape(std::string_view text) {
  std::string out;
  for (char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    out += c;
  }
  return out;
}

std::string dot_quote(std::string_view text) { return "\"" + dot_escape(text) + "\""; }

std::mutex& graphviz_mutex() {
  static std::mutex mu;
  return mu;
}

}  // namespace

std::string flow_dot(const FlowDef& flow) {
  std::string out = fmt::format(
      "digraph {} {{\n  rankdir=LR;\n  bgcolor=\"transparent\";\n"
      "  node [shape=box, style=\"rounded,filled\", fillcolor=\"#eef3fb\", color=\"#4a6fa5\", "
      "fontname=\"Helvetica\", fontsize=11];\n  edge [color=\"#4a6fa5\"];\n",
      dot_quote(flow.slug));
  for (const auto& s : flow.steps)
    out += fmt::format("  {} [label=\"{}\\n{}{}\"{}];\n", dot_quote(s.slug), dot_escape(s.slug),
                       dot_escape(s.handler), s.kind == StepKind::map ? " (map)" : "",
                       s.kind == StepKind::map ? ", shape=box3d, style=filled" : "");
  for (const auto& s : flow.steps)
    for (const auto& d : s.depends_on)
      out += fmt::format("  {} -> {};\n", dot_quote(d), dot_quote(s.slug));
  return out + "}\n";
}

Result<std::string> flow_svg(const FlowDef& flow) {
  const std::string dot = flow_dot(flow);
  std::lock_guard lock(graphviz_mutex());
  static GVC_t* const gvc = gvContext();
  if (!gvc) return make_error(Errc::internal, "Graphviz: no context");
  Agraph_t* graph = agmemread(dot.c_str());
  if (!graph)
    return make_error(Errc::internal,
                      fmt::format("Graphviz: cannot read the DAG of flow '{}'", flow.slug));
  std::string svg;
  if (gvLayout(gvc, graph, "dot") == 0) {
    char* data = nullptr;
    unsigned int length = 0;
    if (gvRenderData(gvc, graph, "svg", &data, &length) == 0 && data) svg.assign(data, length);
    if (data) gvFreeRenderData(data);
    gvFreeLayout(gvc, graph);
  }
  agclose(graph);
  if (svg.empty())
    return make_error(Errc::internal,
                      fmt::format("Graphviz: cannot lay out the DAG of flow '{}'", flow.slug));
  return svg;
}

}  // namespace flowreg::detail
