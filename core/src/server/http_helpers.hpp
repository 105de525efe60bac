#pragma once
// What every route of `flowreg serve` uses to read a request and to answer: the content types, the
// RFC 9457 problem replies, the HTTP status an Error means, JSON replies, the dashboard's error
// page. Private to server/.
//
// Thread-safety: plain functions of their arguments; safe from any request thread.

#include <string_view>
#include <vector>

#include "app/forms.hpp"
#include "flowreg/error.hpp"
#include "server/http_message.hpp"

namespace flowreg::detail::http {

using app::json;

inline constexpr const char* kJson = "application/json";
inline constexpr const char* kProblemJson = "application/problem+json";
inline constexpr const char* kHtml = "text/html; charset=utf-8";

// The reason phrase of a status the server sends.
std::string_view reason(int status);

// An RFC 9457 problem: type about:blank, the status's title, the CLI's message as detail, and
// each problem of a validation in "errors".
void problem(Response& res, int status, std::string_view detail,
             const std::vector<Diagnostic>& details = {});

// The status an Error of the store or the catalogue means over HTTP.
int status_of(const Error& e);

void send_error(Response& res, const Error& e);  // problem(status_of(e), e.message, e.details)
void send_json(Response& res, const json& body, int status = 200);

// The dashboard's error page, for the HTML routes (the API answers problem() instead).
void html_error(Response& res, int status, std::string_view detail);

// A run id as the store writes it (8-4-4-4-12 hexadecimal digits): anything else names no run,
// and is refused before it reaches the database.
bool is_uuid(std::string_view s);

}  // namespace flowreg::detail::http
