#pragma once
// The sign-in routes of `flowreg serve`'s dashboard: GET /signin (the page), POST /signin (the
// token, from the page's form; a session cookie in return) and POST /logout. A browser that signed
// in carries the session cookie (sessions.hpp) instead of the token: server.cpp accepts either.
//
// The handlers use only the part of the request/response API that the routes may use (req.method,
// req.path, req.body, get_header_value, get_param_value; res.status, set_content, set_header).
//
// Thread-safety: plain functions of their arguments; the SessionStore is safe for concurrent use.

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "server/http_helpers.hpp"
#include "server/sessions.hpp"

namespace flowreg::detail::signin {

inline constexpr std::size_t kMaxFormBytes = 4 * 1024;
inline constexpr std::size_t kMaxNextBytes = 1024;

// Whether `next` is a path of this server to send the browser to after signing in: it starts with
// one '/' (not "//" nor "/\", which browsers read as another host), holds only printable ASCII
// (no space, no '\', no control byte), and is at most kMaxNextBytes long. Anything else (a URL
// with a scheme, "javascript:...") could send the browser away from the server (an open redirect).
bool is_local_path(std::string_view next);

// The fields of the sign-in form (application/x-www-form-urlencoded: '&'-separated name=value
// pairs, '+' for a space, %XX escapes). Other fields are ignored; of a field given twice, the first
// counts.
struct SigninForm {
  std::string token;
  std::string next;
};
// nullopt when the body is longer than kMaxFormBytes or holds a malformed %-escape.
std::optional<SigninForm> parse_form(std::string_view body);

// The sign-in page: a form that POSTs `token` and `next` to /signin, and `error` above it when
// not empty. `next` is kept only when is_local_path. Every value is HTML-escaped.
std::string page(std::string_view next, std::string_view error);

// GET /signin[?next=PATH]
void signin_get(const http::Request& req, http::Response& res);
// POST /signin: a valid token gets a new session (its cookie) and 303 See Other to the form's
// `next` (default "/"); a wrong one 401 with the page and its error, counted in the store.
// `check_token` compares in constant time; `secure`: the browser reaches the server over TLS.
void signin_post(const http::Request& req, http::Response& res, SessionStore& store,
                 const std::function<bool(std::string_view)>& check_token, bool secure,
                 SessionStore::TimePoint now = SessionStore::Clock::now());
// POST /logout: ends the request's session, clears its cookie, 303 See Other to /signin.
void logout_post(const http::Request& req, http::Response& res, SessionStore& store, bool secure);

// Whether the request carries the cookie of a session that is valid at `now`.
bool signed_in(const http::Request& req, SessionStore& store,
               SessionStore::TimePoint now = SessionStore::Clock::now());

}  // namespace flowreg::detail::signin
