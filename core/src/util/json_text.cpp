#include "util/json_text.hpp"

#include <fstream>
#include <utility>
#include <vector>

#include "util/strings.hpp"

namespace flowreg::detail {

std::string json_text(const nlohmann::json& j, int indent) {
  return j.dump(indent, ' ', false, nlohmann::json::error_handler_t::replace);
}

std::string json_text(const nlohmann::ordered_json& j, int indent) {
  return j.dump(indent, ' ', false, nlohmann::ordered_json::error_handler_t::replace);
}

nlohmann::ordered_json ordered_copy(const nlohmann::json& j) {
  // Built member by member into ordered_json's underlying vector: its own insertion searches the
  // keys already there, so parsing or inserting an object of n keys costs n^2 (an input of 100,000
  // keys took 7.6 s to print as JSON). The keys of `j` are distinct and sorted, as they stay here.
  // Iterative: a value read from the database may nest thousands of levels. Strings and keys are
  // made valid UTF-8, as the text round trip this replaces made them.
  using json = nlohmann::ordered_json;
  using Members = std::vector<std::pair<const std::string, json>>;
  json out;
  std::vector<std::pair<const nlohmann::json*, json*>> pending{{&j, &out}};
  while (!pending.empty()) {
    auto [from, to] = pending.back();
    pending.pop_back();
    switch (from->type()) {
      case nlohmann::json::value_t::object: {
        *to = json::object();
        auto& members = static_cast<Members&>(to->get_ref<json::object_t&>());
        members.reserve(from->size());
        for (const auto& [key, value] : from->items())
          members.emplace_back(utf8_valid(key), nullptr);
        std::size_t i = 0;
        for (const auto& [key, value] : from->items())
          pending.emplace_back(&value, &members[i++].second);
        break;
      }
      case nlohmann::json::value_t::array: {
        *to = json::array();
        auto& items = to->get_ref<json::array_t&>();
        items.resize(from->size());
        for (std::size_t i = 0; i < from->size(); ++i) pending.emplace_back(&(*from)[i], &items[i]);
        break;
      }
      case nlohmann::json::value_t::string:
        *to = utf8_valid(from->get_ref<const std::string&>());
        break;
      case nlohmann::json::value_t::boolean:
        *to = from->get<bool>();
        break;
      case nlohmann::json::value_t::number_integer:
        *to = from->get<std::int64_t>();
        break;
      case nlohmann::json::value_t::number_unsigned:
        *to = from->get<std::uint64_t>();
        break;
      case nlohmann::json::value_t::number_float:
        *to = from->get<double>();
        break;
      default:  // null, and the binary and discarded values JSON text cannot hold
        *to = nullptr;
    }
  }
  return out;
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

nlohmann::json parse_state_file_text(std::string_view text) {
  if (nesting_beyond(text, kMaxStateDepth))
    return nlohmann::json(nlohmann::json::value_t::discarded);
  return nlohmann::json::parse(text, nullptr, /*allow_exceptions=*/false);
}

nlohmann::json parse_state_file(const std::filesystem::path& path) {
  const nlohmann::json unreadable(nlohmann::json::value_t::discarded);
  std::error_code ec;
  const auto size = std::filesystem::file_size(path, ec);
  if (ec || size > kMaxStateFileBytes) return unreadable;
  std::ifstream in(path, std::ios::binary);
  if (!in) return unreadable;
  std::string text(size, '\0');
  in.read(text.data(), static_cast<std::streamsize>(size));
  text.resize(static_cast<std::size_t>(in.gcount()));  // it may have shrunk since
  return parse_state_file_text(text);
}

}  // namespace flowreg::detail
