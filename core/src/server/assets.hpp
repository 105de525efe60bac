#pragma once
// The dashboard's stylesheet and script, and the OpenAPI document, compiled into the binary: the
// dashboard needs no CDN and works with no internet.

namespace flowreg::detail::assets {

extern const char* const kCss;      // /static/app.css
extern const char* const kJs;       // /static/app.js
extern const char* const kOpenApi;  // schemas/openapi.json, served at /api/v1/openapi.json

}  // namespace flowreg::detail::assets
