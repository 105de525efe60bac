// A well-behaved plugin whose handlers show each outcome the boundary carries.
#include <flowreg/sdk.hpp>

using flowreg::sdk::Context;
using flowreg::sdk::json;

FLOWREG_PLUGIN(good) {
  plugin.handler("echo", [](const json& input) { return input; });
  plugin.handler("context", [](const json&, const Context& c) {
    return json{{"run_id", c.run_id},
                {"step", c.step},
                {"attempt", c.attempt},
                {"task_index", c.task_index}};
  });
  plugin.handler("retry",
                 [](const json&) -> json { throw flowreg::sdk::retryable_error("try later"); });
  plugin.handler("permanent",
                 [](const json&) -> json { throw flowreg::sdk::permanent_error("never"); });
  plugin.handler("throws", [](const json&) -> json { throw std::logic_error("oops"); });
  plugin.handler("throws_int", [](const json&) -> json { throw 42; });
  auto& flow = plugin.flow("good_flow").description("a fixture").max_attempts(2);
  flow.step("first", "echo");
  flow.step("second", "echo").depends_on({"first"});
}
