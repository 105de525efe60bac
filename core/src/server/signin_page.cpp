#include "server/signin_page.hpp"

#include <fmt/format.h>

#include <cctype>

#include "server/dashboard.hpp"

namespace flowreg::detail::signin {

namespace {

bool is_form_content(std::string_view type) {
  constexpr std::string_view kForm = "application/x-www-form-urlencoded";
  if (type.size() < kForm.size()) return false;
  for (std::size_t i = 0; i < kForm.size(); ++i)
    if (std::tolower(static_cast<unsigned char>(type[i])) != kForm[i]) return false;
  return type.size() == kForm.size() || type[kForm.size()] == ';' || type[kForm.size()] == ' ';
}

void answer_page(http::Response& res, int status, std::string_view next, std::string_view error) {
  res.status = status;
  res.set_header("Cache-Control", "no-store");
  res.set_content(page(next, error), http::kHtml);
}

}  // namespace

bool is_local_path(std::string_view next) {
  if (next.empty() || next.size() > kMaxNextBytes || next.front() != '/') return false;
  if (next.size() > 1 && (next[1] == '/' || next[1] == '\\')) return false;
  for (const char ch : next) {
    const auto c = static_cast<unsigned char>(ch);
    if (c <= 0x20 || c >= 0x7f || c == '\\') return false;
  }
  return true;
}

std::optional<SigninForm> parse_form(std::string_view body) {
  if (body.size() > kMaxFormBytes) return std::nullopt;
  SigninForm form;
  bool have_token = false, have_next = false;
  while (!body.empty()) {
    const std::size_t end = body.find('&');
    const std::string_view pair = body.substr(0, end);
    body = end == std::string_view::npos ? std::string_view() : body.substr(end + 1);
    const std::size_t eq = pair.find('=');
    const auto name = http::form_decode(pair.substr(0, eq));
    const auto value =
        http::form_decode(eq == std::string_view::npos ? std::string_view() : pair.substr(eq + 1));
    if (!name || !value) return std::nullopt;
    if (*name == "token" && !have_token) {
      form.token = std::move(*value);
      have_token = true;
    } else if (*name == "next" && !have_next) {
      form.next = std::move(*value);
      have_next = true;
    }
  }
  return form;
}

std::string page(std::string_view next, std::string_view error) {
  using dashboard::escape;
  return fmt::format(
      "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
      "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
      "<title>Sign in · flowreg</title><link rel=\"stylesheet\" href=\"/static/app.css\"></head>"
      "<body><header><span class=\"brand\">flowreg</span></header><main id=\"main\">"
      "<h1>Sign in</h1>{}"
      "<form class=\"filters\" method=\"post\" action=\"/signin\">"
      "<input type=\"hidden\" name=\"next\" value=\"{}\">"
      "<label>Token<input type=\"password\" name=\"token\" autocomplete=\"current-password\" "
      "required autofocus></label><button type=\"submit\">Sign in</button></form>"
      "<p class=\"muted\">This server needs its token (server.token or FLOWREG_TOKEN). This "
      "browser then keeps a session in a cookie until it signs out or the session expires.</p>"
      "</main></body></html>\n",
      error.empty() ? std::string()
                    : fmt::format("<p class=\"error\" role=\"alert\">{}</p>", escape(error)),
      escape(is_local_path(next) ? next : "/"));
}

void signin_get(const http::Request& req, http::Response& res) {
  answer_page(res, 200, req.get_param_value("next"), {});
}

void signin_post(const http::Request& req, http::Response& res, SessionStore& store,
                 const std::function<bool(std::string_view)>& check_token, bool secure,
                 SessionStore::TimePoint now) {
  if (!is_form_content(req.get_header_value("Content-Type")))
    return answer_page(res, 415, "/", "the form must be sent as application/x-www-form-urlencoded");
  if (req.body.size() > kMaxFormBytes)
    return answer_page(res, 413, "/",
                       fmt::format("the form is larger than {} bytes", kMaxFormBytes));
  const auto form = parse_form(req.body);
  if (!form) return answer_page(res, 400, "/", "the form has a malformed %-escape");
  const std::string next = is_local_path(form->next) ? form->next : "/";
  if (form->token.empty() || !check_token(form->token)) {
    store.count_failed_signin();
    return answer_page(res, 401, next, "the token is wrong");
  }
  res.status = 303;
  res.set_header("Location", next);
  res.set_header("Set-Cookie", set_cookie(store.create(now), store.ttl(), secure));
  res.set_header("Cache-Control", "no-store");
}

void logout_post(const http::Request& req, http::Response& res, SessionStore& store, bool secure) {
  if (const auto id = session_cookie(req.get_header_value("Cookie"))) store.revoke(*id);
  res.status = 303;
  res.set_header("Location", "/signin");
  res.set_header("Set-Cookie", clear_cookie(secure));
  res.set_header("Cache-Control", "no-store");
}

bool signed_in(const http::Request& req, SessionStore& store, SessionStore::TimePoint now) {
  const auto id = session_cookie(req.get_header_value("Cookie"));
  return id && store.valid(*id, now);
}

}  // namespace flowreg::detail::signin
