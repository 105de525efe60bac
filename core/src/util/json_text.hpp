#pragma once
// JSON as text, where it crosses the process's boundaries: one serializer that never throws, and
// one bound on nesting checked on raw text before anything recursive (nlohmann's dump(), copies,
// comparisons, destructors of older versions, schema validation) sees a value of unknown depth.
// nlohmann's parser is iterative, so a parsed value can be nested millions of levels deep; the
// code that walks it afterwards recurses once per level and would overflow its thread's stack.

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>

namespace flowreg::detail {

// `j` as JSON text, compact (indent -1) or indented. Invalid UTF-8 in a string becomes U+FFFD
// instead of an exception: strings are made valid where they enter, this is the second line of
// defence so that serializing never throws.
std::string json_text(const nlohmann::json& j, int indent = -1);
std::string json_text(const nlohmann::ordered_json& j, int indent = -1);

// `j` as ordered_json (its keys in their sorted order), in time linear in its size, without
// recursing; strings and keys are made valid UTF-8. (ordered_json's own insertion, and so its
// parser, searches the keys already in an object: n keys cost n^2.)
nlohmann::ordered_json ordered_copy(const nlohmann::json& j);

// A place in a text: 1-based line, 1-based column (in bytes).
struct TextPlace {
  int line = 1;
  int column = 1;
};

// The place of the first '[' or '{' of `text` that opens a level deeper than `limit`, or nullopt
// when the text nests at most `limit` levels. Brackets inside strings (with their escapes) do not
// count; a stray closing bracket never takes the depth below zero. Reads the raw text only, so it
// works on text that is not valid JSON and never recurses.
std::optional<TextPlace> nesting_beyond(std::string_view text, std::size_t limit) noexcept;

// `text` parsed as JSON, or a discarded value when it is not JSON or nests deeper than
// kMaxStateDepth: for the files flowreg writes for itself (the plugin cache's owners, journal and
// quarantine records), which anyone who can write them could make nested millions of levels deep
// (copying or dumping such a value recursed once per level: 100,000 levels overflowed the stack).
constexpr std::size_t kMaxStateDepth = 64;
nlohmann::json parse_state_file_text(std::string_view text);
// The file at `path` read whole and parsed by parse_state_file_text; a discarded value when it
// cannot be read or is larger than kMaxStateFileBytes (flowreg's own state files hold a few
// records: one that large was not written by flowreg, and is not read into memory).
constexpr std::uintmax_t kMaxStateFileBytes = 16 << 20;
nlohmann::json parse_state_file(const std::filesystem::path& path);

}  // namespace flowreg::detail
