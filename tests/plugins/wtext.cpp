// Module "wtext" for the worker tests of handler output text the SDK would never produce (written
// against the C boundary alone, so the text is exactly what the worker receives):
//   wtext_deep       handler "deep": an array nested 100,000 levels deep, "[[[...]]]"
//   wtext_nul        handler "nul": {"a": "x\u0000y", "k\u0000": 1} (NUL in a string and a key)
//   wtext_nul_error  handler "nul_error": fails permanently with a message holding a NUL byte
//   wtext_quick      handler "quick": {"ok": true}
#include <cstdlib>
#include <cstring>
#include <string>

#include "flowreg/plugin_abi.h"

namespace {

void fill(flowreg_buffer* out, const std::string& text) {
  out->data = static_cast<char*>(std::malloc(text.size() + 1));
  if (out->data == nullptr) {
    out->size = 0;
    return;
  }
  std::memcpy(out->data, text.data(), text.size());
  out->data[text.size()] = '\0';
  out->size = text.size();
}

int32_t describe(flowreg_buffer* out) noexcept {
  fill(out, R"({"module":"wtext","handlers":["deep","nul","nul_error","quick"],"flows":[)"
            R"({"slug":"wtext_deep","options":{"max_attempts":1},)"
            R"("steps":[{"slug":"only","handler":"wtext.deep"}]},)"
            R"({"slug":"wtext_nul","steps":[{"slug":"only","handler":"wtext.nul"}]},)"
            R"({"slug":"wtext_nul_error","steps":[{"slug":"only","handler":"wtext.nul_error"}]},)"
            R"({"slug":"wtext_quick","steps":[{"slug":"only","handler":"wtext.quick"}]}]})");
  return FLOWREG_OK;
}

int32_t invoke(uint32_t handler, const char*, size_t, const char*, size_t,
               flowreg_buffer* out) noexcept {
  constexpr std::size_t kDepth = 100'000;
  switch (handler) {
    case 0:
      fill(out, std::string(kDepth, '[') + std::string(kDepth, ']'));
      return FLOWREG_OK;
    case 1:
      fill(out, R"({"a":"x\u0000y","k\u0000":1})");
      return FLOWREG_OK;
    case 2:
      fill(out, std::string("bad\0byte", 8));
      return FLOWREG_PERMANENT;
    default:
      fill(out, R"({"ok":true})");
      return FLOWREG_OK;
  }
}

void release(flowreg_buffer* buffer) noexcept {
  std::free(buffer->data);
  buffer->data = nullptr;
  buffer->size = 0;
}

const flowreg_plugin_v1 descriptor = {
    FLOWREG_PLUGIN_MAGIC, FLOWREG_ABI_MAJOR, FLOWREG_ABI_MINOR, sizeof(flowreg_plugin_v1),
    "raw C ABI, no SDK",  &describe,         &invoke,           &release};

const flowreg_plugin_v1* entry() { return &descriptor; }

}  // namespace

extern "C" {
__attribute__((visibility("default"), section("flowreg"))) const void* flowreg_plugin =
    reinterpret_cast<const void*>(&entry);
}
