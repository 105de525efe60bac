#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace flowreg::detail {

// Levenshtein distance.
std::size_t edit_distance(std::string_view a, std::string_view b);
// The candidate closest to `word` when it is close enough to be a likely typo, else "".
std::string closest_match(std::string_view word, std::span<const std::string> candidates);

// UTF-8 at the boundaries. Every string that comes from outside the process (file names, plugin
// strings, handler outputs and errors, child processes' output, rows of PostgreSQL) is passed
// through utf8_valid() where it enters, so that nothing downstream (the JSON serializer, the
// database, a terminal) ever sees invalid UTF-8.

// True when `text` is well-formed UTF-8 (RFC 3629: no overlong forms, no surrogates, at most
// U+10FFFF).
bool is_utf8(std::string_view text) noexcept;
// The offset of the first byte of `text` that does not start a well-formed sequence (a truncated
// sequence at the end included), or std::string_view::npos when `text` is well-formed UTF-8.
std::size_t utf8_invalid_at(std::string_view text) noexcept;
// `text` with each maximal invalid subsequence replaced by U+FFFD (the "substitution of maximal
// subparts" of Unicode chapter 3, as WHATWG's decoder does). Valid text is returned unchanged.
std::string utf8_valid(std::string_view text);
// The longest prefix of `text` of at most `max_bytes` bytes that does not end inside a character.
std::string_view utf8_prefix(std::string_view text, std::size_t max_bytes) noexcept;
// `text` for a message: made valid (utf8_valid), and when that is longer than `max_bytes`, its
// utf8_prefix of `max_bytes` followed by "... (N bytes)", N being the size of `text` as given.
std::string bounded_text(std::string_view text, std::size_t max_bytes);

// Appends `token` to a JSON pointer, escaping '~' and '/' (RFC 6901: as ~0 and ~1).
std::string pointer_append(std::string_view pointer, std::string_view token);

}  // namespace flowreg::detail
