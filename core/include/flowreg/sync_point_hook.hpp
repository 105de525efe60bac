#pragma once
// FLOWREG_SYNC_POINT in the public templates (tools/registry.hpp, tools/handle_registry.hpp,
// subscription.hpp): a test seam, not part of the API.
//
// flowreg's own build (its library, tests and benchmarks) defines FLOWREG_SYNC_POINTS and gets the
// real points of core/seams/flowreg/sync_point.hpp, where a test can park a thread to force an
// interleaving. That header is not installed: a program or plugin built against the installed
// headers compiles every point to nothing.

// FLOWREG_SYNC_POINTS_ARMED(): whether a test armed any point (a relaxed atomic load), for code
// that must step out of a lock before it reaches a point; always false without the seam.
#ifdef FLOWREG_SYNC_POINTS
#include "flowreg/sync_point.hpp"
#define FLOWREG_SYNC_POINTS_ARMED() (::flowreg::detail::SyncPoints::instance().any_armed())
#else
#define FLOWREG_SYNC_POINT(name) static_cast<void>(0)
#define FLOWREG_SYNC_POINTS_ARMED() false
#endif
