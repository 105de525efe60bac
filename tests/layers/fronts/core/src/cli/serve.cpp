#include "server/server.hpp"
#include "app/forms.hpp"
