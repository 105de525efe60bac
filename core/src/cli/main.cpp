#include "cli/commands.hpp"

int main(int argc, char** argv) { return flowreg::cli::run(argc, argv); }
