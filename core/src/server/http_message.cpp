#include "server/http_message.hpp"

#include <algorithm>
#include <cctype>

namespace flowreg::detail::http {

namespace {

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

bool CaseLess::operator()(std::string_view a, std::string_view b) const noexcept {
  return std::lexicographical_compare(a.begin(), a.end(), b.begin(), b.end(), [](char x, char y) {
    return std::tolower(static_cast<unsigned char>(x)) <
           std::tolower(static_cast<unsigned char>(y));
  });
}

std::string Request::get_header_value(std::string_view name, std::size_t i) const {
  auto [first, last] = headers.equal_range(name);
  for (; first != last; ++first, --i)
    if (i == 0) return first->second;
  return {};
}

std::size_t Request::get_header_value_count(std::string_view name) const {
  return headers.count(name);
}

bool Request::has_header(std::string_view name) const { return headers.contains(name); }

std::string Request::get_param_value(std::string_view name) const {
  const auto it = params.find(name);
  return it == params.end() ? std::string() : it->second;
}

bool Request::has_param(std::string_view name) const { return params.contains(name); }

void Response::set_content(std::string content, std::string_view type) {
  body = std::move(content);
  set_header("Content-Type", std::string(type));
}

void Response::set_header(std::string_view name, std::string value) {
  headers.erase(std::string(name));
  headers.emplace(std::string(name), std::move(value));
}

std::string Response::get_header_value(std::string_view name) const {
  const auto it = headers.find(name);
  return it == headers.end() ? std::string() : it->second;
}

bool Response::has_header(std::string_view name) const { return headers.contains(name); }

void Router::Get(std::string pattern, Handler handler, Work work) {
  std::regex re(pattern);
  routes_.push_back({"GET", std::move(pattern), std::move(re), std::move(handler), work});
}

void Router::Post(std::string pattern, Handler handler, Work work) {
  std::regex re(pattern);
  routes_.push_back({"POST", std::move(pattern), std::move(re), std::move(handler), work});
}

Router::Match Router::route(Request& req) const {
  Match out;
  if (req.route >= 0) {  // found before (matches kept)
    const Route& r = routes_[static_cast<std::size_t>(req.route)];
    out.found = Found::route;
    out.handler = &r.handler;
    out.pattern = r.pattern;
    out.quick = r.work == Work::quick;
    return out;
  }
  const std::string_view method = req.method == "HEAD" ? std::string_view("GET") : req.method;
  for (std::size_t i = 0; i < routes_.size(); ++i) {
    const Route& r = routes_[i];
    std::smatch m;
    if (!std::regex_match(req.path, m, r.re)) continue;
    if (r.method == method) {
      req.matches = std::move(m);
      req.route = static_cast<int>(i);
      out.found = Found::route;
      out.handler = &r.handler;
      out.pattern = r.pattern;
      out.quick = r.work == Work::quick;
      out.allow.clear();
      return out;
    }
    out.found = Found::wrong_method;
    out.pattern = r.pattern;
    if (!out.allow.empty()) out.allow += ", ";
    out.allow += r.method == "GET" ? "GET, HEAD" : r.method;
  }
  req.route = -1;
  return out;
}

namespace {

// percent_decode, and form_decode when `strict`: then nullopt for a '%' not followed by two hex
// digits, which percent_decode keeps as sent.
std::optional<std::string> decode(std::string_view text, bool plus_is_space, bool strict) {
  std::string out;
  out.reserve(text.size());
  for (std::size_t i = 0; i < text.size(); ++i) {
    const char c = text[i];
    if (c == '%') {
      const int hi = i + 2 < text.size() ? hex_value(text[i + 1]) : -1;
      const int lo = i + 2 < text.size() ? hex_value(text[i + 2]) : -1;
      if (hi >= 0 && lo >= 0) {
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
        continue;
      }
      if (strict) return std::nullopt;
    }
    out += plus_is_space && c == '+' ? ' ' : c;
  }
  return out;
}

}  // namespace

std::string percent_decode(std::string_view text, bool plus_is_space) {
  return *decode(text, plus_is_space, false);
}

std::optional<std::string> form_decode(std::string_view text) { return decode(text, true, true); }

std::string percent_encode(std::string_view text) {
  static constexpr char kHex[] = "0123456789ABCDEF";
  std::string out;
  for (const char c : text) {
    const auto u = static_cast<unsigned char>(c);
    if (std::isalnum(u) || c == '-' || c == '.' || c == '_' || c == '~' || c == '/') {
      out += c;
    } else {
      out += '%';
      out += kHex[u >> 4];
      out += kHex[u & 15];
    }
  }
  return out;
}

Params parse_query(std::string_view query) {
  Params out;
  while (!query.empty()) {
    const auto amp = query.find('&');
    const std::string_view pair = query.substr(0, amp);
    query = amp == std::string_view::npos ? std::string_view() : query.substr(amp + 1);
    if (pair.empty()) continue;
    const auto eq = pair.find('=');
    out.emplace(
        percent_decode(pair.substr(0, eq), true),
        eq == std::string_view::npos ? std::string() : percent_decode(pair.substr(eq + 1), true));
  }
  return out;
}

}  // namespace flowreg::detail::http
