/* flowreg's plugin boundary: plain C, versioned, the only thing a plugin and the host share.
 *
 * A plugin exports one symbol, `flowreg_plugin`, in the section "flowreg" (a Boost.DLL alias; the
 * SDK's FLOWREG_PLUGIN macro writes it): a pointer to a function returning the plugin's
 * flowreg_plugin_v1 descriptor.
 *
 * Compatibility rule: the host checks magic, then abi_major (must equal its own), then abi_minor
 * (must not be newer than its own), then struct_size, before it reads any other field. New fields
 * are only ever appended, with a minor version bump; a removed or changed field is a new major.
 *
 * Nothing may be thrown across this boundary, and no C++ object crosses it: definitions, inputs
 * and outputs are JSON text in buffers that the side which allocated them releases.
 */
#ifndef FLOWREG_PLUGIN_ABI_H
#define FLOWREG_PLUGIN_ABI_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* "FLOWREG1" read as a little-endian 64-bit integer. */
#define FLOWREG_PLUGIN_MAGIC UINT64_C(0x31474552574F4C46)
#define FLOWREG_ABI_MAJOR 1
#define FLOWREG_ABI_MINOR 1
#define FLOWREG_PLUGIN_SYMBOL "flowreg_plugin"
#define FLOWREG_PLUGIN_SECTION "flowreg"

/* Results of describe() and invoke(). */
enum {
  FLOWREG_OK = 0,         /* *out holds the JSON result */
  FLOWREG_RETRY = 1,      /* *out holds an error message; the task may be retried */
  FLOWREG_PERMANENT = 2,  /* *out holds an error message; do not retry */
  FLOWREG_NO_HANDLER = 3, /* no handler with that index */
  /* ABI 1.1: *out holds a delay in milliseconds (decimal digits, 1 to 31622400000): run the task
   * again that much later without spending an attempt (the SDK's flowreg::snooze). */
  FLOWREG_SNOOZE = 4
};

/* Bytes allocated by the plugin; given back to it through release(). */
typedef struct flowreg_buffer {
  char* data;
  size_t size;
} flowreg_buffer;

typedef struct flowreg_plugin_v1 {
  /* Header: the same in every ABI version. */
  uint64_t magic;
  uint16_t abi_major;
  uint16_t abi_minor;
  uint32_t struct_size;    /* sizeof(flowreg_plugin_v1) as the plugin was compiled */
  const char* fingerprint; /* build fingerprint: SDK version, compiler, standard library */

  /* ABI 1.0 */
  /* The module's definition as JSON: {"module": "...", "handlers": ["name", ...], "flows": [...]},
   * flows in the form of schemas/flow.schema.json. FLOWREG_OK, or FLOWREG_PERMANENT with a message.
   */
  int32_t (*describe)(flowreg_buffer* out);
  /* Runs handler number `handler` (its index in "handlers") on JSON input. `context` is a JSON
   * object about the task: {"run_id", "flow", "step", "task_index", "attempt"} (attempt 1 is the
   * first). Thread-safe. */
  int32_t (*invoke)(uint32_t handler, const char* input, size_t input_size, const char* context,
                    size_t context_size, flowreg_buffer* out);
  /* Frees a buffer that describe() or invoke() filled. */
  void (*release)(flowreg_buffer* buffer);
} flowreg_plugin_v1;

typedef const flowreg_plugin_v1* (*flowreg_plugin_entry)(void);

#ifdef __cplusplus
}
#endif

#endif /* FLOWREG_PLUGIN_ABI_H */
