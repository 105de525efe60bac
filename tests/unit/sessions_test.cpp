// Signing in to the dashboard: the session store, the cookie, the sign-in form and page, and the
// routes' handlers on hand-built requests.

#include "server/sessions.hpp"

#include <doctest/doctest.h>

#include <cctype>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "server/signin_page.hpp"
#include "util/sha256.hpp"

using namespace flowreg::detail;
using namespace std::chrono_literals;

namespace {

const SessionStore::TimePoint kSigninT0{std::chrono::hours(1000)};

http::Request signin_request(std::string body,
                             std::string type = "application/x-www-form-urlencoded") {
  http::Request req;
  req.method = "POST";
  req.path = "/signin";
  req.body = std::move(body);
  req.headers.emplace("Content-Type", type);
  return req;
}

bool signin_token_is_right(std::string_view t) { return t == "the-right-token-0123"; }

}  // namespace

TEST_SUITE("sessions") {
  TEST_CASE("session ids are 64 hex digits and never repeat") {
    SessionStore store;
    std::set<std::string> ids;
    for (int i = 0; i < 1000; ++i) {
      const std::string id = store.create(kSigninT0);
      CHECK(id.size() == 64);
      CHECK(id.find_first_not_of("0123456789abcdef") == std::string::npos);
      ids.insert(id);
    }
    CHECK(ids.size() == 1000);
  }

  TEST_CASE("a created session is valid and an unknown or malformed id is not") {
    SessionStore store;
    const std::string id = store.create(kSigninT0);
    CHECK(store.valid(id, kSigninT0));
    CHECK_FALSE(store.valid(std::string(64, '0'), kSigninT0));
    CHECK_FALSE(store.valid("", kSigninT0));
    CHECK_FALSE(store.valid(id.substr(1), kSigninT0));
    std::string upper = id;
    for (char& c : upper) c = static_cast<char>(std::toupper(static_cast<unsigned char>(c)));
    if (upper != id) CHECK_FALSE(store.valid(upper, kSigninT0));
  }

  TEST_CASE("the SHA-256 of a session id, what the store keys on, is not itself accepted") {
    SessionStore store;
    const std::string id = store.create(kSigninT0);
    CHECK(store.valid(id, kSigninT0));
    // What the store keys on is SHA-256(id); showing that key instead of the id gets nothing.
    CHECK_FALSE(store.valid(sha256_hex(id), kSigninT0));
    store.revoke(sha256_hex(id));
    CHECK(store.valid(id, kSigninT0));
  }

  TEST_CASE("a session ends at its ttl however recently it was used") {
    SessionStore store(12h);
    const std::string id = store.create(kSigninT0);
    CHECK(store.valid(id, kSigninT0 + 11h));
    CHECK(store.valid(id, kSigninT0 + 12h - 1s));
    CHECK_FALSE(store.valid(id, kSigninT0 + 12h));
    CHECK(store.size() == 0);
  }

  TEST_CASE("a session ends after its idle timeout, and each valid use restarts it") {
    SessionStore store(12h, 30min);
    const std::string id = store.create(kSigninT0);
    CHECK(store.valid(id, kSigninT0 + 29min));
    CHECK(store.valid(id, kSigninT0 + 58min));
    CHECK_FALSE(store.valid(id, kSigninT0 + 88min));
  }

  TEST_CASE("a revoked session is no longer valid and others stay") {
    SessionStore store;
    const std::string a = store.create(kSigninT0), b = store.create(kSigninT0);
    store.revoke(a);
    CHECK_FALSE(store.valid(a, kSigninT0));
    CHECK(store.valid(b, kSigninT0));
    store.revoke(a);  // twice: nothing happens
    store.revoke("not an id");
    CHECK(store.size() == 1);
  }

  TEST_CASE("past its bound the store ends the oldest sessions first") {
    SessionStore store(12h, 0s, 3);
    std::vector<std::string> ids;
    for (int i = 0; i < 5; ++i) ids.push_back(store.create(kSigninT0 + std::chrono::seconds(i)));
    CHECK(store.size() == 3);
    CHECK_FALSE(store.valid(ids[0], kSigninT0 + 10s));
    CHECK_FALSE(store.valid(ids[1], kSigninT0 + 10s));
    for (std::size_t i = 2; i < 5; ++i) CHECK(store.valid(ids[i], kSigninT0 + 10s));
  }

  TEST_CASE("creating a session sweeps the ones past their ttl") {
    SessionStore store(1h);
    for (int i = 0; i < 10; ++i) store.create(kSigninT0);
    CHECK(store.size() == 10);
    const std::string id = store.create(kSigninT0 + 2h);
    CHECK(store.size() == 1);
    CHECK(store.valid(id, kSigninT0 + 2h));
  }

  TEST_CASE("sessions created, checked and revoked from several threads stay consistent") {
    SessionStore store(12h, 0s, 100);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t)
      threads.emplace_back([&store] {
        for (int i = 0; i < 200; ++i) {
          const std::string id = store.create(kSigninT0);
          store.valid(id, kSigninT0);
          if (i % 2) store.revoke(id);
        }
      });
    for (auto& t : threads) t.join();
    CHECK(store.size() <= 100);
  }

  TEST_CASE("the session cookie is found among others, with or without spaces") {
    const std::string id(64, 'a');
    CHECK(session_cookie("flowreg_session=" + id) == id);
    CHECK(session_cookie("a=1; flowreg_session=" + id + "; b=2") == id);
    CHECK(session_cookie("a=1;flowreg_session=" + id + ";b=2") == id);
    CHECK(session_cookie("  a=1 ;   flowreg_session = " + id + "  ") == id);
    CHECK(session_cookie("flowreg_session=\"" + id + "\"") == id);
  }

  TEST_CASE("no session cookie is read from a header without one or with a bad value") {
    CHECK_FALSE(session_cookie(""));
    CHECK_FALSE(session_cookie("a=1; b=2"));
    CHECK_FALSE(session_cookie("xflowreg_session=abc; flowreg_sessionx=abc"));
    CHECK_FALSE(session_cookie("flowreg_session="));
    CHECK_FALSE(session_cookie("flowreg_session=\"\""));
    CHECK_FALSE(session_cookie("flowreg_session"));
    CHECK_FALSE(session_cookie(";;;=;="));
    CHECK_FALSE(session_cookie("flowreg_session=" + std::string(129, 'a')));
    CHECK_FALSE(session_cookie("flowreg_session=a\\b"));
    CHECK_FALSE(session_cookie("flowreg_session=a,b"));
    CHECK_FALSE(session_cookie("flowreg_session=\x01\xff"));
    CHECK_FALSE(session_cookie(std::string(9000, ' ') + "flowreg_session=abc"));
  }

  TEST_CASE("of a session cookie given twice, the first counts") {
    CHECK(session_cookie("flowreg_session=first; flowreg_session=second") == "first");
    CHECK_FALSE(session_cookie("flowreg_session=; flowreg_session=second"));
  }

  TEST_CASE("the session cookie is HttpOnly, SameSite=Strict and Secure only over TLS") {
    CHECK(set_cookie("abc", 12h, false) ==
          "flowreg_session=abc; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200");
    CHECK(set_cookie("abc", 12h, true) ==
          "flowreg_session=abc; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200; Secure");
    CHECK(clear_cookie(false) == "flowreg_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0");
    CHECK(clear_cookie(true).ends_with("; Max-Age=0; Secure"));
  }
}

