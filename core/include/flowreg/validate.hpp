#pragma once
// Validation rules of the flow model. Every rule reports each violation it finds; none stops at the
// first.
//
// Identifiers (flow, step and module slugs, and both halves of a handler name) match
// ^[a-z][a-z0-9_]{0,62}$ : lowercase ASCII, a letter first, at most 63 characters, so that every
// identifier fits a PostgreSQL identifier (NAMEDATALEN 64) and a LISTEN channel name unquoted.

#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "flowreg/error.hpp"
#include "flowreg/flow.hpp"

namespace flowreg {

inline constexpr std::size_t kMaxSlugLength = 63;
inline constexpr std::size_t kMaxSteps = 1000;
inline constexpr std::size_t kMaxDescriptionLength = 4096;

bool is_valid_slug(std::string_view slug) noexcept;
// "module.handler" with both halves valid slugs.
bool is_valid_handler_name(std::string_view handler) noexcept;

// Maps a JSON pointer relative to the flow being validated ("/steps/2/depends_on/0") to a Location.
// Loaders that know positions (YAML) pass one; the default gives the flow's source file only.
using Locator = std::function<Location(std::string_view pointer)>;

// Every problem of `flow`, each located through `locate`. Empty when the flow is valid.
std::vector<Diagnostic> validate_flow(const FlowDef& flow, const Locator& locate = {});

// Why a retention age (Retention) is refused, or nullopt: it is Retention::kKeep or 1s to
// Retention::kMaxAge. "retention 0s is out of range 1s..3660d (or keep)".
std::optional<std::string> retention_age_problem(Millis age);

// The reason a slug is invalid ("" when it is valid), for messages: "must start with a letter", ...
std::string slug_problem(std::string_view slug);

}  // namespace flowreg
