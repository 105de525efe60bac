#include <doctest/doctest.h>

#include <algorithm>

#include "flowreg/validate.hpp"
#include "store/run_store.hpp"

using namespace flowreg;

namespace {

StepDef step(std::string slug, std::vector<std::string> deps = {},
             StepKind kind = StepKind::single) {
  StepDef s;
  s.handler = "mod." + slug;
  s.slug = std::move(slug);
  s.depends_on = std::move(deps);
  s.kind = kind;
  return s;
}

FlowDef flow(std::vector<StepDef> steps) {
  FlowDef f;
  f.slug = "billing";
  f.module = "billing_mod";
  f.source = "billing.yaml";
  f.steps = std::move(steps);
  return f;
}

std::vector<std::string> messages(const FlowDef& f) {
  std::vector<std::string> out;
  for (const auto& d : validate_flow(f)) out.push_back(d.message);
  return out;
}

bool has(const std::vector<std::string>& all, std::string_view text) {
  return std::any_of(all.begin(), all.end(),
                     [&](const std::string& m) { return m.find(text) != std::string::npos; });
}

}  // namespace

TEST_SUITE("model") {
  TEST_CASE("a valid diamond has no problems") {
    auto f = flow({step("fetch"), step("charge", {"fetch"}), step("reserve", {"fetch"}),
                   step("ship", {"charge", "reserve"})});
    CHECK(validate_flow(f).empty());
  }

  TEST_CASE("slugs follow ^[a-z][a-z0-9_]{0,62}$") {
    CHECK(is_valid_slug("a"));
    CHECK(is_valid_slug("order_pipeline_2"));
    CHECK(is_valid_slug(std::string(63, 'a')));
    CHECK_FALSE(is_valid_slug(""));
    CHECK_FALSE(is_valid_slug(std::string(64, 'a')));
    CHECK_FALSE(is_valid_slug("Order"));
    CHECK_FALSE(is_valid_slug("_x"));
    CHECK_FALSE(is_valid_slug("9x"));
    CHECK_FALSE(is_valid_slug("a-b"));
    CHECK_FALSE(is_valid_slug("a.b"));
    CHECK(slug_problem("a-b").find("'-'") != std::string::npos);
    CHECK(slug_problem(std::string(64, 'a')).find("limit is 63") != std::string::npos);
    CHECK(slug_problem("Ab") == "must start with a lowercase letter");
  }

  TEST_CASE("handler names are module.handler") {
    CHECK(is_valid_handler_name("orders.fetch"));
    CHECK_FALSE(is_valid_handler_name("orders"));
    CHECK_FALSE(is_valid_handler_name("orders."));
    CHECK_FALSE(is_valid_handler_name(".fetch"));
    CHECK_FALSE(is_valid_handler_name("Orders.fetch"));
    CHECK_FALSE(is_valid_handler_name("a.b.c"));
    auto f = flow({step("fetch")});
    f.steps[0].handler = "nodot";
    CHECK(has(messages(f), "step 'fetch': handler 'nodot' must be 'module.handler'"));
  }

  TEST_CASE("invalid flow, step and module slugs are reported with the reason") {
    auto f = flow({step("Fetch")});
    f.slug = "Billing";
    f.module = "bad-module";
    const auto m = messages(f);
    CHECK(has(m, "flow 'Billing': flow slug 'Billing' must start with a lowercase letter"));
    CHECK(has(m, "step slug 'Fetch' must start with a lowercase letter"));
    CHECK(has(m, "module name 'bad-module' contains '-'"));
  }

  TEST_CASE("step slugs are unique in a flow") {
    const auto m = messages(flow({step("a"), step("b"), step("a")}));
    CHECK(has(m, "step slug 'a' is used twice (steps 1 and 3)"));
  }

  TEST_CASE("every dependency names a step of the flow") {
    const auto m = messages(flow({step("fetch"), step("charge", {"fetch2"})}));
    CHECK(has(m, "flow 'billing': step 'charge' depends on unknown step 'fetch2'"));
  }

  TEST_CASE("a step cannot depend on itself or list a dependency twice") {
    const auto m = messages(flow({step("a", {"a"}), step("b"), step("c", {"b", "b"})}));
    CHECK(has(m, "step 'a' depends on itself"));
    CHECK(has(m, "step 'c' lists dependency 'b' twice"));
  }

  TEST_CASE("a cycle is reported once, naming its steps in order") {
    const auto m =
        messages(flow({step("a", {"c"}), step("b", {"a"}), step("c", {"b"}), step("d")}));
    REQUIRE(m.size() == 1);
    CHECK(m[0] == "flow 'billing': dependency cycle a -> b -> c -> a");
  }

  TEST_CASE("two separate cycles are both reported") {
    const auto m =
        messages(flow({step("a", {"b"}), step("b", {"a"}), step("x", {"y"}), step("y", {"x"})}));
    CHECK(has(m, "dependency cycle a -> b -> a"));
    CHECK(has(m, "dependency cycle x -> y -> x"));
  }

  TEST_CASE("a long chain is not mistaken for a cycle and does not exhaust the stack") {
    std::vector<StepDef> steps{step("s0")};
    for (int i = 1; i < 1000; ++i)
      steps.push_back(step("s" + std::to_string(i), {"s" + std::to_string(i - 1)}));
    CHECK(validate_flow(flow(steps)).empty());
    steps[0].depends_on = {"s999"};
    const auto m = messages(flow(steps));
    REQUIRE(m.size() == 1);
    CHECK(m[0].starts_with("flow 'billing': dependency cycle s0 -> s1 -> s2"));
  }

  TEST_CASE("a map step has at most one dependency") {
    const auto m = messages(flow({step("a"), step("b"), step("m", {"a", "b"}, StepKind::map)}));
    CHECK(has(m, "map step 'm' has 2 dependencies (a, b); a map step takes at most one"));
    CHECK(validate_flow(flow({step("a"), step("m", {"a"}, StepKind::map)})).empty());
    CHECK(validate_flow(flow({step("m", {}, StepKind::map)})).empty());
  }

  TEST_CASE("options are checked against their ranges") {
    auto f = flow({step("a")});
    SUBCASE("attempts") {
      f.options.max_attempts = 0;
      CHECK(has(messages(f), "max_attempts 0 is out of range 1..1000"));
      f.options.max_attempts = 1001;
      CHECK(has(messages(f), "max_attempts 1001 is out of range 1..1000"));
    }
    SUBCASE("delays") {
      f.options.base_delay = Millis{-1};
      CHECK(has(messages(f), "base_delay -1ms is out of range 0ms..168h"));
    }
    SUBCASE("max_delay below base_delay") {
      f.options.base_delay = Millis{10'000};
      f.options.max_delay = Millis{1'000};
      CHECK(has(messages(f), "max_delay 1s is shorter than base_delay 10s"));
    }
    SUBCASE("timeout") {
      f.options.timeout = Millis{0};
      CHECK(has(messages(f), "timeout 0ms is out of range 1ms..168h"));
    }
    SUBCASE("priority") {
      f.options.priority = 101;
      CHECK(has(messages(f), "priority 101 is out of range -100..100"));
      f.options.priority = -100;
      CHECK(messages(f).empty());
      f.steps[0].options.priority = -101;
      CHECK(has(messages(f), "step 'a': priority -101 is out of range -100..100"));
    }
    SUBCASE("concurrency") {
      flowreg::Concurrency c;
      c.limit = 0;
      f.concurrency = c;
      CHECK(has(messages(f), "concurrency limit 0 is out of range 1..100000"));
      c.limit = 2;
      c.key = "customer";
      f.concurrency = c;
      CHECK(has(messages(f), "concurrency key 'customer' is not a JSON pointer"));
      c.key = "/a~2";
      f.concurrency = c;
      CHECK(has(messages(f), "'~' must be followed by 0 (for ~) or 1 (for /)"));
      c.key = "/a~1b/~0";
      f.concurrency = c;
      CHECK(messages(f).empty());
      // A root step cannot have its own when the flow has one; a later step can.
      f.steps[0].concurrency = c;
      CHECK(has(messages(f), "step 'a': a root step cannot have a concurrency limit of its own"));
      f.concurrency.reset();
      CHECK(messages(f).empty());
    }
    SUBCASE("rate limits") {
      flowreg::RateLimit r;
      r.limit = 0;
      r.per = Millis{0};
      f.rate_limit = r;
      CHECK(has(messages(f), "rate limit 0 is out of range 1..1000000"));
      CHECK(has(messages(f), "rate limit period 0ms is out of range 1ms..24h"));
      r.limit = 100;
      r.per = Millis{1000};
      r.key = "region";
      f.rate_limit = r;
      CHECK(has(messages(f), "rate limit key 'region' is not a JSON pointer"));
      r.key = "/region";
      f.rate_limit = r;
      CHECK(messages(f).empty());
      // A step cannot have its own when the flow has one.
      f.steps[0].rate_limit = r;
      CHECK(has(messages(f),
                "step 'a': a step cannot have a rate limit of its own when its flow "
                "has one"));
      f.rate_limit.reset();
      CHECK(messages(f).empty());
      // Under a concurrency limit: the same key, or none.
      flowreg::Concurrency c;
      c.limit = 2;
      c.key = "/customer";
      f.steps[0].concurrency = c;
      CHECK(has(messages(f),
                "step 'a': the rate limit's key '/region' is not its concurrency "
                "limit's key ('/customer')"));
      f.steps[0].rate_limit->key.reset();
      CHECK(messages(f).empty());
      f.steps[0].rate_limit->key = "/customer";
      CHECK(messages(f).empty());
      // Over a root step's tasks, not with the flow's concurrency limit.
      f.steps[0].concurrency.reset();
      f.concurrency = c;
      CHECK(has(messages(f),
                "step 'a': a rate limit over a root step's tasks cannot be combined "
                "with its flow's concurrency limit"));
    }
    SUBCASE("a step's override is checked on its own, inherited problems are not repeated") {
      f.options.base_delay = Millis{10'000};
      f.options.max_delay = Millis{1'000};
      f.steps[0].options.max_attempts = 0;
      const auto m = messages(f);
      CHECK(m.size() == 2);
      CHECK(has(m, "step 'a': max_attempts 0 is out of range"));
    }
  }

  TEST_CASE("a flow needs at least one step and at most 1000") {
    CHECK(has(messages(flow({})), "has no steps"));
    std::vector<StepDef> steps;
    for (int i = 0; i < 1001; ++i) steps.push_back(step("s" + std::to_string(i)));
    CHECK(has(messages(flow(steps)), "has 1001 steps; the limit is 1000"));
  }

  TEST_CASE("the description has a length limit") {
    auto f = flow({step("a")});
    f.description = std::string(kMaxDescriptionLength + 1, 'x');
    CHECK(has(messages(f), "description is 4097 characters long; the limit is 4096"));
  }

  TEST_CASE("every problem is reported, not only the first") {
    auto f = flow({step("a", {"zz"}), step("a"), step("m", {"a", "b"}, StepKind::map)});
    f.options.max_attempts = 0;
    CHECK(messages(f).size() >= 4);
  }

  TEST_CASE("diagnostics are located through the locator, by JSON pointer") {
    auto f = flow({step("fetch"), step("charge", {"fetch2"})});
    std::vector<std::string> asked;
    auto diagnostics = validate_flow(f, [&](std::string_view pointer) {
      asked.emplace_back(pointer);
      return Location{"x.yaml", 7, 3};
    });
    REQUIRE(diagnostics.size() == 1);
    CHECK(asked.back() == "/steps/1/depends_on/0");
    CHECK(diagnostics[0].format() ==
          "x.yaml:7:3: flow 'billing': step 'charge' depends on unknown step 'fetch2'");
  }

  TEST_CASE("without a locator, diagnostics name the flow's source file") {
    auto f = flow({step("a", {"b"})});
    auto d = validate_flow(f);
    REQUIRE(d.size() == 1);
    CHECK(d[0].format() == "billing.yaml: flow 'billing': step 'a' depends on unknown step 'b'");
  }

  TEST_CASE("the version hashes the shape, not options or declaration order") {
    auto a = flow({step("fetch"), step("charge", {"fetch"}), step("ship", {"charge", "fetch"})});
    auto b = flow({step("ship", {"fetch", "charge"}), step("fetch"), step("charge", {"fetch"})});
    b.options.max_attempts = 9;
    b.description = "other";
    b.steps[0].options.timeout = Millis{5};
    CHECK(flow_version(a) == flow_version(b));
    CHECK(flow_version(a).size() == 16);
    SUBCASE("a handler changes it") {
      b.steps[1].handler = "mod.other";
      CHECK(flow_version(a) != flow_version(b));
    }
    SUBCASE("a kind changes it") {
      b.steps[0].kind = StepKind::map;
      CHECK(flow_version(a) != flow_version(b));
    }
    SUBCASE("a dependency changes it") {
      b.steps[0].depends_on = {"charge"};
      CHECK(flow_version(a) != flow_version(b));
    }
  }

  TEST_CASE("topological order puts dependencies first, declaration order otherwise") {
    auto f = flow({step("ship", {"charge", "reserve"}), step("charge", {"fetch"}), step("fetch"),
                   step("reserve", {"fetch"})});
    std::vector<std::string> order;
    for (const StepDef* s : topological_order(f)) order.push_back(s->slug);
    CHECK(order == std::vector<std::string>{"fetch", "charge", "reserve", "ship"});
  }

  TEST_CASE(
      "regression: the stored definition lists steps dependencies first, in any declared order "
      "(steps declared before their dependencies failed at run)") {
    auto reversed =
        flow({step("total", {"count"}), step("count", {"split"}, StepKind::map), step("split")});
    std::vector<std::string> order;
    const auto stored = detail::flow_definition_json(reversed);
    for (const auto& s : stored["steps"]) order.push_back(s["slug"]);
    CHECK(order == std::vector<std::string>{"split", "count", "total"});
    // A flow already in dependency order keeps its own order.
    auto declared = flow({step("fetch"), step("reserve", {"fetch"}), step("charge", {"fetch"})});
    order.clear();
    const auto stored_declared = detail::flow_definition_json(declared);
    for (const auto& s : stored_declared["steps"]) order.push_back(s["slug"]);
    CHECK(order == std::vector<std::string>{"fetch", "reserve", "charge"});
  }
}
