#pragma once
// YAML -> JSON with positions. The only place (with config.cpp) that includes yaml-cpp.
//
// Scalars are typed by the YAML 1.2 core schema (plain `true`, `12`, `1.5`, `null`, `~`; anything
// quoted is a string). Refused with a positioned diagnostic instead of crashing, hanging or
// allocating without bound: files over a size limit, several documents, nesting deeper than a
// limit, duplicate keys, non-scalar keys, and documents whose aliases expand to more nodes than a
// limit (yaml-cpp shares aliased nodes, so an exponential "billion laughs" costs nothing until it
// is walked; the walk stops at the node budget) or to more bytes than a limit.

#include <cstddef>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <tl/expected.hpp>
#include <unordered_map>
#include <vector>

#include "flowreg/error.hpp"

namespace flowreg::detail {

struct YamlLimits {
  std::size_t max_file_bytes = 4u << 20;
  int max_depth = 64;
  std::size_t max_nodes = 200'000;
  // The bytes of the converted document: its keys and scalars, and the JSON pointer of each node
  // (the position index), counted as its aliases are expanded. Without it a long key over many
  // nodes (each node's pointer repeats it) or a long scalar aliased many times grows without bound
  // inside the other limits: a 3.4 MB file asked for about 570 GB.
  std::size_t max_expanded_bytes = 64u << 20;
};

struct PositionedJson {
  nlohmann::json value;
  std::string file;
  // JSON pointer of every node -> where it starts (1-based line and column).
  std::unordered_map<std::string, std::pair<int, int>> positions;

  // The position of the node at `pointer`, or of its nearest ancestor that has one.
  Location locate(std::string_view pointer) const;
};

tl::expected<PositionedJson, std::vector<Diagnostic>> parse_yaml(std::string_view text,
                                                                 const std::string& file,
                                                                 const YamlLimits& limits = {});
tl::expected<PositionedJson, std::vector<Diagnostic>> load_yaml_file(
    const std::filesystem::path& path, const YamlLimits& limits = {});

// The content of a regular file of at most `max_bytes` (never opens FIFOs or devices, which could
// block), or a Diagnostic naming the file and the reason.
tl::expected<std::string, Diagnostic> read_text_file(const std::filesystem::path& path,
                                                     std::size_t max_bytes);

}  // namespace flowreg::detail
