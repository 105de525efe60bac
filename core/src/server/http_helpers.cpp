#include "server/http_helpers.hpp"

#include <cctype>

#include "server/dashboard.hpp"
#include "util/json_text.hpp"

namespace flowreg::detail::http {

std::string_view reason(int status) {
  switch (status) {
    case 400:
      return "Bad Request";
    case 401:
      return "Unauthorized";
    case 403:
      return "Forbidden";
    case 404:
      return "Not Found";
    case 405:
      return "Method Not Allowed";
    case 409:
      return "Conflict";
    case 413:
      return "Content Too Large";
    case 415:
      return "Unsupported Media Type";
    case 422:
      return "Unprocessable Content";
    case 503:
      return "Service Unavailable";
    default:
      return status >= 500 ? "Internal Server Error" : "Error";
  }
}

void problem(Response& res, int status, std::string_view detail,
             const std::vector<Diagnostic>& details) {
  json body = {{"type", "about:blank"},
               {"title", reason(status)},
               {"status", status},
               {"detail", app::valid_text(detail)}};
  if (!details.empty()) {
    json errors = json::array();
    for (const auto& d : details) errors.push_back(app::valid_text(d.format()));
    body["errors"] = std::move(errors);
  }
  res.status = status;
  res.set_content(json_text(body), kProblemJson);
}

int status_of(const Error& e) {
  switch (e.code) {
    case Errc::not_found:
      return 404;
    case Errc::invalid_argument:
      return 409;
    case Errc::parse:
      return 400;
    case Errc::unavailable:
      return 503;
    default:
      return 500;
  }
}

void send_error(Response& res, const Error& e) { problem(res, status_of(e), e.message, e.details); }

void send_json(Response& res, const json& body, int status) {
  res.status = status;
  res.set_content(json_text(body), kJson);
}

void html_error(Response& res, int status, std::string_view detail) {
  res.status = status;
  res.set_content(dashboard::error_page(status, reason(status), detail), kHtml);
}

bool is_uuid(std::string_view s) {
  if (s.size() != 36) return false;
  for (std::size_t i = 0; i < s.size(); ++i) {
    const char c = s[i];
    if (i == 8 || i == 13 || i == 18 || i == 23) {
      if (c != '-') return false;
    } else if (!std::isxdigit(static_cast<unsigned char>(c))) {
      return false;
    }
  }
  return true;
}

}  // namespace flowreg::detail::http
