#include "util/json_text.hpp"

namespace flowreg::detail {

std::string json_text(const nlohmann::json& j, int indent) {
  return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string json_text(const nlohmann::ordered_json& j, int indent) {
  return j.dump(indent, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

std::optional<TextPlace> nesting_beyond(std::string_view text, std::size_t limit) noexcept {
  std::size_t depth = 0;
  TextPlace at{1, 0};
  bool in_string = false, escaped = false;
  for (const char c : text) {
    ++at.column;
    if (c == '\n') {
      ++at.line;
      at.column = 0;
    }
    if (in_string) {
      if (escaped)
        escaped = false;
      else if (c == '\\')
        escaped = true;
      else if (c == '"')
        in_string = false;
    } else if (c == '"') {
      in_string = true;
    } else if (c == '[' || c == '{') {
      if (++depth > limit) return at;
    } else if ((c == ']' || c == '}') && depth > 0) {
      --depth;
    }
  }
  return std::nullopt;
}

}  // namespace flowreg::detail
