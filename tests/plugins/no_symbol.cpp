// A shared library that exports something, but not flowreg_plugin.
extern "C" __attribute__((visibility("default"))) int not_a_plugin() { return 1; }
