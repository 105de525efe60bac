// Inputs found by the libFuzzer harnesses of tests/fuzz (each is also a seed of its corpus there).

#include <doctest/doctest.h>

#include <string>
#include <string_view>

#include "config/json_schema.hpp"
#include "flowreg/validate.hpp"
#include "support/config_problems.hpp"
#include "util/strings.hpp"

using namespace flowreg;
using flowreg::test::problems_of_text;

namespace {

// The message of the first problem of compiling `schema`, or "" when it compiles.
std::string compile_problem(const char* schema) {
  auto compiled = detail::JsonSchema::compile(nlohmann::json::parse(schema));
  return compiled ? "" : compiled.error().message;
}

// The message of a schema whose same-value subschemas form a cycle.
const std::string kLoop =
    "its $ref/allOf/anyOf/oneOf/not/if/then/else lead back to it without descending into the "
    "value, so it could never be checked";

std::string input_schema_yaml(const std::string& schema) {
  return "flows:\n  - slug: f\n    input_schema: " + schema +
         "\n    steps: [{slug: s, handler: m.s}]\n";
}

}  // namespace

TEST_SUITE("config") {
  TEST_CASE(
      "regression: a YAML escape of a multi-byte character gave a message that is not UTF-8") {
    // fuzz_flow_yaml: yaml-cpp quotes the byte after the backslash, the first byte of 'é'.
    const auto problems = problems_of_text("flows: [\"\\\xc3\xa9\"]\n");
    REQUIRE(problems.size() == 1);
    CHECK(detail::is_utf8(problems[0]));
    CHECK(problems[0] == "inline.yaml:1:12: invalid YAML: unknown escape character: \xef\xbf\xbd");
  }

  TEST_CASE(
      "regression: yaml-cpp turned a NUL byte of valid input into a message that is not UTF-8") {
    // fuzz_flow_yaml: the plain scalar "x\0_y" comes out of yaml-cpp as "x\xA0y".
    using namespace std::string_view_literals;
    CHECK(
        problems_of_text("flows:x\0_y: 1\n"sv) ==
        std::vector<std::string>{"inline.yaml:1:1: unknown key 'flows:x\xef\xbf\xbdy'; known keys: "
                                 "database, flows, module, plugins, schedules, server, worker"});
  }

  TEST_CASE("regression: a stray ',' at the start of a YAML document hung the loader for ever") {
    // fuzz_flow_yaml: yaml-cpp's LoadAll returned an empty document at the same place, forever.
    CHECK(problems_of_text(", a]\n") ==
          std::vector<std::string>{"inline.yaml:1:1: invalid YAML: unexpected ','"});
    CHECK(problems_of_text("flows: []\n...\n, x\n") ==
          std::vector<std::string>{"inline.yaml:3:1: invalid YAML: unexpected ','"});
  }
}

