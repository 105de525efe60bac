#include "store/conninfo.hpp"

#include <libpq-fe.h>

#include <cstdlib>
#include <memory>
#include <string_view>

#include "util/strings.hpp"

namespace flowreg::detail {

namespace {

struct Default {
  const char* keyword;
  const char* value;
};
// clang-format off
constexpr Default kDefaults[] = {
    {"connect_timeout",     "5"},
    {"keepalives",          "1"},
    {"keepalives_idle",     "5"},
    {"keepalives_interval", "2"},
    {"keepalives_count",    "3"},
    {"tcp_user_timeout",    "5000"},
};
// clang-format on

struct ConninfoOptionsFree {
  void operator()(PQconninfoOption* options) const { PQconninfoFree(options); }
};
using ConninfoOptions = std::unique_ptr<PQconninfoOption, ConninfoOptionsFree>;

// A value quoted for a key=value conninfo: in single quotes, with \ and ' escaped.
std::string conninfo_quoted(std::string_view value) {
  std::string out = "'";
  for (char c : value) {
    if (c == '\\' || c == '\'') out += '\\';
    out += c;
  }
  out += '\'';
  return out;
}

bool env_set(const char* name) {
  const char* value = name ? std::getenv(name) : nullptr;
  return value != nullptr && *value != '\0';
}

}  // namespace

Result<std::map<std::string, std::string>> parse_conninfo(const std::string& conninfo) {
  char* error = nullptr;
  ConninfoOptions options(PQconninfoParse(conninfo.c_str(), &error));
  if (!options) {
    // libpq's message names the keyword or the place in the URL, never a value.
    std::string why = error ? std::string(error) : std::string("out of memory");
    PQfreemem(error);
    while (!why.empty() && (why.back() == '\n' || why.back() == ' ')) why.pop_back();
    // libpq quotes what it could not read, which comes from a configuration file: valid UTF-8.
    return make_error(Errc::invalid_argument,
                      "the database URL cannot be read: " + utf8_valid(why));
  }
  std::map<std::string, std::string> set;
  for (const PQconninfoOption* o = options.get(); o->keyword; ++o)
    if (o->val) set.emplace(o->keyword, o->val);
  return set;
}

std::string with_connection_defaults(const std::string& conninfo) {
  auto set = parse_conninfo(conninfo);
  if (!set) return conninfo;
  if (set->contains("service") || env_set("PGSERVICE")) return conninfo;
  // The keywords this libpq knows, with their environment variables.
  ConninfoOptions known(PQconndefaults());
  if (!known) return conninfo;
  std::string out;
  for (const auto& [keyword, value] : *set) {
    if (!out.empty()) out += ' ';
    out += keyword + '=' + conninfo_quoted(value);
  }
  for (const auto& d : kDefaults) {
    if (set->contains(d.keyword)) continue;
    const PQconninfoOption* option = known.get();
    while (option->keyword && std::string_view(option->keyword) != d.keyword) ++option;
    if (!option->keyword || env_set(option->envvar)) continue;  // unknown here, or set by the user
    if (!out.empty()) out += ' ';
    out += std::string(d.keyword) + '=' + d.value;
  }
  return out;
}

}  // namespace flowreg::detail
