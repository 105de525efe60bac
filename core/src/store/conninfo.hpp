#pragma once
// The connection settings flowreg adds to a database URL, so that a worker cut off from the
// database (a link down, a host gone) notices within seconds and reconnects, instead of waiting
// for the kernel's TCP timeouts (a blocked connection retransmits with doubling intervals for
// minutes; an idle one is never probed).
//
// Every default applies only where the user's URL does not set the keyword and its environment
// variable (PGCONNECT_TIMEOUT) is not set either, and none when a service file is named (service,
// PGSERVICE): what the user wrote wins. libpq ignores the TCP settings on a unix socket.
//
// clang-format off
//   keyword              default  what it bounds
//   connect_timeout      5        s: one connection attempt (then the worker's backoff retries)
//   keepalives           1        probe idle connections (a listener waiting for notifications)
//   keepalives_idle      5        s of silence before the first probe
//   keepalives_interval  2        s between probes
//   keepalives_count     3        unanswered probes before the connection is dropped
//   tcp_user_timeout     5000     ms that sent data may stay unacknowledged before the connection
//                                 is dropped (a round trip blocked by a dead link)
// clang-format on

#include <map>
#include <string>

#include "flowreg/error.hpp"

namespace flowreg::detail {

// The keywords a conninfo sets (a URL, postgresql://..., or key=value pairs, as libpq reads them),
// with their values; an error naming the reason when libpq cannot parse it (the password is not
// repeated).
Result<std::map<std::string, std::string>> parse_conninfo(const std::string& conninfo);

// `conninfo` with the defaults above added, as key=value pairs; unchanged when it cannot be parsed
// (connecting reports why).
std::string with_connection_defaults(const std::string& conninfo);

}  // namespace flowreg::detail
