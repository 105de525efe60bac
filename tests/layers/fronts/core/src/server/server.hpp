#pragma once
#include "app/forms.hpp"