TEST_SUITE("signin") {
  TEST_CASE("a next that could leave the server is refused and a local path is kept") {
    CHECK(signin::is_local_path("/"));
    CHECK(signin::is_local_path("/runs?flow=a"));
    CHECK(signin::is_local_path("/runs/0b5c?x=%2F%2F#top"));
    CHECK_FALSE(signin::is_local_path(""));
    CHECK_FALSE(signin::is_local_path("//evil.example"));
    CHECK_FALSE(signin::is_local_path("/\\evil"));
    CHECK_FALSE(signin::is_local_path("/a\\b"));
    CHECK_FALSE(signin::is_local_path("https://evil"));
    CHECK_FALSE(signin::is_local_path("javascript:alert(1)"));
    CHECK_FALSE(signin::is_local_path("runs"));
    CHECK_FALSE(signin::is_local_path("/a b"));
    CHECK_FALSE(signin::is_local_path("/a\r\nSet-Cookie: x=1"));
    CHECK_FALSE(signin::is_local_path("/\t/evil.example"));
    CHECK_FALSE(signin::is_local_path("/caf\xc3\xa9"));
    CHECK_FALSE(signin::is_local_path("/" + std::string(1024, 'a')));
  }

  TEST_CASE("the form's fields are percent-decoded with '+' as a space") {
    const auto form = signin::parse_form("token=a+b%2Bc%26d%3d&next=%2Fruns%3Fflow%3Da&x=1");
    REQUIRE(form);
    CHECK(form->token == "a b+c&d=");
    CHECK(form->next == "/runs?flow=a");
    const auto first = signin::parse_form("token=one&token=two&next");
    REQUIRE(first);
    CHECK(first->token == "one");
    CHECK(first->next == "");
  }

  TEST_CASE("a form with a malformed escape or over 4 KiB is refused") {
    CHECK_FALSE(signin::parse_form("token=%"));
    CHECK_FALSE(signin::parse_form("token=%4"));
    CHECK_FALSE(signin::parse_form("token=%zz"));
    CHECK_FALSE(signin::parse_form("token=" + std::string(4096, 'a')));
    CHECK(signin::parse_form("token=" + std::string(4090, 'a')));
    CHECK(signin::parse_form(""));
  }

  TEST_CASE("the sign-in page escapes a hostile next and error") {
    const std::string html =
        signin::page("/\"><script>alert(1)</script>", "<img src=x onerror=alert(1)>");
    CHECK(html.find("<script>") == std::string::npos);
    CHECK(html.find("<img") == std::string::npos);
    CHECK(html.find("&lt;img src=x onerror=alert(1)&gt;") != std::string::npos);
    CHECK(html.find("&quot;&gt;&lt;script&gt;") != std::string::npos);
    CHECK(html.find("action=\"/signin\"") != std::string::npos);
  }

  TEST_CASE("the sign-in page sends a next that would leave the server to / instead") {
    const std::string html = signin::page("//evil.example", "");
    CHECK(html.find("evil.example") == std::string::npos);
    CHECK(html.find("name=\"next\" value=\"/\"") != std::string::npos);
    CHECK(html.find("role=\"alert\"") == std::string::npos);
  }

  TEST_CASE("GET /signin answers the page with the query's next") {
    http::Request req;
    req.method = "GET";
    req.path = "/signin";
    req.params.emplace("next", "/runs?flow=a");
    http::Response res;
    signin::signin_get(req, res);
    CHECK(res.status == 200);
    CHECK(res.get_header_value("Content-Type").starts_with("text/html"));
    CHECK(res.body.find("value=\"/runs?flow=a\"") != std::string::npos);
  }

  TEST_CASE("the right token gets a session cookie and 303 to next") {
    SessionStore store;
    http::Response res;
    signin::signin_post(signin_request("token=the-right-token-0123&next=%2Fruns%3Fflow%3Da"), res,
                        store, signin_token_is_right, true, kSigninT0);
    CHECK(res.status == 303);
    CHECK(res.get_header_value("Location") == "/runs?flow=a");
    const std::string cookie = res.get_header_value("Set-Cookie");
    CHECK(cookie.ends_with("; Path=/; HttpOnly; SameSite=Strict; Max-Age=43200; Secure"));
    const auto id = session_cookie(cookie.substr(0, cookie.find(';')));
    REQUIRE(id);
    CHECK(store.valid(*id, kSigninT0));

    http::Request next;
    next.headers.emplace("Cookie", "theme=dark; flowreg_session=" + *id);
    CHECK(signin::signed_in(next, store, kSigninT0 + 1h));
    CHECK_FALSE(signin::signed_in(next, store, kSigninT0 + 13h));
    CHECK_FALSE(signin::signed_in(http::Request(), store, kSigninT0));
  }

  TEST_CASE("a wrong or missing token gets 401 with the page, no cookie, and is counted") {
    SessionStore store;
    for (const char* body : {"token=wrong&next=%2Fworkers", "next=%2Fworkers", "token="}) {
      http::Response res;
      signin::signin_post(signin_request(body), res, store, signin_token_is_right, false,
                          kSigninT0);
      CHECK(res.status == 401);
      CHECK_FALSE(res.has_header("Set-Cookie"));
      CHECK(res.body.find("the token is wrong") != std::string::npos);
    }
    CHECK(store.failed_signins() == 3);
    CHECK(store.size() == 0);
  }

  TEST_CASE("signing in with a next that leaves the server redirects to / instead") {
    SessionStore store;
    for (const char* next : {"%2F%2Fevil.example", "https%3A%2F%2Fevil", "%2F%5Cevil"}) {
      http::Response res;
      signin::signin_post(signin_request(std::string("token=the-right-token-0123&next=") + next),
                          res, store, signin_token_is_right, false, kSigninT0);
      CHECK(res.status == 303);
      CHECK(res.get_header_value("Location") == "/");
    }
  }

  TEST_CASE("a sign-in that is not a form, is too large or malformed is refused") {
    SessionStore store;
    http::Response json_res, big_res, bad_res;
    signin::signin_post(signin_request("{\"token\":\"x\"}", "application/json"), json_res, store,
                        signin_token_is_right, false, kSigninT0);
    CHECK(json_res.status == 415);
    signin::signin_post(signin_request("token=" + std::string(5000, 'a')), big_res, store,
                        signin_token_is_right, false, kSigninT0);
    CHECK(big_res.status == 413);
    signin::signin_post(signin_request("token=%G0"), bad_res, store, signin_token_is_right, false,
                        kSigninT0);
    CHECK(bad_res.status == 400);
    CHECK(store.size() == 0);
  }

  TEST_CASE("logging out ends the session, clears the cookie and goes to /signin") {
    SessionStore store;
    const std::string id = store.create(kSigninT0);
    http::Request req;
    req.method = "POST";
    req.path = "/logout";
    req.headers.emplace("Cookie", "flowreg_session=" + id);
    http::Response res;
    signin::logout_post(req, res, store, false);
    CHECK(res.status == 303);
    CHECK(res.get_header_value("Location") == "/signin");
    CHECK(res.get_header_value("Set-Cookie").find("Max-Age=0") != std::string::npos);
    CHECK_FALSE(store.valid(id, kSigninT0));
  }
}
