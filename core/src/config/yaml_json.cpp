#include "config/yaml_json.hpp"

#include <fmt/format.h>
#include <yaml-cpp/depthguard.h>
#include <yaml-cpp/eventhandler.h>
#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <optional>
#include <sstream>
#include <unordered_set>

#include "util/strings.hpp"

namespace flowreg::detail {

Location PositionedJson::locate(std::string_view pointer) const {
  std::string p(pointer);
  while (true) {
    if (auto it = positions.find(p); it != positions.end())
      return Location{file, it->second.first, it->second.second};
    if (p.empty()) return Location{file, 0, 0};
    p.erase(p.rfind('/'));
  }
}

namespace {

class Converter {
 public:
  Converter(PositionedJson& out, const YamlLimits& limits) : out_(out), limits_(limits) {}

  bool convert(const YAML::Node& node, const std::string& pointer, int depth,
               nlohmann::json& into) {
    if (++nodes_ > limits_.max_nodes) {
      if (!budget_reported_) {
        fail(node, fmt::format("the document has more than {} nodes once its aliases are expanded; "
                               "refusing it (exponentially nested YAML aliases?)",
                               limits_.max_nodes));
        budget_reported_ = true;
      }
      return false;
    }
    if (depth > limits_.max_depth) {
      fail(node, fmt::format("nesting is deeper than {} levels", limits_.max_depth));
      return false;
    }
    if (!spend(node, pointer.size())) return false;
    const YAML::Mark mark = node.Mark();
    if (!mark.is_null()) out_.positions.emplace(pointer, std::pair{mark.line + 1, mark.column + 1});

    switch (node.Type()) {
      case YAML::NodeType::Undefined:
      case YAML::NodeType::Null:
        into = nullptr;
        return true;
      case YAML::NodeType::Scalar:
        return scalar(node, into);
      case YAML::NodeType::Sequence: {
        into = nlohmann::json::array();
        std::size_t i = 0;
        for (const auto& item : node) {
          nlohmann::json child;
          if (!convert(item, pointer_append(pointer, std::to_string(i++)), depth + 1, child))
            return false;
          into.push_back(std::move(child));
        }
        return true;
      }
      case YAML::NodeType::Map: {
        into = nlohmann::json::object();
        bool ok = true;
        for (const auto& kv : node) {
          if (!kv.first.IsScalar()) {
            fail(kv.first, "a mapping key must be a plain scalar, not a sequence or mapping");
            ok = false;
            continue;
          }
          const std::string key = utf8_valid(kv.first.Scalar());
          if (!spend(kv.first, key.size())) return false;
          if (into.contains(key)) {
            const auto first = out_.positions.find(pointer_append(pointer, key));
            fail(kv.first, first == out_.positions.end()
                               ? fmt::format("duplicate key '{}'", key)
                               : fmt::format("duplicate key '{}' (first at line {})", key,
                                             first->second.first));
            ok = false;
            continue;
          }
          const std::string child_pointer = pointer_append(pointer, key);
          // Point at the key: that is where a reader looks for an unknown or misplaced key.
          const YAML::Mark key_mark = kv.first.Mark();
          nlohmann::json child;
          if (!convert(kv.second, child_pointer, depth + 1, child)) return false;
          if (!key_mark.is_null())
            out_.positions[child_pointer] = std::pair{key_mark.line + 1, key_mark.column + 1};
          into[key] = std::move(child);
        }
        return ok;
      }
    }
    return true;
  }

  // Counts `bytes` against limits_.max_expanded_bytes; false (reported once) past it.
  bool spend(const YAML::Node& node, std::size_t bytes) {
    bytes_ += bytes;
    if (bytes_ <= limits_.max_expanded_bytes) return true;
    if (!bytes_reported_) {
      fail(node, fmt::format("the document grows past {} MiB once its aliases are expanded and "
                             "each value is indexed by its path; refusing it (a long key over "
                             "many values, or a long value aliased many times?)",
                             limits_.max_expanded_bytes >> 20));
      bytes_reported_ = true;
    }
    return false;
  }

  void fail(const YAML::Node& node, std::string message) {
    const YAML::Mark mark = node.Mark();
    Location where{out_.file, mark.is_null() ? 0 : mark.line + 1,
                   mark.is_null() ? 0 : mark.column + 1};
    errors_.push_back(Diagnostic{std::move(where), std::move(message)});
  }

  std::vector<Diagnostic> take_errors() { return std::move(errors_); }