TEST_SUITE("schema") {
  TEST_CASE(
      "regression: an input_schema with an invalid pattern loaded, then threw std::regex_error "
      "out of validation") {
    // fuzz_input_schema: valijson builds a pattern's regex only when it validates a value.
    CHECK(compile_problem(R"({"type": "string", "pattern": "a{1"})") ==
          "invalid JSON Schema: pattern: 'a{1' is not a valid regular expression (Mismatched '{' "
          "and '}' in regular expression)");
    CHECK(compile_problem(R"({"patternProperties": {"(": {}}})") ==
          "invalid JSON Schema: patternProperties.(: '(' is not a valid regular expression "
          "(Mismatched '(' and ')' in regular expression)");
    const auto problems = problems_of_text(input_schema_yaml("{type: string, pattern: 'a{1'}"));
    REQUIRE(problems.size() == 1);
    CHECK(
        problems[0].starts_with("inline.yaml:3:5: flow 'f': input_schema: invalid JSON Schema: "
                                "pattern: 'a{1' is not a valid regular expression"));
  }

  TEST_CASE("a regular expression under a key that names a property is still contained") {
    // A property named "enum" holds a schema; compile() does not descend into "enum", so the
    // invalid pattern is met at validation, which reports it instead of throwing.
    auto schema = detail::JsonSchema::compile(
        nlohmann::json::parse(R"({"properties": {"enum": {"pattern": "a{1"}}})"));
    REQUIRE(schema);
    const auto problems = schema->validate(nlohmann::json::parse(R"({"enum": "x"})"));
    REQUIRE(problems.size() == 1);
    CHECK(problems[0].message.starts_with("the schema could not be applied: "));
  }

  TEST_CASE(
      "regression: an input_schema whose $ref leads back to itself crashed every loader with a "
      "stack overflow") {
    // fuzz_input_schema: {"$ref": "ons/t"}; valijson recursed for ever parsing it.
    const std::string& loop = kLoop;
    CHECK(compile_problem(R"({"$ref": "#"})") == "invalid JSON Schema: (top level): " + loop);
    CHECK(compile_problem(R"({"allOf": [{"$ref": "#"}]})") ==
          "invalid JSON Schema: (top level): " + loop);
    CHECK(compile_problem(R"({"definitions": {"a": {"$ref": "#/definitions/b"},
                                              "b": {"anyOf": [{"$ref": "#/definitions/a"}]}},
                              "$ref": "#/definitions/a"})")
              .ends_with(loop));
    CHECK(compile_problem(R"({"$ref": "ons/t"})") ==
          "invalid JSON Schema: $ref: $ref 'ons/t' points outside this schema; only references "
          "inside it (#/definitions/...) are supported");
    const auto problems = problems_of_text(input_schema_yaml("{$ref: '#'}"));
    REQUIRE(problems.size() == 1);
    CHECK(problems[0] ==
          "inline.yaml:3:5: flow 'f': input_schema: invalid JSON Schema: (top "
          "level): " +
              loop);
  }

  TEST_CASE(
      "regression: a 200,000-character string checked against a pattern overflowed the stack "
      "(std::regex recursed once per character)") {
    auto schema = detail::JsonSchema::compile(nlohmann::json::parse(
        R"({"type": "object", "properties": {"name": {"type": "string", "pattern": "^(a|b)*$"}}})"));
    REQUIRE(schema);
    const std::string matching(200'000, 'a');
    CHECK(schema->validate({{"name", matching}}).empty());
    const auto problems = schema->validate({{"name", matching + "c"}});
    REQUIRE(problems.size() == 1);
    CHECK(problems[0].pointer == "/name");
  }

  TEST_CASE(
      "where only a depth-first match exists, what it would recurse over is capped at 4096 bytes, "
      "and nothing else is") {
    const std::string digits(200'000, '1');
    const std::string words(200'000, 'w');
    auto compile = [](const char* text) {
      auto schema = detail::JsonSchema::compile(nlohmann::json::parse(text));
      REQUIRE(schema);
      return std::move(*schema);
    };
    auto only_problem = [](const detail::JsonSchema& schema, const nlohmann::json& value) {
      const auto problems = schema.validate(value);
      REQUIRE(problems.size() == 1);
      CHECK(problems[0].pointer == "/v");
      return problems[0].message;
    };
    SUBCASE("a pattern with back-references: strings") {
      const auto schema =
          compile(R"({"properties": {"v": {"type": "string", "pattern": "^(1)\\1*$"}}})");
      CHECK(schema.validate({{"v", "11"}}).empty());
      const auto message = only_problem(schema, {{"v", digits}});
      CHECK(message.find("the string is 200000 bytes") != std::string::npos);
      CHECK(message.find("back-references") != std::string::npos);
    }
    SUBCASE("a date format: runs of digits only") {
      const auto schema = compile(R"({"properties": {"v": {"type": "string", "format": "date"},
                                                     "text": {"type": "string"}}})");
      CHECK(schema.validate({{"v", "2026-11-22"}, {"text", words}}).empty());  // long, no digits
      const auto message = only_problem(schema, {{"v", digits}});
      CHECK(message.find("a run of digits in the string is 200000 bytes") != std::string::npos);
    }
    SUBCASE("patternProperties: keys only") {
      const auto schema = compile(R"({"patternProperties": {"^(a|b)*$": {"type": "string"}}})");
      CHECK(schema.validate({{"v", words}}).empty());  // a long value is not a key
      const auto problems = schema.validate({{std::string(5000, 'a'), "x"}});
      REQUIRE(problems.size() == 1);
      CHECK(problems[0].message.find("a key of this object is 5000 bytes") != std::string::npos);
    }
  }

  TEST_CASE("a recursive schema that descends into the value at each level still works") {
    // "#/" is "#" to valijson (see the regression below).
    for (const char* ref : {"#", "#/"}) {
      CAPTURE(std::string(ref));
      auto schema = detail::JsonSchema::compile({{"type", "array"}, {"items", {{"$ref", ref}}}});
      REQUIRE(schema);
      CHECK(schema->validate(nlohmann::json::parse("[[], [[]]]")).empty());
      CHECK(schema->validate(nlohmann::json::parse("[[1]]")).size() == 1);
    }
  }

  TEST_CASE(
      "regression: a $ref that valijson reads as the root ('#/', empty tokens) overflowed the "
      "stack") {
    // fuzz_input_schema: [{"$ref": "#/"}, {}]. valijson trims trailing '/' and skips empty
    // tokens, so "#/" is "#"; read as RFC 6901 reads it ("/": the key ""), it pointed nowhere and
    // the cycle went unseen.
    const std::string& loop = kLoop;
    CHECK(compile_problem(R"({"$ref": "#/"})") == "invalid JSON Schema: (top level): " + loop);
    CHECK(compile_problem(R"({"$ref": "#///"})") == "invalid JSON Schema: (top level): " + loop);
    CHECK(compile_problem(R"({"definitions": {"a": {"not": {"$ref": "#//definitions//a/"}}},
                              "$ref": "#/definitions/a"})")
              .ends_with(loop));
    // Escapes as valijson reads them: %61 is 'a', ~1 is '/'.
    CHECK(compile_problem(R"({"definitions": {"a/b": {"$ref": "#/definitions/%61~1b"}},
                              "$ref": "#/definitions/a~1b"})")
              .ends_with(loop));
    CHECK(compile_problem(R"({"allOf": [{"$ref": "#/allOf/0"}]})").ends_with(loop));
    // Hostile references: truncated escapes, a bad index, invalid UTF-8 once decoded, a pointer
    // of 100,000 empty tokens, a chain of 10,000 references. Each gets a message or compiles;
    // every message is UTF-8.
    std::string chain = R"({"definitions": {)";
    for (int i = 0; i < 10'000; ++i)
      chain += "\"d" + std::to_string(i) + R"(": {"$ref": "#/definitions/d)" +
               std::to_string(i + 1) + "\"}, ";
    chain += R"("d10000": {"$ref": "#/definitions/d0"}}, "$ref": "#/definitions/d0"})";
    CHECK(compile_problem(chain.c_str()).ends_with(loop));
    const std::string empty_tokens = R"({"$ref": "#)" + std::string(100'000, '/') + "\"}";
    CHECK(compile_problem(empty_tokens.c_str()).ends_with(loop));
    for (const char* text :
         {R"({"$ref": "#/definitions/%"})", R"({"$ref": "#/definitions/%6"})",
          R"({"$ref": "#/allOf/1x", "allOf": [{}]})", R"({"$ref": "#/allOf/-", "allOf": [{}]})",
          R"({"$ref": "#/allOf/99999999999999999999999", "allOf": [{}]})",
          R"({"$ref": "#/%FF%FE"})", R"({"$ref": "#/type/x", "type": "string"})"}) {
      const std::string schema_text = text;
      CAPTURE(schema_text);
      CHECK(detail::is_utf8(compile_problem(text)));
    }
  }

  TEST_CASE(
      "regression: a chain of 40,000 $refs without a cycle overflowed the stack; a schema valijson "
      "would recurse through too deeply is refused") {
    // Each definition a $ref to the next: 40,000 of them fit a flow file's limits, and valijson's
    // parser recursed once per $ref (20,000 did not overflow an 8 MB stack). Nested subschemas
    // cost it more: 80 definitions of 60 nested properties each overflowed it too.
    auto chain = [](int length, int nesting) {
      nlohmann::json definitions = nlohmann::json::object();
      for (int i = 0; i < length; ++i) {
        nlohmann::json node = {{"$ref", "#/definitions/d" + std::to_string(i + 1)}};
        for (int k = 0; k < nesting; ++k) node = {{"properties", {{"a", node}}}};
        definitions["d" + std::to_string(i)] = node;
      }
      definitions["d" + std::to_string(length)] = {{"type", "string"}};
      return nlohmann::json{{"definitions", definitions}, {"$ref", "#/definitions/d0"}};
    };
    auto problem = [](const nlohmann::json& schema) {
      auto compiled = detail::JsonSchema::compile(schema);
      return compiled ? std::string() : compiled.error().message;
    };
    CHECK(problem(chain(40'000, 0)) ==
          "invalid JSON Schema: (top level): compiling it would recurse through up to 40004 "
          "nested values (subschemas, the objects and arrays that hold them, $refs) on the way to "
          "definitions.d40000.type; at most 150 are supported: make its nesting or its chains of "
          "$refs shorter");
    CHECK(problem(chain(80, 60))
              .starts_with("invalid JSON Schema: (top level): compiling it would recurse through "
                           "up to 9684 nested "
                           "values"));
    CHECK(problem(chain(3, 60)).find("up to 367 nested values") != std::string::npos);

    // Under the bound, a chain of $refs and 60 levels of nested properties compile and check.
    auto refs = detail::JsonSchema::compile(chain(140, 0));
    REQUIRE(refs);
    CHECK(refs->validate("x").empty());
    CHECK(refs->validate(5).size() == 1);
    auto nested = detail::JsonSchema::compile(chain(1, 60));
    REQUIRE(nested);
    nlohmann::json value = 5;
    std::string pointer;
    for (int i = 0; i < 60; ++i) {
      value = {{"a", value}};
      pointer += "/a";
    }
    const auto problems = nested->validate(value);
    REQUIRE(problems.size() == 1);
    CHECK(problems[0].pointer == pointer);
    CHECK(nested->validate({{"a", {{"a", 5}}}}).empty());

    // A subschema reached by a differently written $ref is compiled again, and counted again.
    nlohmann::json twice = chain(80, 0);
    twice["allOf"] = {{{"$ref", "#/definitions/d0"}}};
    CHECK(problem(twice).empty());
    twice["allOf"].push_back({{"$ref", "#/definitions/d%30"}});  // %30 is '0'
    CHECK(problem(twice).find(
              "on the way to definitions.d80.type, each counted 2 times (valijson compiles a "
              "subschema again for each differently written $ref to it and each \"id\")") !=
          std::string::npos);

    // A $ref into values that are not schemas (whose nesting is not measured).
    CHECK(problem(nlohmann::json::parse(R"({"enum": [{"type": "string"}], "$ref": "#/enum/0"})")) ==
          "invalid JSON Schema: $ref: $ref '#/enum/0' points into an enum, const, default or "
          "examples, which holds values, not schemas");

    // A schema built in memory may hold any bytes: the message quotes the path as valid UTF-8.
    nlohmann::json deep_not = {{"type", "string"}};
    for (int i = 0; i < 200; ++i) deep_not = {{"not", deep_not}};
    const auto bytes =
        problem({{"definitions", {{"\xff\xfe", deep_not}}}, {"$ref", "#/definitions/%FF%FE"}});
    CHECK(bytes.find("compiling it would recurse through up to") != std::string::npos);
    CHECK(detail::is_utf8(bytes));

    // Where a flow file declares it: the file, the place, the reason.
    std::string yaml_chain = R"({"definitions": {)";
    for (int i = 0; i < 400; ++i)
      yaml_chain += "\"d" + std::to_string(i) + R"(": {"$ref": "#/definitions/d)" +
                    std::to_string(i + 1) + "\"}, ";
    yaml_chain += R"("d400": {}}, "$ref": "#/definitions/d0"})";
    const auto file_problems = problems_of_text(input_schema_yaml(yaml_chain));
    REQUIRE(file_problems.size() == 1);
    CHECK(file_problems[0].starts_with(
        "inline.yaml:3:5: flow 'f': input_schema: invalid JSON Schema: (top level): compiling it "
        "would recurse through up to 403 nested values"));
  }

  TEST_CASE(
      "a recursive schema is walked again at each level of the value: its same-value chains and "
      "the value's depth are bounded") {
    // A tree: each node's children are nodes. 30 levels of nodes are 60 levels of the value.
    auto tree = detail::JsonSchema::compile(nlohmann::json::parse(R"(
        {"definitions": {"node": {"type": "object", "required": ["name"],
                                  "properties": {"name": {"type": "string"},
                                                 "children": {"type": "array",
                                                              "items": {"$ref": "#/definitions/node"}}}}},
         "$ref": "#/definitions/node"})"));
    REQUIRE(tree);
    auto nodes = [](int depth, nlohmann::json leaf) {
      for (int i = 0; i < depth; ++i)
        leaf = {{"name", "n" + std::to_string(i)}, {"children", nlohmann::json::array({leaf})}};
      return leaf;
    };
    CHECK(tree->validate(nodes(31, {{"name", "leaf"}})).empty());
    CHECK(tree->validate(nodes(31, {{"name", 5}})).size() == 1);
    const auto deep = tree->validate(nodes(40, {{"name", "leaf"}}));
    REQUIRE(deep.size() == 1);
    CHECK(deep[0].message.ends_with(
        ": the value nests deeper than 64 levels, more than this recursive schema can check"));
    CHECK(deep[0].pointer.starts_with("/children/0/children/0/"));

    // A chain of allOf applied at each level: valijson recurses through the whole chain again for
    // each level of the value (1,200 in a row overflowed 256 KB of stack with g++ -O2). Each link
    // here is two subschemas: the allOf's item and the definition its $ref leads to.
    auto allof_chain = [](int length) {
      nlohmann::json definitions = nlohmann::json::object();
      for (int i = 0; i < length; ++i)
        definitions["d" + std::to_string(i)] = {
            {"allOf", {{{"$ref", "#/definitions/d" + std::to_string(i + 1)}}}}};
      definitions["d" + std::to_string(length)] = {
          {"properties", {{"a", {{"$ref", "#/definitions/d0"}}}}}};
      return nlohmann::json{{"definitions", definitions}, {"$ref", "#/definitions/d0"}};
    };
    auto within = detail::JsonSchema::compile(allof_chain(14));
    REQUIRE(within);
    nlohmann::json value = 5;
    for (int i = 0; i < 60; ++i) value = {{"a", value}};
    CHECK(within->validate(value).empty());
    auto beyond = detail::JsonSchema::compile(allof_chain(15));
    REQUIRE_FALSE(beyond);
    CHECK(beyond.error().message ==
          "invalid JSON Schema: (top level): this recursive schema may apply 32 subschemas in a "
          "row to one value ($ref, allOf, anyOf, oneOf, not, if/then/else, dependencies), again at "
          "each of up to 65 levels of the value; at most 2000 in all are supported, so such a "
          "chain may be at most 30 long");
  }

  TEST_CASE(
      "regression: a repetition count of 20 digits overflowed inside std::regex's parser, with or "
      "without its closing brace; "
      "repetitions that expand past 10,000 states are refused") {
    // fuzz_input_schema: a pattern with {99999999999999999999}; libstdc++ multiplies the digits
    // into a long without a check (undefined behaviour). Nested repetitions multiply the states
    // std::regex builds and walks for each character.
    CHECK(compile_problem(R"({"pattern": "a{99999999999999999999}"})") ==
          "invalid JSON Schema: pattern: 'a{99999999999999999999}' is not supported: its "
          "repetition count {99999999999999999999} is more than 10000");
    // The same count without its '}' (fuzz_input_schema again): libstdc++ reads the digits as a
    // count before it finds the brace missing.
    CHECK(compile_problem(R"({"pattern": "a{6666666666666666666666661"})") ==
          "invalid JSON Schema: pattern: 'a{6666666666666666666666661' is not supported: its "
          "repetition count {6666666666666666666666661 is more than 10000");
    CHECK(compile_problem(R"({"pattern": "a{1,99999999999999999999x"})")
              .ends_with("is not supported: its repetition count {1,99999999999999999999x is more "
                         "than 10000"));
    CHECK(compile_problem(R"({"patternProperties": {"^(ab{100}){100}$": {}}})")
              .ends_with("is not supported: it would expand to more than 10000 states (one per "
                         "character, and repetitions multiply what they repeat); write it "
                         "shorter or with smaller counts"));
    CHECK(compile_problem(R"({"pattern": "((a{30}){30}){30}"})").find("more than 10000 states") !=
          std::string::npos);
    // What real schemas write still compiles, and an escaped or bracketed '{' is a character.
    for (const char* ok :
         {R"({"pattern": "^[^\\u0000]{1,4096}$"})", R"({"pattern": "^(\\d{1,3}\\.){3}\\d{1,3}$"})",
          R"({"pattern": "^[a-z]{2}-[A-Z]{2,}$"})", R"({"pattern": "^[{]{0,2}\\{99999999\\}$"})",
          R"({"pattern": "[{99999999999}]"})"}) {
      const std::string text = ok;
      CAPTURE(text);
      CHECK(compile_problem(ok).empty());
    }
    // Hostile patterns: std::regex's parser recursed once per character and per nested group, so
    // a 100,000-character pattern or 30,000 nested groups overflowed an 8 MB stack. Long or deep
    // ones are refused before it sees them; truncated ones get its own message.
    auto pattern_problem = [](const std::string& pattern) {
      auto compiled = detail::JsonSchema::compile({{"pattern", pattern}});
      return compiled ? std::string() : compiled.error().message;
    };
    CHECK(pattern_problem(std::string(9'000, 'a')).empty());
    CHECK(pattern_problem(std::string(200'000, 'a')).find("more than 10000 states") !=
          std::string::npos);
    CHECK(pattern_problem(std::string(1'000, '(') + "a" + std::string(1'000, ')')).empty());
    CHECK(pattern_problem(std::string(30'000, '(') + "a" + std::string(30'000, ')'))
              .ends_with("is not supported: its groups nest more than 1000 deep"));
    // A million alternatives inside 1,000 groups: checked in one pass, then refused by std::regex's
    // own limit on states.
    CHECK(pattern_problem(std::string(1'000, '(') + std::string(1'000'000, '|') +
                          std::string(1'000, ')'))
              .find("Number of NFA states exceeds limit") != std::string::npos);
    for (const std::string truncated : {"a{12", "[abc", "ab\\", "(a", "a{1,", "\xff(", "[\\"}) {
      CAPTURE(truncated);
      CHECK(detail::is_utf8(pattern_problem(truncated)));
    }
  }

  TEST_CASE("a problem's message is made whatever the subschema it reads holds") {
    // The message of a problem quotes the subschema the value's pointer leads to (its description,
    // its enum, its types); here those are not what the message expects.
    for (const char* text :
         {R"({"properties": {"a": {"type": "string", "description": 5}}})",
          // valijson's problem comes from a subschema the message's lookup does not follow.
          R"({"properties": {"a": {"allOf": [{"enum": ["x", "y"]}]}}})",
          R"({"properties": {"a": {"anyOf": [{"type": "string", "maxLength": 0}]}}})"}) {
      const std::string schema_text = text;
      CAPTURE(schema_text);
      auto schema = detail::JsonSchema::compile(nlohmann::json::parse(text));
      REQUIRE(schema);
      const auto problems = schema->validate(nlohmann::json{{"a", 1}});
      REQUIRE(problems.size() == 1);
      CHECK(problems[0].pointer == "/a");
    }
  }

  TEST_CASE("regression: a percent-escape in a $ref gave a schema error that is not UTF-8") {
    // fuzz_input_schema: valijson decodes "%EF" to the raw byte and quotes the token it could not
    // find; the message replaces that byte.
    const std::string problem = compile_problem(R"({"$ref": "#/%EFinitions"})");
    CHECK(detail::is_utf8(problem));
    CHECK(problem ==
          "invalid JSON Schema: Expected reference token to identify an element in the current "
          "object; actual token: \xef\xbf\xbdinitions");
  }
}

TEST_SUITE("model") {
  TEST_CASE("regression: an invalid slug character was quoted by its first byte only") {
    // fuzz_flow_yaml: the module 's\xEF\xBF\xBDtyles' was reported as containing '\xEF'.
    CHECK(slug_problem("caf\xc3\xa9") ==
          "contains '\xc3\xa9'; only lowercase letters, digits and '_' are allowed");
    CHECK(slug_problem("a\xf0\x9f\x99\x82") ==
          "contains '\xf0\x9f\x99\x82'; only lowercase letters, digits and '_' are allowed");
    CHECK(detail::is_utf8(slug_problem("a\xe9")));
    CHECK(slug_problem("a-b") ==
          "contains '-'; only lowercase letters, digits and '_' are allowed");
  }
}
