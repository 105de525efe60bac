#include <flowreg/sdk.hpp>
#include <stdexcept>

FLOWREG_PLUGIN(thrower) { throw std::runtime_error("definition exploded"); }
