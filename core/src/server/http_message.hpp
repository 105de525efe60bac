#pragma once
// The requests and responses of `flowreg serve` as its routes see them, and the table that finds a
// route for a request. The transport (http_transport.hpp) reads a whole request, bounded, before
// any route sees it, and writes the response the route filled in; routes never touch a socket.
//
// Thread-safety: a Request and its Response belong to the thread running the route. A Router is
// filled before the server starts and only read afterwards (route() may then run concurrently).

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <regex>
#include <string>
#include <string_view>
#include <vector>

namespace flowreg::detail::http {

// Header names compare without regard to case (RFC 9110, 5.1).
struct CaseLess {
  using is_transparent = void;
  bool operator()(std::string_view a, std::string_view b) const noexcept;
};
using Headers = std::multimap<std::string, std::string, CaseLess>;
using Params = std::multimap<std::string, std::string, std::less<>>;

struct Request {
  std::string method;   // "GET", "POST", ... as sent
  std::string target;   // the request target as sent, bounded by the header limit
  std::string path;     // the target's path, percent-decoded
  Params params;        // the query's name=value pairs, decoded ('+' is a space)
  Headers headers;      // every header field, in the order sent for one name
  std::string body;     // at most kMaxBodyBytes (server.hpp)
  std::smatch matches;  // the route pattern's groups, over `path`
  std::string remote;   // "ADDRESS:PORT" of the client
  bool tls = false;     // came over TLS (server.tls_cert)
  int route = -2;       // Router::route()'s finding: -2 not looked up yet, -1 none

  // The i-th value of header `name`, or "".
  std::string get_header_value(std::string_view name, std::size_t i = 0) const;
  std::size_t get_header_value_count(std::string_view name) const;
  bool has_header(std::string_view name) const;
  // The first value of query parameter `name`, or "".
  std::string get_param_value(std::string_view name) const;
  bool has_param(std::string_view name) const;
};

// A body written as it comes (Server-Sent Events): the transport runs next() on a thread of the
// stream's own until it returns nullopt, the client goes away or the server stops.
class Stream {
 public:
  virtual ~Stream() = default;
  // The next piece to write (waiting about a second for one): "" when there is none yet, nullopt
  // at the end. Not called again once the client has gone away or the server stops.
  virtual std::optional<std::string> next() = 0;
};

struct Response {
  int status = 200;
  std::string body;
  Headers headers;
  std::shared_ptr<Stream> stream;  // set: the body is the stream's pieces, sent chunked

  void set_content(std::string content, std::string_view type);
  void set_header(std::string_view name, std::string value);  // replaces
  std::string get_header_value(std::string_view name) const;
  bool has_header(std::string_view name) const;
};

using Handler = std::function<void(const Request&, Response&)>;

// How a route's handler spends its time. `quick` ones (a few microseconds, no database, no
// waiting) run on the I/O thread that read the request, saving two thread hand-offs; the others
// on a handler thread.
enum class Work { blocking, quick };

// Routes by method and a pattern matched against the whole path (std::regex, ECMAScript).
class Router {
 public:
  void Get(std::string pattern, Handler handler, Work work = Work::blocking);  // also HEAD
  void Post(std::string pattern, Handler handler, Work work = Work::blocking);

  // What route() found.
  enum class Found { route, wrong_method, none };
  struct Match {
    Found found = Found::none;
    const Handler* handler = nullptr;
    std::string_view pattern;  // the route's pattern, for metrics; "" when none
    std::string allow;         // wrong_method: the methods the path takes ("GET, HEAD")
    bool quick = true;         // no route's handler to run, or a quick one
  };
  // The route for req.method and req.path; fills req.matches and req.route (a second call
  // reuses them).
  Match route(Request& req) const;

 private:
  struct Route {
    std::string method, pattern;
    std::regex re;
    Handler handler;
    Work work;
  };
  std::vector<Route> routes_;
};

// "%XX" decoded; with `plus_is_space` also '+' (query strings). Bad escapes are kept as sent.
std::string percent_decode(std::string_view text, bool plus_is_space);
// A name or value of an application/x-www-form-urlencoded body: '+' is a space, %XX a byte;
// nullopt when a '%' is not followed by two hex digits.
std::optional<std::string> form_decode(std::string_view text);
// `text` as a query value: every byte but A-Z a-z 0-9 - . _ ~ / as %XX.
std::string percent_encode(std::string_view text);
// The query string's pairs ("a=1&b=2"), decoded.
Params parse_query(std::string_view query);

}  // namespace flowreg::detail::http
