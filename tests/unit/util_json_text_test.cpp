#include <doctest/doctest.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include "util/json_text.hpp"

using flowreg::detail::json_text;
using flowreg::detail::kMaxStateFileBytes;
using flowreg::detail::nesting_beyond;
using flowreg::detail::parse_state_file;
namespace fs = std::filesystem;

namespace {

// A scratch directory removed at the end of the test case.
struct Scratch {
  fs::path dir = fs::temp_directory_path() / ("flowreg_json_text_" + std::to_string(::getpid()));
  Scratch() { fs::create_directories(dir); }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
  fs::path write(const std::string& name, const std::string& bytes) const {
    std::ofstream(dir / name, std::ios::binary) << bytes;
    return dir / name;
  }
};

}  // namespace

TEST_SUITE("json_text") {
  TEST_CASE("nesting up to the limit passes; one level more is found at its bracket") {
    CHECK_FALSE(nesting_beyond("[[{}]]", 3));
    const auto at = nesting_beyond("[\n [{\"a\": [1]}]]", 3);
    REQUIRE(at);
    CHECK(at->line == 2);
    CHECK(at->column == 9);
  }

  TEST_CASE("brackets inside strings, escaped quotes included, do not count") {
    CHECK_FALSE(nesting_beyond(R"(["[[[", "\"[[[", "\\", {"k[": "{{"}])", 2));
  }

  TEST_CASE("stray closing brackets took the depth below zero and hid the nesting after them") {
    CHECK(nesting_beyond("]]]][[", 1));
    CHECK(nesting_beyond("}}[[", 1));
  }

  TEST_CASE("a value nested 100,000 levels is found without recursion") {
    const std::string deep = std::string(100'000, '[') + std::string(100'000, ']');
    const auto at = nesting_beyond(deep, 64);
    REQUIRE(at);
    CHECK(at->column == 65);
  }

  TEST_CASE("json_text never throws on invalid UTF-8") {
    CHECK(json_text(nlohmann::json("caf\xE9")) == "\"caf\xEF\xBF\xBD\"");
    CHECK(json_text(nlohmann::json{{"a", 1}}, 2) == "{\n  \"a\": 1\n}");
  }

  TEST_CASE("a state file is read when it is JSON, and discarded when it is anything else") {
    Scratch scratch;
    CHECK(parse_state_file(scratch.write("ok.json", R"({"a": [1, "x"]})")) ==
          nlohmann::json{{"a", {1, "x"}}});
    CHECK(parse_state_file(scratch.dir / "missing.json").is_discarded());
    CHECK(parse_state_file(scratch.dir).is_discarded());  // a directory
    CHECK(parse_state_file(scratch.write("empty.json", "")).is_discarded());
    CHECK(parse_state_file(scratch.write("truncated.json", R"({"a": [1, "x)")).is_discarded());
    CHECK(parse_state_file(scratch.write("not_utf8.json", "{\"a\": \"\xff\xfe\"}")).is_discarded());
    CHECK(parse_state_file(
              scratch.write("deep.json", std::string(100'000, '[') + std::string(100'000, ']')))
              .is_discarded());
    // Valid JSON (trailing blanks) yet too large to be flowreg's: not read.
    const fs::path huge = scratch.write("huge.json", "{}" + std::string(kMaxStateFileBytes, ' '));
    CHECK(parse_state_file(huge).is_discarded());
    fs::resize_file(huge, kMaxStateFileBytes);
    CHECK(parse_state_file(huge) == nlohmann::json::object());
  }
}
