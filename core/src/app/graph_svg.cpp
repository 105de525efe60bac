#include "app/graph_svg.hpp"

#include <fmt/format.h>
#include <graphviz/cgraph.h>
#include <graphviz/gvc.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <string_view>

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

// The nodes `dot` lays out for `flow`: one per step, plus one per rank a dependency crosses (it
// routes an edge from rank r to rank r + k through k - 1 virtual nodes), with steps ranked by their
// longest path from a root, as `dot` ranks them. Its layout time grows faster than this count:
// measured with libgvc 2.42, 100 steps and 945 dependencies (25,735 nodes) took 51.8 s in the
// server (the audit's flow) and more than 100 s alone; 100 steps with 2,665 nodes 0.44 s, with
// 5,297 nodes 1.6 s. Graphviz's lock serializes pictures, so one such picture stalls all others.
std::size_t layout_nodes(const FlowDef& flow) {
  std::map<std::string_view, std::size_t> rank;
  for (const StepDef* step : topological_order(flow)) {
    std::size_t r = 0;
    for (const auto& dep : step->depends_on)
      if (auto it = rank.find(dep); it != rank.end()) r = std::max(r, it->second + 1);
    rank[step->slug] = r;
  }
  std::size_t nodes = flow.steps.size();
  for (const auto& step : flow.steps)
    for (const auto& dep : step.depends_on) {
      const auto to = rank.find(step.slug), from = rank.find(dep);
      if (to != rank.end() && from != rank.end() && to->second > from->second + 1)
        nodes += to->second - from->second - 1;
    }
  return nodes;
}

// Above kTunedLayoutNodes, `dot` gets fewer iterations of its network simplex (ranks and
// positions) and of its crossing minimization: the 5,297-node DAG above took 0.31 s instead of
// 1.6, 6,184 nodes 0.31 s, 16,947 nodes 3.3 s. Small flows keep the default, tidier layout. Above
// kMaxLayoutNodes nothing is drawn.
constexpr std::size_t kTunedLayoutNodes = 1'000;
constexpr std::size_t kMaxLayoutNodes = 5'000;
constexpr const char* kTunedLayout = "  nslimit=2;\n  nslimit1=2;\n  mclimit=0.2;\n";

}  // namespace

const StateStyle& state_style(std::string_view state) {
  // Light fills with dark borders (contrast over 4.5:1 for the label text on each fill); each
  // state also has its marker and word in the label.
  static constexpr StateStyle kCreated{"#f3f4f6", "#6b7280", "\u25cb", "waiting"};
  static constexpr StateStyle kStarted{"#fff4c2", "#8a6100", "\u25b6", "started"};
  static constexpr StateStyle kCompleted{"#dcf3e2", "#1e7b34", "\u2713", "completed"};
  static constexpr StateStyle kFailed{"#fde0df", "#b3261e", "\u2717", "failed"};
  static constexpr StateStyle kCancelled{"#e5e7eb", "#4b5563", "\u2298", "cancelled"};
  static constexpr StateStyle kSkipped{"#ffffff", "#6b7280", "\u21b7", "skipped"};
  if (state == "started") return kStarted;
  if (state == "skipped") return kSkipped;
  if (state == "completed") return kCompleted;
  if (state == "failed") return kFailed;
  if (state == "cancelled") return kCancelled;
  return kCreated;
}

namespace {

// The DOT of `flow`; with `states`, each step drawn in its state's style.
std::string dag_dot(const FlowDef& flow, const std::map<std::string, std::string>* states) {
  std::string out = fmt::format(
      "digraph {} {{\n  rankdir=LR;\n  bgcolor=\"transparent\";\n"
      "  node [shape=box, style=\"rounded,filled\", fillcolor=\"#eef3fb\", color=\"#4a6fa5\", "
      "fontname=\"Helvetica\", fontsize=11];\n  edge [color=\"#4a6fa5\"];\n",
      dot_quote(flow.slug));
  for (const auto& s : flow.steps) {
    const bool map = s.kind == StepKind::map || (s.child && s.child->map);
    // A sleep, wait or flow step has no handler: its second line says what it is.
    const std::string handler =
        s.kind == StepKind::sleep  ? "(sleep)"
        : s.kind == StepKind::wait ? "(wait)"
        : s.kind == StepKind::flow
            ? (s.child && !s.child->flow.empty() ? "(flow " + s.child->flow + ")" : "(flow)")
            : s.handler;
    if (!states) {
      out += fmt::format("  {} [label=\"{}\\n{}{}\"{}];\n", dot_quote(s.slug), dot_escape(s.slug),
                         dot_escape(handler), map ? " (map)" : "",
                         map ? ", shape=box3d, style=filled" : "");
      continue;
    }
    const auto it = states->find(s.slug);
    const std::string_view state =
        it == states->end() ? std::string_view("created") : std::string_view(it->second);
    const StateStyle& st = state_style(state);
    // A failed step's border is thicker, a waiting, cancelled or skipped one's dashed: the state
    // shows in the shape too, not only in the colour.
    const char* style = state == "failed" ? "filled,bold"
                        : state == "created" || state == "cancelled" || state == "skipped"
                            ? "filled,dashed"
                            : "filled";
    out += fmt::format(
        "  {} [label=\"{}\\n{}{}\\n{} {}\", shape={}, style=\"{}{}\", fillcolor=\"{}\", "
        "color=\"{}\", penwidth={}];\n",
        dot_quote(s.slug), dot_escape(s.slug), dot_escape(handler), map ? " (map)" : "", st.marker,
        st.word, map ? "box3d" : "box", map ? "" : "rounded,", style, st.fill, st.border,
        state == "failed" ? "2.5" : "1.2");
  }
  for (const auto& s : flow.steps)
    for (const auto& d : s.depends_on)
      out += fmt::format("  {} -> {};\n", dot_quote(d), dot_quote(s.slug));
  return out + "}\n";
}

Result<std::string> dag_svg(const FlowDef& flow, const std::map<std::string, std::string>* states) {
  const std::size_t nodes = layout_nodes(flow);
  if (nodes > kMaxLayoutNodes)
    return make_error(
        Errc::invalid_argument,
        fmt::format("the DAG of flow '{}' is too large to draw: its {} steps and their "
                    "dependencies lay out as {} nodes (a dependency that skips ranks passes "
                    "through one node per rank), over the limit of {}; `flowreg flows show {} "
                    "--dot` prints it as DOT",
                    flow.slug, flow.steps.size(), nodes, kMaxLayoutNodes, flow.slug));
  std::string dot = dag_dot(flow, states);
  if (nodes > kTunedLayoutNodes) dot.insert(dot.find('\n') + 1, kTunedLayout);
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

}  // namespace

std::string flow_dot(const FlowDef& flow) { return dag_dot(flow, nullptr); }

Result<std::string> flow_svg(const FlowDef& flow) { return dag_svg(flow, nullptr); }

std::string run_dot(const FlowDef& flow, const std::map<std::string, std::string>& states) {
  return dag_dot(flow, &states);
}

Result<std::string> run_svg(const FlowDef& flow, const std::map<std::string, std::string>& states) {
  return dag_svg(flow, &states);
}

}  // namespace flowreg::detail
