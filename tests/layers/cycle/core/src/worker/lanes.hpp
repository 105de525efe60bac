#pragma once
#include "store/run_store.hpp"
