#include <doctest/doctest.h>

#include <string>
#include <utility>
#include <vector>

#include "flowreg/error.hpp"
#include "flowreg/flow_registry.hpp"
#include "flowreg/plugins.hpp"
#include "flowreg/tools/supervisor.hpp"
#include "store/migrations.hpp"
#include "store/run_store.hpp"
#include "util/enum_names.hpp"

using namespace flowreg;

namespace {

// Each value with the name users see (in messages, JSON, `db status`, `runs list --status`).
template <class E>
void check_names(const std::vector<std::pair<E, std::string>>& expected) {
  for (const auto& entry : expected) {
    CAPTURE(entry.second);
    CHECK(to_string(entry.first) == entry.second);
  }
}

enum class Color { red, green, blue };
constexpr detail::EnumName<Color> kColorNames[] = {{Color::red, "red"}, {Color::green, "green"}};

}  // namespace

TEST_SUITE("enum_names") {
  TEST_CASE(
      "a table reads both ways; a value it lacks has the fallback name, a name it lacks none") {
    CHECK(detail::name_in(kColorNames, Color::green) == "green");
    CHECK(detail::name_in(kColorNames, Color::blue) == "unknown");
    CHECK(detail::name_in(kColorNames, Color::blue, "?") == "?");
    CHECK(detail::value_in(kColorNames, "red") == Color::red);
    CHECK_FALSE(detail::value_in(kColorNames, "blue").has_value());
    CHECK_FALSE(detail::value_in(kColorNames, "").has_value());
  }

  TEST_CASE("every value of every named enum has its own name") {
    check_names<Errc>({{Errc::invalid_argument, "invalid_argument"},
                       {Errc::invalid_definition, "invalid_definition"},
                       {Errc::not_found, "not_found"},
                       {Errc::duplicate_module, "duplicate_module"},
                       {Errc::duplicate_slug, "duplicate_slug"},
                       {Errc::io, "io"},
                       {Errc::parse, "parse"},
                       {Errc::not_started, "not_started"},
                       {Errc::plugin, "plugin"},
                       {Errc::database, "database"},
                       {Errc::unavailable, "unavailable"},
                       {Errc::internal, "internal"}});
    check_names<PluginStatus>({{PluginStatus::loaded, "loaded"},
                               {PluginStatus::rejected, "rejected"},
                               {PluginStatus::quarantined, "quarantined"},
                               {PluginStatus::waiting, "waiting"}});
    check_names<ModuleEvent::Kind>({{ModuleEvent::Kind::registered, "registered"},
                                    {ModuleEvent::Kind::replaced, "replaced"},
                                    {ModuleEvent::Kind::unregistered, "unregistered"}});
    check_names<SupervisorEventKind>({{SupervisorEventKind::child_started, "child_started"},
                                      {SupervisorEventKind::child_exited, "child_exited"},
                                      {SupervisorEventKind::child_restarted, "child_restarted"},
                                      {SupervisorEventKind::child_removed, "child_removed"},
                                      {SupervisorEventKind::start_failed, "start_failed"},
                                      {SupervisorEventKind::limit_reached, "limit_reached"},
                                      {SupervisorEventKind::stopped, "stopped"}});
    check_names<detail::RunStatus>({{detail::RunStatus::started, "started"},
                                    {detail::RunStatus::completed, "completed"},
                                    {detail::RunStatus::failed, "failed"},
                                    {detail::RunStatus::cancelled, "cancelled"}});
    check_names<detail::MigrationState>(
        {{detail::MigrationState::applied, "applied"},
         {detail::MigrationState::pending, "pending"},
         {detail::MigrationState::checksum_mismatch, "checksum_mismatch"},
         {detail::MigrationState::unknown, "unknown"}});
    check_names<detail::FunctionState>({{detail::FunctionState::applied, "applied"},
                                        {detail::FunctionState::pending, "pending"},
                                        {detail::FunctionState::changed, "changed"},
                                        {detail::FunctionState::unknown, "unknown"}});
  }

  TEST_CASE("run statuses read back from their names") {
    for (auto s : {detail::RunStatus::started, detail::RunStatus::completed,
                   detail::RunStatus::failed, detail::RunStatus::cancelled})
      CHECK(detail::parse_run_status(to_string(s)) == s);
    CHECK_FALSE(detail::parse_run_status("running").has_value());
  }
}