 private:
  // YAML 1.2 core schema resolution for plain scalars; quoted scalars are strings. A file that is
  // not UTF-8 is refused before yaml-cpp sees it; what yaml-cpp returns is still made valid UTF-8
  // here, because it can turn valid input into invalid UTF-8 (a NUL byte in a plain scalar comes
  // out as 0xA0).
  bool scalar(const YAML::Node& node, nlohmann::json& into) {
    const std::string text = utf8_valid(node.Scalar());
    if (!spend(node, text.size())) return false;
    const std::string& tag = node.Tag();
    if (tag == "!" || tag == "tag:yaml.org,2002:str") {
      into = text;
      return true;
    }
    if (tag != "?" && tag != "") {
      fail(node, fmt::format("unsupported YAML tag '{}'", utf8_valid(tag)));
      return false;
    }
    if (text.empty() || text == "~" || text == "null" || text == "Null" || text == "NULL") {
      into = nullptr;
    } else if (text == "true" || text == "True" || text == "TRUE") {
      into = true;
    } else if (text == "false" || text == "False" || text == "FALSE") {
      into = false;
    } else if (auto i = as_integer(text)) {
      into = *i;
    } else if (auto d = as_float(text)) {
      into = *d;
    } else {
      into = text;
    }
    return true;
  }

  static std::optional<std::int64_t> as_integer(const std::string& text) {
    std::string_view s = text;
    int base = 10;
    bool negative = false;
    if (s.starts_with("0x")) {
      base = 16;
      s.remove_prefix(2);
    } else if (s.starts_with("0o")) {
      base = 8;
      s.remove_prefix(2);
    } else if (s.starts_with('-') || s.starts_with('+')) {
      negative = s.front() == '-';
      s.remove_prefix(1);
    }
    if (s.empty()) return std::nullopt;
    std::int64_t value = 0;
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value, base);
    if (ec != std::errc() || end != s.data() + s.size()) return std::nullopt;
    return negative ? -value : value;
  }

  static std::optional<double> as_float(const std::string& text) {
    // [-+]? ( \. [0-9]+ | [0-9]+ ( \. [0-9]* )? ) ( [eE] [-+]? [0-9]+ )?  plus .inf / .nan
    if (text == ".inf" || text == "+.inf" || text == ".Inf" || text == ".INF") return INFINITY;
    if (text == "-.inf" || text == "-.Inf" || text == "-.INF") return -INFINITY;
    if (text == ".nan" || text == ".NaN" || text == ".NAN") return NAN;
    std::size_t i = 0;
    const std::size_t n = text.size();
    auto digits = [&] {
      std::size_t start = i;
      while (i < n && text[i] >= '0' && text[i] <= '9') ++i;
      return i - start;
    };
    if (i < n && (text[i] == '-' || text[i] == '+')) ++i;
    std::size_t mantissa = digits();
    if (i < n && text[i] == '.') {
      ++i;
      mantissa += digits();
    }
    if (mantissa == 0) return std::nullopt;
    if (i < n && (text[i] == 'e' || text[i] == 'E')) {
      ++i;
      if (i < n && (text[i] == '-' || text[i] == '+')) ++i;
      if (digits() == 0) return std::nullopt;
    }
    if (i != n) return std::nullopt;
    double value = 0;
    std::string_view s = text;
    if (s.starts_with('+')) s.remove_prefix(1);
    auto [end, ec] = std::from_chars(s.data(), s.data() + s.size(), value);
    if (ec != std::errc()) return std::nullopt;
    return value;
  }

  PositionedJson& out_;
  const YamlLimits& limits_;
  std::size_t nodes_ = 0;
  bool budget_reported_ = false;
  std::size_t bytes_ = 0;
  bool bytes_reported_ = false;
  std::vector<Diagnostic> errors_;
};

// Where yaml-cpp stops making progress, if it does. On some stray tokens at the start of a
// document (", a]"), its parser returns an empty document without consuming anything, again and
// again, and YAML::LoadAll loops for ever, growing its list of documents. The documents are walked
// here first as events, without building nodes; each must start further on than the one before.
std::optional<YAML::Mark> stuck_at(const std::string& text) {
  struct DocumentStarts final : YAML::EventHandler {
    void OnDocumentStart(const YAML::Mark& mark) override { last = mark; }
    void OnDocumentEnd() override {}
    void OnNull(const YAML::Mark&, YAML::anchor_t) override {}
    void OnAlias(const YAML::Mark&, YAML::anchor_t) override {}
    void OnScalar(const YAML::Mark&, const std::string&, YAML::anchor_t,
                  const std::string&) override {}
    void OnSequenceStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                         YAML::EmitterStyle::value) override {}
    void OnSequenceEnd() override {}
    void OnMapStart(const YAML::Mark&, const std::string&, YAML::anchor_t,
                    YAML::EmitterStyle::value) override {}
    void OnMapEnd() override {}
    YAML::Mark last = YAML::Mark::null_mark();
  };
  std::istringstream stream(text);
  YAML::Parser parser(stream);
  DocumentStarts starts;
  std::optional<int> previous;
  while (parser.HandleNextDocument(starts)) {
    if (previous && starts.last.pos <= *previous) return starts.last;
    previous = starts.last.pos;
  }
  return std::nullopt;
}

}  // namespace

