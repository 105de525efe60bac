#pragma once
#include "worker/lanes.hpp"
#include "util/strings.hpp"
