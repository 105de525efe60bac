#pragma once
// Signing in to `flowreg serve`'s dashboard: the sessions a browser holds after it showed the
// token once, and the cookie that carries a session's id. No HTTP library here (the routes are in
// signin_page.hpp).
//
// A session id is 32 random bytes of the OS as 64 hex digits. The store keeps only the SHA-256 of
// each id: what the process holds (its memory, a core dump) cannot be replayed as a cookie.
// Sessions live in memory: a restart (a new token included) signs every browser out.

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <list>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>

#include "flowreg/thread_annotations.hpp"

namespace flowreg::detail {

inline constexpr std::string_view kSessionCookie = "flowreg_session";

// The signed-in browsers of one server. Time is given by the caller (steady_clock in the server,
// made-up values in the tests); it is expected not to go backwards.
//
// Thread-safety: every member function may be called concurrently.
class SessionStore {
 public:
  using Clock = std::chrono::steady_clock;
  using TimePoint = Clock::time_point;

  static constexpr std::size_t kIdBytes = 32;  // random bytes; the id is twice as many hex digits
  static constexpr std::size_t kDefaultMaxSessions = 10'000;

  // A session ends `ttl` after it began, or `idle` after it was last found valid (zero: never for
  // idleness). Past `max_sessions`, creating one ends the oldest.
  explicit SessionStore(std::chrono::seconds ttl = std::chrono::hours(12),
                        std::chrono::seconds idle = std::chrono::seconds(0),
                        std::size_t max_sessions = kDefaultMaxSessions);
  SessionStore(const SessionStore&) = delete;
  SessionStore& operator=(const SessionStore&) = delete;

  // A new session's id (64 lowercase hex digits). Throws std::system_error when the OS gives no
  // random bytes.
  std::string create(TimePoint now);
  // Whether `id` names a session that has not ended by `now`; if so, `now` is its last use.
  bool valid(std::string_view id, TimePoint now);
  // Ends the session `id` names, if any.
  void revoke(std::string_view id);

  std::size_t size() const;
  std::chrono::seconds ttl() const noexcept { return ttl_; }
  // Sign-in attempts with a wrong token, since the start (counted, never slowed down).
  void count_failed_signin() noexcept;
  std::uint64_t failed_signins() const noexcept;

 private:
  struct Session {
    TimePoint created, last_used;
    std::list<std::string>::iterator in_order;  // its place in order_
  };
  bool expired(const Session& s, TimePoint now) const noexcept;
  void erase(std::string hash) FLOWREG_REQUIRES(mu_);  // a copy: it may be order_'s own

  const std::chrono::seconds ttl_, idle_;
  const std::size_t max_sessions_;
  mutable AnnotatedMutex mu_;
  // SHA-256 (hex) of the id -> the session.
  std::unordered_map<std::string, Session> sessions_ FLOWREG_GUARDED_BY(mu_);
  // The hashes in the order the sessions began, oldest first: the first to expire at their ttl,
  // and the ones evicted past max_sessions_.
  std::list<std::string> order_ FLOWREG_GUARDED_BY(mu_);
  std::atomic<std::uint64_t> failed_signins_{0};
};

// The value of the flowreg_session cookie in a Cookie header (RFC 6265, 4.2.1 and 5.4:
// "name=value" pairs separated by ';' and spaces), or nullopt when there is none or it is not a
// plausible session id: empty, longer than 128 bytes, or with bytes outside cookie-octet. A value
// in double quotes is taken without them. When the cookie appears more than once, the first
// counts. A header longer than 8 KiB is not read.
std::optional<std::string> session_cookie(std::string_view cookie_header);

// The Set-Cookie value that gives the browser session `id`: HttpOnly (no script reads it),
// SameSite=Strict (no other site's request carries it), Path=/, Max-Age; Secure when the browser
// reaches the server over TLS (directly or through a proxy).
std::string set_cookie(std::string_view id, std::chrono::seconds max_age, bool secure);
// The Set-Cookie value that makes the browser forget its session (sign out).
std::string clear_cookie(bool secure);

}  // namespace flowreg::detail
