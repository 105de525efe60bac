#pragma once
// Errors and diagnostics shared by every part of flowreg's public API.
//
// Recoverable failures at API boundaries are returned as flowreg::Result<T> (tl::expected, the same
// API as C++23 std::expected). Validation never stops at the first problem: it returns every
// Diagnostic it found, each with the place it refers to.

#include <string>
#include <string_view>
#include <tl/expected.hpp>
#include <vector>

namespace flowreg {

enum class Errc {
  invalid_argument,    // a caller passed something malformed (bad slug, bad JSON, ...)
  invalid_definition,  // a flow or module definition failed validation (see Error::details)
  not_found,           // no such flow, module, run, ...
  duplicate_module,    // a module of that name is already registered
  duplicate_slug,      // a flow slug is already registered by another module
  io,                  // reading or writing a file failed
  parse,               // a file could not be parsed (YAML, JSON)
  not_started,         // the component is not running
  plugin,              // a plugin could not be loaded or failed at the boundary
  database,            // PostgreSQL refused a statement or failed
  unavailable,         // the database cannot be reached now (down, restarting, connection lost):
                       // retry later with a new connection
  internal,            // a broken invariant: a bug in flowreg
};

std::string_view to_string(Errc code) noexcept;

// A place in an input: a file and, when known, a 1-based line and column (0 = unknown).
struct Location {
  std::string file;
  int line = 0;
  int column = 0;

  // "file:line:col", "file" or "" depending on what is known.
  std::string format() const;
  friend bool operator==(const Location&, const Location&) = default;
};

// One problem found in an input, with where it is.
struct Diagnostic {
  Location where;
  std::string message;

  // "file:line:col: message", "file: message" or "message".
  std::string format() const;
};

struct Error {
  Errc code = Errc::internal;
  std::string message;              // names the object and the reason
  std::vector<Diagnostic> details;  // every individual problem, when there are several

  // message, then each detail on its own line.
  std::string format() const;
};

template <class T>
using Result = tl::expected<T, Error>;

inline tl::unexpected<Error> make_error(Errc code, std::string message,
                                        std::vector<Diagnostic> details = {}) {
  return tl::unexpected<Error>(Error{code, std::move(message), std::move(details)});
}

}  // namespace flowreg
