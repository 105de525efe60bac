// Example plugin "files": reads and writes text files under a root directory.
//
// Paths in inputs are relative to the root, which is the FLOWREG_FILES_ROOT environment variable
// or, when it is unset, the working directory of the worker. Absolute paths and paths that leave
// the root ("..") are refused permanently.

#include <cstdlib>
#include <filesystem>
#include <flowreg/sdk.hpp>
#include <fstream>
#include <sstream>

using flowreg::sdk::json;
using flowreg::sdk::permanent_error;
using flowreg::sdk::retryable_error;

namespace fs = std::filesystem;

namespace {

constexpr std::uintmax_t kMaxBytes = 16u << 20;

fs::path resolve(const json& input, const char* handler) {
  if (!input.is_object() || !input.contains("path") || !input["path"].is_string())
    throw permanent_error(std::string(handler) + ": the input needs a \"path\" string");
  const fs::path relative = input["path"].get<std::string>();
  if (relative.empty() || relative.is_absolute())
    throw permanent_error(std::string(handler) + ": path must be relative to the files root");
  for (const auto& part : relative)
    if (part == "..") throw permanent_error(std::string(handler) + ": path must not contain '..'");
  const char* root = std::getenv("FLOWREG_FILES_ROOT");
  return (root && *root ? fs::path(root) : fs::current_path()) / relative;
}

// {"path": "in.txt"} -> {"path", "text", "bytes"}
json read_text(const json& input) {
  const fs::path path = resolve(input, "read_text");
  std::error_code ec;
  const auto size = fs::file_size(path, ec);
  if (ec) throw permanent_error("read_text: cannot read " + path.string() + ": " + ec.message());
  if (size > kMaxBytes) throw permanent_error("read_text: " + path.string() + " is too large");
  std::ifstream in(path, std::ios::binary);
  std::ostringstream text;
  text << in.rdbuf();
  if (!in && !in.eof()) throw retryable_error("read_text: read error on " + path.string());
  return {{"path", input["path"]}, {"text", text.str()}, {"bytes", size}};
}

// {"path": "out.txt", "text": "..."} -> {"path", "bytes"}; written to a temporary file, then
// renamed.
json write_text(const json& input) {
  const fs::path path = resolve(input, "write_text");
  if (!input.contains("text") || !input["text"].is_string())
    throw permanent_error("write_text: the input needs a \"text\" string");
  const std::string text = input["text"].get<std::string>();
  std::error_code ec;
  fs::create_directories(path.parent_path(), ec);
  const fs::path tmp = path.string() + ".tmp";
  {
    std::ofstream out(tmp, std::ios::binary | std::ios::trunc);
    out << text;
    if (!out) throw retryable_error("write_text: cannot write " + tmp.string());
  }
  fs::rename(tmp, path, ec);
  if (ec)
    throw retryable_error("write_text: cannot rename into " + path.string() + ": " + ec.message());
  return {{"path", input["path"]}, {"bytes", text.size()}};
}

// {"read": {"path", "text"}, ...} -> writes "<path>.report" with line and word counts.
json report(const json& input) {
  const json& read = input.at("read");
  std::istringstream in(read.at("text").get<std::string>());
  std::size_t lines = 0, words = 0;
  for (std::string line; std::getline(in, line); ++lines) {
    std::istringstream l(line);
    for (std::string w; l >> w;) ++words;
  }
  const std::string target = read.at("path").get<std::string>() + ".report";
  const std::string text =
      "lines: " + std::to_string(lines) + "\nwords: " + std::to_string(words) + "\n";
  json written = write_text({{"path", target}, {"text", text}});
  return {{"report", target}, {"lines", lines}, {"words", words}, {"bytes", written["bytes"]}};
}

}  // namespace

FLOWREG_PLUGIN(files) {
  plugin.handler("read_text", read_text);
  plugin.handler("write_text", write_text);
  plugin.handler("report", report);

  auto& flow = plugin.flow("file_report")
                   .description("Count the lines and words of a file into FILE.report");
  flow.input_schema({{"type", "object"}, {"required", {"path"}}});
  flow.max_attempts(2).timeout("30s");
  flow.step("read", "read_text");
  flow.step("report", "report").depends_on({"read"});
}
