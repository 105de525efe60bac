// Aborts in its entry point.
#include <cstdlib>
#include <flowreg/sdk.hpp>

FLOWREG_PLUGIN(aborter) { std::abort(); }
