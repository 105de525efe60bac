#include "flowreg/error.hpp"

namespace flowreg {

std::string_view to_string(Errc code) noexcept {
  switch (code) {
    case Errc::invalid_argument:
      return "invalid_argument";
    case Errc::invalid_definition:
      return "invalid_definition";
    case Errc::not_found:
      return "not_found";
    case Errc::duplicate_module:
      return "duplicate_module";
    case Errc::duplicate_slug:
      return "duplicate_slug";
    case Errc::io:
      return "io";
    case Errc::parse:
      return "parse";
    case Errc::not_started:
      return "not_started";
    case Errc::plugin:
      return "plugin";
    case Errc::database:
      return "database";
    case Errc::unavailable:
      return "unavailable";
    case Errc::internal:
      return "internal";
  }
  return "unknown";
}

std::string Location::format() const {
  if (file.empty()) return {};
  if (line <= 0) return file;
  return file + ":" + std::to_string(line) + ":" + std::to_string(column > 0 ? column : 1);
}

std::string Diagnostic::format() const {
  std::string where_text = where.format();
  return where_text.empty() ? message : where_text + ": " + message;
}

std::string Error::format() const {
  std::string out = message;
  for (const auto& d : details) {
    out += "\n  ";
    out += d.format();
  }
  return out;
}

}  // namespace flowreg
