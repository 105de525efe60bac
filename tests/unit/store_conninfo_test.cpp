// The connection defaults added to a database URL (core/src/store/conninfo.hpp): added where the
// user set nothing, never over what the URL or the environment sets.

#include <doctest/doctest.h>

#include <cstdlib>
#include <map>
#include <optional>
#include <string>

#include "store/conninfo.hpp"
#include "util/strings.hpp"

namespace fd = flowreg::detail;

namespace {

// The keywords `conninfo` sets after the defaults were added.
std::map<std::string, std::string> effective(const std::string& conninfo) {
  auto parsed = fd::parse_conninfo(fd::with_connection_defaults(conninfo));
  REQUIRE(parsed);
  return *parsed;
}

// Unsets an environment variable for the scope, restoring it after.
class EnvVar {
 public:
  EnvVar(const char* name, const char* value) : name_(name) {
    if (const char* old = std::getenv(name)) old_ = old;
    if (value)
      ::setenv(name, value, 1);
    else
      ::unsetenv(name);
  }
  ~EnvVar() {
    if (old_)
      ::setenv(name_, old_->c_str(), 1);
    else
      ::unsetenv(name_);
  }
  EnvVar(const EnvVar&) = delete;
  EnvVar& operator=(const EnvVar&) = delete;

 private:
  const char* name_;
  std::optional<std::string> old_;
};

}  // namespace

TEST_SUITE("conninfo") {
  TEST_CASE("a URL that sets none of them gets every default, and keeps all it says") {
    const EnvVar timeout("PGCONNECT_TIMEOUT", nullptr), service("PGSERVICE", nullptr);
    const auto set = effective(
        "postgresql://w%40rker:p%27a%5Css@db.example:6543/runs?sslmode=verify-full&"
        "sslrootcert=/etc/ca.crt&application_name=flowreg");
    CHECK(set.at("user") == "w@rker");
    CHECK(set.at("password") == "p'a\\ss");  // quotes and backslashes survive
    CHECK(set.at("host") == "db.example");
    CHECK(set.at("port") == "6543");
    CHECK(set.at("dbname") == "runs");
    CHECK(set.at("sslmode") == "verify-full");
    CHECK(set.at("sslrootcert") == "/etc/ca.crt");
    CHECK(set.at("application_name") == "flowreg");
    CHECK(set.at("connect_timeout") == "5");
    CHECK(set.at("keepalives") == "1");
    CHECK(set.at("keepalives_idle") == "5");
    CHECK(set.at("keepalives_interval") == "2");
    CHECK(set.at("keepalives_count") == "3");
    CHECK(set.at("tcp_user_timeout") == "5000");
  }

  TEST_CASE("what the URL sets wins, in either form") {
    const EnvVar timeout("PGCONNECT_TIMEOUT", nullptr), service("PGSERVICE", nullptr);
    SUBCASE("URL") {
      const auto set =
          effective("postgresql://db.example/runs?connect_timeout=30&tcp_user_timeout=0");
      CHECK(set.at("connect_timeout") == "30");
      CHECK(set.at("tcp_user_timeout") == "0");
      CHECK(set.at("keepalives_idle") == "5");
    }
    SUBCASE("key=value") {
      const auto set = effective("host=db.example dbname=runs keepalives=0 keepalives_idle = 60");
      CHECK(set.at("keepalives") == "0");
      CHECK(set.at("keepalives_idle") == "60");
      CHECK(set.at("connect_timeout") == "5");
    }
    SUBCASE("several hosts") {
      const auto set = effective("postgresql://a.example:5432,b.example:5433/runs");
      CHECK(set.at("host") == "a.example,b.example");
      CHECK(set.at("port") == "5432,5433");
      CHECK(set.at("connect_timeout") == "5");
    }
  }

  TEST_CASE("the environment wins over a default: PGCONNECT_TIMEOUT, or a service file") {
    SUBCASE("PGCONNECT_TIMEOUT") {
      const EnvVar timeout("PGCONNECT_TIMEOUT", "17"), service("PGSERVICE", nullptr);
      const auto set = effective("host=db.example");
      CHECK_FALSE(set.contains("connect_timeout"));  // libpq reads the variable
      CHECK(set.at("tcp_user_timeout") == "5000");
    }
    SUBCASE("a service named in the URL or by PGSERVICE: no default at all") {
      const EnvVar timeout("PGCONNECT_TIMEOUT", nullptr);
      CHECK(fd::with_connection_defaults("service=flowreg") == "service=flowreg");
      const EnvVar service("PGSERVICE", "flowreg");
      CHECK(fd::with_connection_defaults("host=db.example") == "host=db.example");
    }
  }

  TEST_CASE("a conninfo libpq cannot read is left as it is, and parsing it says why") {
    const std::string bad = "host=db.example nonsense_keyword=1 password=secret";
    CHECK(fd::with_connection_defaults(bad) == bad);
    auto parsed = fd::parse_conninfo(bad);
    REQUIRE_FALSE(parsed);
    CHECK(parsed.error().message.find("nonsense_keyword") != std::string::npos);
    CHECK(parsed.error().message.find("secret") == std::string::npos);
  }

  TEST_CASE("what libpq quotes from a conninfo that is not UTF-8 comes back as valid UTF-8") {
    auto parsed = fd::parse_conninfo("host=db.example bad\xff\xfekey=1");
    REQUIRE_FALSE(parsed);
    const std::string& message = parsed.error().message;
    CHECK(message.find("bad") != std::string::npos);
    CHECK(message.find('\xff') == std::string::npos);
    CHECK(fd::utf8_valid(message) == message);
  }
}
