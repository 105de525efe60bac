#include "flowreg/error.hpp"

#include "util/enum_names.hpp"

namespace flowreg {

namespace {

constexpr detail::EnumName<Errc> kErrcNames[] = {{Errc::invalid_argument, "invalid_argument"},
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
                                                 {Errc::internal, "internal"}};

}  // namespace

std::string_view to_string(Errc code) noexcept { return detail::name_in(kErrcNames, code); }

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
