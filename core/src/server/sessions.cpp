#include "server/sessions.hpp"

#include <sys/random.h>

#include <cerrno>
#include <system_error>

#include "util/sha256.hpp"

namespace flowreg::detail {

namespace {

constexpr std::size_t kMaxCookieHeader = 8 * 1024;
constexpr std::size_t kMaxSessionCookie = 128;

std::string random_hex(std::size_t bytes) {
  std::string raw(bytes, '\0');
  std::size_t got = 0;
  while (got < bytes) {
    const ssize_t n = getrandom(raw.data() + got, bytes - got, 0);
    if (n < 0) {
      if (errno == EINTR) continue;
      throw std::system_error(errno, std::generic_category(), "getrandom");
    }
    got += static_cast<std::size_t>(n);
  }
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out;
  out.reserve(2 * bytes);
  for (const char c : raw) {
    const auto b = static_cast<unsigned char>(c);
    out += kHex[b >> 4];
    out += kHex[b & 0xf];
  }
  return out;
}

bool is_session_id(std::string_view id) {
  if (id.size() != 2 * SessionStore::kIdBytes) return false;
  for (const char c : id)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

// cookie-octet of RFC 6265, 4.1.1: printable US-ASCII but space, '"', ',', ';' and '\'.
bool is_cookie_octet(char ch) {
  const auto c = static_cast<unsigned char>(ch);
  return c >= 0x21 && c <= 0x7e && c != '"' && c != ',' && c != ';' && c != '\\';
}

std::string_view trim_ows(std::string_view s) {
  while (!s.empty() && (s.front() == ' ' || s.front() == '\t')) s.remove_prefix(1);
  while (!s.empty() && (s.back() == ' ' || s.back() == '\t')) s.remove_suffix(1);
  return s;
}

}  // namespace

SessionStore::SessionStore(std::chrono::seconds ttl, std::chrono::seconds idle,
                           std::size_t max_sessions)
    : ttl_(ttl), idle_(idle), max_sessions_(max_sessions == 0 ? 1 : max_sessions) {}

bool SessionStore::expired(const Session& s, TimePoint now) const noexcept {
  if (now >= s.created + ttl_) return true;
  return idle_.count() > 0 && now >= s.last_used + idle_;
}

void SessionStore::erase(std::string hash) {
  const auto it = sessions_.find(hash);
  if (it == sessions_.end()) return;
  order_.erase(it->second.in_order);
  sessions_.erase(it);
}

std::string SessionStore::create(TimePoint now) {
  std::string id = random_hex(kIdBytes);
  std::string hash = sha256_hex(id);
  MutexLock lock(mu_);
  // Lazy sweep: sessions began in order_'s order, so those past their ttl are at its front.
  // (Sessions past their idle timeout are dropped when shown, or evicted in their turn.)
  while (!order_.empty() && expired(sessions_.at(order_.front()), now)) erase(order_.front());
  while (sessions_.size() >= max_sessions_) erase(order_.front());
  order_.push_back(hash);
  sessions_.emplace(std::move(hash), Session{now, now, std::prev(order_.end())});
  return id;
}

bool SessionStore::valid(std::string_view id, TimePoint now) {
  if (!is_session_id(id)) return false;
  const std::string hash = sha256_hex(id);
  MutexLock lock(mu_);
  const auto it = sessions_.find(hash);
  if (it == sessions_.end()) return false;
  if (expired(it->second, now)) {
    erase(hash);
    return false;
  }
  it->second.last_used = now;
  return true;
}

void SessionStore::revoke(std::string_view id) {
  if (!is_session_id(id)) return;
  const std::string hash = sha256_hex(id);
  MutexLock lock(mu_);
  erase(hash);
}

std::size_t SessionStore::size() const {
  MutexLock lock(mu_);
  return sessions_.size();
}

void SessionStore::count_failed_signin() noexcept {
  failed_signins_.fetch_add(1, std::memory_order_relaxed);
}

std::uint64_t SessionStore::failed_signins() const noexcept {
  return failed_signins_.load(std::memory_order_relaxed);
}

std::optional<std::string> session_cookie(std::string_view header) {
  if (header.size() > kMaxCookieHeader) return std::nullopt;
  while (!header.empty()) {
    const std::size_t end = header.find(';');
    const std::string_view pair = trim_ows(header.substr(0, end));
    header = end == std::string_view::npos ? std::string_view() : header.substr(end + 1);
    const std::size_t eq = pair.find('=');
    if (eq == std::string_view::npos || trim_ows(pair.substr(0, eq)) != kSessionCookie) continue;
    // The first flowreg_session decides, whatever its value.
    std::string_view value = trim_ows(pair.substr(eq + 1));
    if (value.size() >= 2 && value.front() == '"' && value.back() == '"')
      value = value.substr(1, value.size() - 2);
    if (value.empty() || value.size() > kMaxSessionCookie) return std::nullopt;
    for (const char c : value)
      if (!is_cookie_octet(c)) return std::nullopt;
    return std::string(value);
  }
  return std::nullopt;
}

std::string set_cookie(std::string_view id, std::chrono::seconds max_age, bool secure) {
  std::string out(kSessionCookie);
  out += '=';
  out += id;
  out += "; Path=/; HttpOnly; SameSite=Strict; Max-Age=";
  out += std::to_string(max_age.count());
  if (secure) out += "; Secure";
  return out;
}

std::string clear_cookie(bool secure) { return set_cookie("", std::chrono::seconds(0), secure); }

}  // namespace flowreg::detail
