#include <doctest/doctest.h>

#include <string>

#include "util/strings.hpp"

using flowreg::detail::bounded_text;
using flowreg::detail::is_utf8;
using flowreg::detail::utf8_invalid_at;
using flowreg::detail::utf8_prefix;
using flowreg::detail::utf8_valid;

namespace {
const std::string kReplacement = "\xEF\xBF\xBD";
}

TEST_SUITE("strings") {
  TEST_CASE("valid UTF-8 passes through unchanged") {
    for (const std::string s : {"", "plain ascii", "caf\xC3\xA9", "\xE2\x82\xAC 5",
                                "\xF0\x9F\x98\x80 emoji", "\xF4\x8F\xBF\xBF"}) {
      CHECK(is_utf8(s));
      CHECK(utf8_valid(s) == s);
    }
  }

  TEST_CASE("a Latin-1 byte becomes one replacement character") {
    CHECK_FALSE(is_utf8("caf\xE9"));
    CHECK(utf8_valid("caf\xE9") == "caf" + kReplacement);
    CHECK(utf8_valid("caf\xE9-x") == "caf" + kReplacement + "-x");
  }

  TEST_CASE("overlong forms, surrogates and code points past U+10FFFF are refused") {
    for (const std::string s : {"\xC0\xAF", "\xE0\x80\xAF", "\xED\xA0\x80", "\xF4\x90\x80\x80",
                                "\xF5\x80\x80\x80", "\xFF"}) {
      CAPTURE(s.size());
      CHECK_FALSE(is_utf8(s));
      CHECK(is_utf8(utf8_valid(s)));
    }
  }

  TEST_CASE("a character cut at the end is replaced once (maximal subpart)") {
    CHECK(utf8_valid("ab\xE2\x82") == "ab" + kReplacement);
    CHECK(utf8_valid("\xF0\x9F\x98") == kReplacement);
    CHECK(utf8_valid("\xF0\x9F\x98x") == kReplacement + "x");
  }

  TEST_CASE("the first invalid byte is found, also in a character cut at the very end") {
    constexpr auto npos = std::string::npos;
    CHECK(utf8_invalid_at("") == npos);
    CHECK(utf8_invalid_at("caf\xC3\xA9") == npos);
    CHECK(utf8_invalid_at("caf\xE9") == 3);
    CHECK(utf8_invalid_at("\xFF") == 0);
    // A cut replacement character: utf8_valid() turns it into a whole one, so the place where the
    // repaired text first differs from the input is past its end (the fuzzer's finding).
    CHECK(utf8_invalid_at("a: \xEF\xBF") == 3);
    CHECK(utf8_invalid_at("ab\xE2\x82") == 2);
  }

  TEST_CASE("a prefix never ends inside a character") {
    const std::string euro = "a\xE2\x82\xAC";  // 1 + 3 bytes
    CHECK(utf8_prefix(euro, 10) == euro);
    CHECK(utf8_prefix(euro, 4) == euro);
    CHECK(utf8_prefix(euro, 3) == "a");
    CHECK(utf8_prefix(euro, 2) == "a");
    CHECK(utf8_prefix(euro, 1) == "a");
    CHECK(utf8_prefix(euro, 0).empty());
  }

  TEST_CASE("bounded text is valid, cut at a character boundary, and gives the size it had") {
    CHECK(bounded_text("short", 10) == "short");
    CHECK(bounded_text("bad \xFF", 10) == "bad " + kReplacement);
    // 3-byte characters with a limit of 7: two whole characters, not a third cut in two.
    const std::string euros = "\xE2\x82\xAC\xE2\x82\xAC\xE2\x82\xAC\xE2\x82\xAC";
    CHECK(bounded_text(euros, 7) == "\xE2\x82\xAC\xE2\x82\xAC... (12 bytes)");
    // Invalid bytes become U+FFFD (3 bytes each) before the cut; the size is the input's.
    CHECK(bounded_text("\xFF\xFF\xFF", 4) == kReplacement + "... (3 bytes)");
    // A truncated sequence at the end, and a huge input.
    CHECK(bounded_text("ab\xE2\x82", 2) == "ab... (4 bytes)");
    const std::string huge(1'000'000, 'x');
    const std::string cut = bounded_text(huge, 200);
    CHECK(cut == std::string(200, 'x') + "... (1000000 bytes)");
    CHECK(is_utf8(bounded_text(std::string(100'000, '\xC3'), 200)));
  }
}