tl::expected<PositionedJson, std::vector<Diagnostic>> parse_yaml(std::string_view text,
                                                                 const std::string& file,
                                                                 const YamlLimits& limits) {
  auto fail_at = [&](int line, int column, std::string message) {
    return tl::unexpected(
        std::vector<Diagnostic>{{Location{file, line, column}, std::move(message)}});
  };
  if (text.size() > limits.max_file_bytes)
    return fail_at(
        0, 0,
        fmt::format("file is {} bytes; the limit is {} bytes", text.size(), limits.max_file_bytes));
  // YAML text is Unicode, and flowreg reads it as UTF-8. yaml-cpp would pass other bytes through
  // into strings (descriptions, schemas) that then break every JSON output: refuse them here, at
  // their place.
  if (const std::size_t bad = utf8_invalid_at(text); bad != std::string_view::npos) {
    const std::size_t line_start = text.rfind('\n', bad == 0 ? 0 : bad - 1);
    const std::size_t from = line_start == std::string_view::npos || bad == 0 ? 0 : line_start + 1;
    int column = 1;  // in characters, as yaml-cpp counts them
    for (std::size_t i = from; i < bad; ++i)
      if ((static_cast<unsigned char>(text[i]) & 0xC0) != 0x80) ++column;
    const int line = 1 + static_cast<int>(std::count(text.begin(), text.begin() + bad, '\n'));
    return fail_at(line, column,
                   fmt::format("byte 0x{:02X} is not valid UTF-8: flowreg files are UTF-8 (convert "
                               "it, e.g. with iconv -f latin1 -t utf-8)",
                               static_cast<unsigned char>(text[bad])));
  }
  std::vector<YAML::Node> documents;
  try {
    std::string owned(text);
    if (auto stuck = stuck_at(owned)) {
      const auto at = static_cast<std::size_t>(stuck->pos);
      return fail_at(stuck->line + 1, stuck->column + 1,
                     at < owned.size()
                         ? fmt::format("invalid YAML: unexpected '{}'",
                                       utf8_valid(std::string_view(owned).substr(at, 1)))
                         : std::string("invalid YAML: unexpected end of file"));
    }
    documents = YAML::LoadAll(owned);
  } catch (const YAML::DeepRecursion& e) {
    return fail_at(e.mark.line + 1, e.mark.column + 1,
                   fmt::format("nesting is deeper than {} levels", limits.max_depth));
  } catch (const YAML::Exception& e) {
    // yaml-cpp quotes single bytes of the input ("unknown escape character: \xC3"), which can cut
    // a character in two.
    if (e.mark.is_null()) return fail_at(0, 0, "invalid YAML: " + utf8_valid(e.msg));
    return fail_at(e.mark.line + 1, e.mark.column + 1, "invalid YAML: " + utf8_valid(e.msg));
  }
  if (documents.empty() || (documents.size() == 1 && documents[0].IsNull()))
    return fail_at(0, 0, "the file is empty; expected a mapping (for example with a 'flows' key)");
  if (documents.size() > 1) {
    const YAML::Mark m = documents[1].Mark();
    return fail_at(
        m.line + 1, m.column + 1,
        fmt::format("the file holds {} YAML documents; expected exactly one", documents.size()));
  }
  PositionedJson out;
  out.file = file;
  Converter converter(out, limits);
  const bool ok = converter.convert(documents[0], "", 0, out.value);
  auto errors = converter.take_errors();
  if (!ok || !errors.empty()) return tl::unexpected(std::move(errors));
  return out;
}

tl::expected<std::string, Diagnostic> read_text_file(const std::filesystem::path& path,
                                                     std::size_t max_bytes) {
  const std::string file = path.string();
  auto fail = [&](std::string message) {
    return tl::unexpected(Diagnostic{Location{file, 0, 0}, std::move(message)});
  };
  std::error_code ec;
  const auto status = std::filesystem::status(path, ec);
  if (ec || !std::filesystem::exists(status)) return fail("cannot read: no such file");
  if (!std::filesystem::is_regular_file(status)) return fail("cannot read: not a regular file");
  const auto size = std::filesystem::file_size(path, ec);
  if (ec) return fail("cannot read: " + ec.message());
  if (size > max_bytes)
    return fail(fmt::format("file is {} bytes; the limit is {} bytes", size, max_bytes));
  std::ifstream in(path, std::ios::binary);
  if (!in) return fail("cannot open for reading");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) return fail("read error");
  return buffer.str();
}

tl::expected<PositionedJson, std::vector<Diagnostic>> load_yaml_file(
    const std::filesystem::path& path, const YamlLimits& limits) {
  auto text = read_text_file(path, limits.max_file_bytes);
  if (!text) return tl::unexpected(std::vector<Diagnostic>{std::move(text.error())});
  return parse_yaml(*text, path.string(), limits);
}

}  // namespace flowreg::detail
