// A plugin written against the C boundary alone, without the SDK and its wrappers: it exports the
// entry symbol the way the SDK's Boost.DLL alias does (a pointer in section "flowreg"), and lets
// C++ exceptions out of its functions, which the ABI forbids. RAW_THROW_IN_DESCRIBE: describe()
// throws; otherwise describe() works and invoke() throws (handler 0 a std::runtime_error, handler 1
// an int), release() of a buffer of handler 2 throws, and handler 3 returns a 3-byte buffer that
// claims to hold 1 TiB.
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>

#include "flowreg/plugin_abi.h"

namespace {

void fill(flowreg_buffer* out, const std::string& text) {
  out->data = static_cast<char*>(std::malloc(text.size() + 1));
  std::memcpy(out->data, text.c_str(), text.size() + 1);
  out->size = text.size();
}

int32_t describe(flowreg_buffer* out) {
#ifdef RAW_THROW_IN_DESCRIBE
  (void)out;
  throw std::runtime_error("raw describe exploded");
#else
  fill(out, R"({"module":"raw","handlers":["throws","throws_int","bad_release","lying_size"],)"
            R"("flows":[{"slug":"raw_flow","steps":[{"slug":"only","handler":"raw.throws"}]}]})");
  return FLOWREG_OK;
#endif
}

int32_t invoke(uint32_t handler, const char*, size_t, const char*, size_t, flowreg_buffer* out) {
  if (handler == 0) throw std::runtime_error("raw invoke exploded");
  if (handler == 1) throw 42;
  fill(out, "{}");
  if (handler == 3) out->size = std::size_t{1} << 40;
  return FLOWREG_OK;
}

void release(flowreg_buffer* buffer) {
  const bool bad = buffer->size == 2;  // the "{}" of handler 2
  std::free(buffer->data);
  buffer->data = nullptr;
  if (bad) throw std::logic_error("raw release exploded");
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
