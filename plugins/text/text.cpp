// Example plugin "text": split a text into lines, count the words of one line, sum numbers.
// flows.example.yaml's word_count flow uses these handlers with a map step over the lines.

#include <flowreg/sdk.hpp>
#include <sstream>

using flowreg::sdk::json;
using flowreg::sdk::permanent_error;

namespace {

// {"text": "..."} -> ["line 1", "line 2", ...]
json split_lines(const json& input) {
  if (!input.is_object() || !input.contains("text") || !input["text"].is_string())
    throw permanent_error("split_lines: expected {\"text\": string}");
  json lines = json::array();
  std::istringstream in(input["text"].get<std::string>());
  for (std::string line; std::getline(in, line);) lines.push_back(line);
  return lines;
}

// "a line of words" -> 4
json count_words(const json& input) {
  if (!input.is_string()) throw permanent_error("count_words: expected a string");
  std::istringstream in(input.get<std::string>());
  std::size_t n = 0;
  for (std::string word; in >> word;) ++n;
  return n;
}

// {"count": [1, 2, 3]} (the output of one dependency, a list of numbers) -> 6
json sum(const json& input) {
  if (!input.is_object() || input.size() != 1)
    throw permanent_error("sum: expected the output of exactly one dependency");
  const json& numbers = input.begin().value();
  if (!numbers.is_array()) throw permanent_error("sum: expected a list of numbers");
  std::int64_t total = 0;
  for (const auto& n : numbers) {
    if (!n.is_number_integer()) throw permanent_error("sum: expected integers, got " + n.dump());
    total += n.get<std::int64_t>();
  }
  return total;
}

}  // namespace

FLOWREG_PLUGIN(text) {
  plugin.handler("split_lines", split_lines);
  plugin.handler("count_words", count_words);
  plugin.handler("sum", sum);

  auto& flow = plugin.flow("text_stats").description("Count the lines and words of a text");
  flow.input_schema({{"type", "object"}, {"required", {"text"}}});
  flow.step("lines", "split_lines");
  flow.map_step("words", "count_words").depends_on({"lines"});
  flow.step("total", "sum").depends_on({"words"});
}
