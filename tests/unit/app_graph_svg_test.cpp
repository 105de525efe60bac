// app/graph_svg: a flow's DAG drawn by Graphviz, within a bound on the layout's size.

#include <doctest/doctest.h>

#include <string>

#include "app/graph_svg.hpp"

using namespace flowreg;

namespace {

// `steps` steps; step i depends on step i - 1 and on the steps i - span, i - 2 * span, ... (at most
// `fan` of them): dependencies that skip ranks, which Graphviz routes through one node per rank.
FlowDef dag(int steps, int fan, int span) {
  FlowDef flow;
  flow.slug = "big";
  for (int i = 0; i < steps; ++i) {
    StepDef s;
    s.slug = "s" + std::to_string(i);
    s.handler = "m.h";
    if (i > 0) s.depends_on.push_back("s" + std::to_string(i - 1));
    for (int k = 1; k <= fan && i - k * span >= 0; ++k)
      if (k * span > 1) s.depends_on.push_back("s" + std::to_string(i - k * span));
    flow.steps.push_back(std::move(s));
  }
  return flow;
}

}  // namespace

TEST_SUITE("graph_svg") {
  TEST_CASE("a DAG too large to lay out is refused at once, with its size and the limit") {
    // 100 steps, each with 10 dependencies reaching up to 90 ranks back: tens of thousands of
    // nodes once laid out; the audit's flow of that shape took 51.8 s to draw, holding
    // Graphviz's lock (so every other picture waited).
    const auto drawn = detail::flow_svg(dag(100, 10, 9));
    REQUIRE_FALSE(drawn);
    CHECK(drawn.error().code == Errc::invalid_argument);
    CHECK(drawn.error().message.starts_with(
        "the DAG of flow 'big' is too large to draw: its 100 steps and their dependencies lay "
        "out as "));
    CHECK(drawn.error().message.ends_with(
        "nodes (a dependency that skips ranks passes through one node per rank), over the limit "
        "of 5000; `flowreg flows show big --dot` prints it as DOT"));
  }

  TEST_CASE("large DAGs under the bound are drawn") {
    // A chain of 1,000 steps (1,000 nodes, the default layout), and 100 steps whose dependencies
    // skip up to 40 ranks (about 4,000 nodes: fewer layout iterations).
    for (const FlowDef& flow : {dag(1'000, 0, 1), dag(100, 2, 20)}) {
      CAPTURE(flow.steps.size());
      const auto drawn = detail::flow_svg(flow);
      REQUIRE_MESSAGE(drawn, (drawn ? std::string() : drawn.error().message));
      CHECK(drawn->find("<svg") != std::string::npos);
      CHECK(drawn->find(">s99<") != std::string::npos);
    }
  }
}
