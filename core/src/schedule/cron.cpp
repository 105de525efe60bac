#include "schedule/cron.hpp"

#include <date/date.h>
#include <date/tz.h>

#include <array>
#include <bit>
#include <cstdint>
#include <exception>
#include <string>
#include <utility>

namespace flowreg::schedule {
namespace {
namespace cron_detail {

// One column of an expression: its name in messages, its values, the names it accepts.
struct FieldSpec {
  const char* name;
  int min;
  int max;                   // the largest value accepted (7 for day-of-week: Sunday again)
  int star_max;              // the largest value of `*` and of `a/n` (6 for day-of-week)
  const char* const* names;  // 3-letter names, the first one meaning `min` (nullptr: none)
  int name_count;
  const char* names_hint;  // "JAN-DEC" in messages
};

constexpr const char* kMonthNames[] = {"JAN", "FEB", "MAR", "APR", "MAY", "JUN",
                                       "JUL", "AUG", "SEP", "OCT", "NOV", "DEC"};
constexpr const char* kWeekdayNames[] = {"SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT"};
constexpr const char* kMonthFullNames[] = {"January",   "February", "March",    "April",
                                           "May",       "June",     "July",     "August",
                                           "September", "October",  "November", "December"};

constexpr FieldSpec kSecond{"second", 0, 59, 59, nullptr, 0, nullptr};
constexpr FieldSpec kMinute{"minute", 0, 59, 59, nullptr, 0, nullptr};
constexpr FieldSpec kHour{"hour", 0, 23, 23, nullptr, 0, nullptr};
constexpr FieldSpec kDayOfMonth{"day-of-month", 1, 31, 31, nullptr, 0, nullptr};
constexpr FieldSpec kMonth{"month", 1, 12, 12, kMonthNames, 12, "JAN-DEC"};
constexpr FieldSpec kDayOfWeek{"day-of-week", 0, 7, 6, kWeekdayNames, 7, "SUN-SAT"};

// A span of the expression: its text and its 1-based column.
struct Token {
  std::string_view text;
  std::size_t column;
};

// "'60' (column 1, minute): out of 0-59"
std::string field_message(const Token& token, const FieldSpec& spec, std::string_view reason) {
  std::string message;
  message.reserve(token.text.size() + reason.size() + 40);
  message += '\'';
  message += token.text;
  message += "' (column ";
  message += std::to_string(token.column);
  message += ", ";
  message += spec.name;
  message += "): ";
  message += reason;
  return message;
}

bool is_blank(char c) { return c == ' ' || c == '\t'; }
bool is_digit(char c) { return c >= '0' && c <= '9'; }
bool is_alpha(char c) { return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'); }
char to_upper(char c) { return c >= 'a' && c <= 'z' ? static_cast<char>(c - 'a' + 'A') : c; }

bool equals_ignoring_case(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i)
    if (to_upper(a[i]) != to_upper(b[i])) return false;
  return true;
}

// A number or, where the field has them, a name; in [spec.min, spec.max].
Result<int> parse_value(const Token& token, const FieldSpec& spec) {
  if (token.text.empty())
    return make_error(Errc::invalid_argument, field_message(token, spec, "a value is missing"));
  if (is_digit(token.text[0])) {
    int value = 0;
    for (char c : token.text) {
      if (!is_digit(c))
        return make_error(Errc::invalid_argument, field_message(token, spec, "not a number"));
      if (value < 100000) value = value * 10 + (c - '0');
    }
    if (value < spec.min || value > spec.max)
      return make_error(Errc::invalid_argument, field_message(token, spec,
                                                              "out of " + std::to_string(spec.min) +
                                                                  "-" + std::to_string(spec.max)));
    return value;
  }
  bool letters = true;
  for (char c : token.text) letters = letters && is_alpha(c);
  if (letters && spec.names != nullptr) {
    for (int i = 0; i < spec.name_count; ++i)
      if (equals_ignoring_case(token.text, spec.names[i])) return spec.min + i;
    return make_error(
        Errc::invalid_argument,
        field_message(token, spec,
                      std::string("unknown name; expected ") + spec.names_hint + " or " +
                          std::to_string(spec.min) + "-" + std::to_string(spec.max)));
  }
  if (letters)
    return make_error(Errc::invalid_argument,
                      field_message(token, spec, "not a number (this field takes no names)"));
  return make_error(Errc::invalid_argument, field_message(token, spec, "not a number"));
}

// One item of a list: `*`, `a`, `a-b`, each optionally `/step`. Sets its bits in `bits`.
Result<void> parse_item(const Token& item, const FieldSpec& spec, unsigned long long& bits) {
  const std::string_view text = item.text;
  const std::size_t slash = text.find('/');
  const std::string_view base = text.substr(0, slash);
  if (base.empty())
    return make_error(Errc::invalid_argument,
                      field_message(item, spec, "a value, a range or '*' must come before '/'"));
  int low = 0, high = 0;
  bool single = false;
  if (base == "*") {
    low = spec.min;
    high = spec.star_max;
  } else {
    const std::size_t dash = base.find('-');
    const Token first{base.substr(0, dash), item.column};
    if (first.text.empty())
      return make_error(Errc::invalid_argument,
                        field_message(item, spec, "a range needs a value before '-'"));
    auto lo = parse_value(first, spec);
    if (!lo) return tl::unexpected(std::move(lo.error()));
    low = high = *lo;
    if (dash == std::string_view::npos) {
      single = true;
    } else {
      const Token second{base.substr(dash + 1), item.column + dash + 1};
      if (second.text.empty())
        return make_error(Errc::invalid_argument,
                          field_message(item, spec, "a range needs a value after '-'"));
      if (second.text.find('-') != std::string_view::npos)
        return make_error(Errc::invalid_argument, field_message(item, spec, "a range has one '-'"));
      auto hi = parse_value(second, spec);
      if (!hi) return tl::unexpected(std::move(hi.error()));
      high = *hi;
      if (high < low)
        return make_error(Errc::invalid_argument,
                          field_message(item, spec, "the range runs backwards"));
    }
  }
  int step = 1;
  if (slash != std::string_view::npos) {
    const Token step_token{text.substr(slash + 1), item.column + slash + 1};
    const int span = spec.star_max - spec.min + 1;
    if (step_token.text.empty())
      return make_error(Errc::invalid_argument,
                        field_message(item, spec, "a step needs a number after '/'"));
    step = 0;
    for (char c : step_token.text) {
      if (!is_digit(c))
        return make_error(Errc::invalid_argument,
                          field_message(step_token, spec, "a step must be a number"));
      if (step < 100000) step = step * 10 + (c - '0');
    }
    if (step == 0)
      return make_error(Errc::invalid_argument,
                        field_message(item, spec, "a step of 0 never fires"));
    if (step > span)
      return make_error(Errc::invalid_argument,
                        field_message(step_token, spec, "a step out of 1-" + std::to_string(span)));
    if (single) high = spec.star_max < low ? low : spec.star_max;  // `a/n`: from a to the end
  }
  for (int v = low; v <= high; v += step) bits |= 1ULL << v;
  return {};
}

// A whole field: a comma-separated list of items.
Result<unsigned long long> parse_field(const Token& field, const FieldSpec& spec) {
  unsigned long long bits = 0;
  std::size_t start = 0;
  while (true) {
    const std::size_t comma = field.text.find(',', start);
    const std::size_t end = comma == std::string_view::npos ? field.text.size() : comma;
    const Token item{field.text.substr(start, end - start), field.column + start};
    if (item.text.empty())
      return make_error(
          Errc::invalid_argument,
          field_message(field, spec,
                        "an empty item in the list at column " + std::to_string(item.column)));
    auto ok = parse_item(item, spec, bits);
    if (!ok) return tl::unexpected(std::move(ok.error()));
    if (comma == std::string_view::npos) break;
    start = comma + 1;
  }
  if (spec.max == 7 && (bits & (1ULL << 7)) != 0) bits = (bits & ~(1ULL << 7)) | 1ULL;  // 7: Sunday
  return bits;
}

struct Alias {
  const char* name;
  const char* expansion;
};
constexpr Alias kAliases[] = {
    {"@yearly", "0 0 1 1 *"}, {"@annually", "0 0 1 1 *"}, {"@monthly", "0 0 1 * *"},
    {"@weekly", "0 0 * * 0"}, {"@daily", "0 0 * * *"},    {"@midnight", "0 0 * * *"},
    {"@hourly", "0 * * * *"},
};

std::string quoted(std::string_view text) { return "'" + std::string(text) + "'"; }

// The number of days of `month` in a leap year: whether a day can ever fall in it.
int max_days_in_month(int month) {
  constexpr int kDays[] = {31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
  return kDays[month - 1];
}

// The first set bit at or above `from` of `bits` (limited to `limit` inclusive), or -1.
int next_bit(unsigned long long bits, int from, int limit) {
  if (from > limit) return -1;
  const unsigned long long rest = bits >> from;
  if (rest == 0) return -1;
  const int at = from + std::countr_zero(rest);
  return at <= limit ? at : -1;
}

}  // namespace cron_detail
}  // namespace

Result<Cron> Cron::parse(std::string_view expression) {
  using namespace cron_detail;
  if (expression.size() > kMaxCronBytes)
    return make_error(Errc::invalid_argument,
                      "a cron expression of " + std::to_string(expression.size()) +
                          " bytes: longer than the limit of " + std::to_string(kMaxCronBytes));
  for (std::size_t i = 0; i < expression.size(); ++i) {
    const auto byte = static_cast<unsigned char>(expression[i]);
    if ((byte < 0x20 && byte != '\t') || byte >= 0x7f) {
      static constexpr char kHex[] = "0123456789ABCDEF";
      std::string hex = "0x";
      hex += kHex[byte >> 4];
      hex += kHex[byte & 0xf];
      return make_error(Errc::invalid_argument, "a cron expression must be printable ASCII: byte " +
                                                    hex + " at column " + std::to_string(i + 1));
    }
  }
  std::size_t first = 0, last = expression.size();
  while (first < last && is_blank(expression[first])) ++first;
  while (last > first && is_blank(expression[last - 1])) --last;
  const std::string_view trimmed = expression.substr(first, last - first);
  if (trimmed.empty()) return make_error(Errc::invalid_argument, "an empty cron expression");

  if (trimmed[0] == '@') {
    for (const Alias& alias : kAliases) {
      if (equals_ignoring_case(trimmed, alias.name)) {
        auto expanded = parse(alias.expansion);
        if (!expanded) return expanded;
        expanded->text_ = std::string(expression);
        return expanded;
      }
    }
    return make_error(Errc::invalid_argument,
                      quoted(trimmed) + " (column " + std::to_string(first + 1) +
                          "): unknown alias; expected @yearly, @annually, @monthly, @weekly, "
                          "@daily, @midnight or @hourly, alone");
  }

  // Split into fields, each with its column.
  std::array<Token, 6> fields{};
  std::size_t count = 0;
  for (std::size_t i = first; i < last;) {
    if (is_blank(expression[i])) {
      ++i;
      continue;
    }
    std::size_t end = i;
    while (end < last && !is_blank(expression[end])) ++end;
    if (count < fields.size()) fields[count] = Token{expression.substr(i, end - i), i + 1};
    ++count;
    i = end;
  }
  if (count != 5 && count != 6)
    return make_error(Errc::invalid_argument,
                      quoted(trimmed) + ": " + std::to_string(count) +
                          (count == 1 ? " field" : " fields") +
                          "; expected 5 (minute hour day-of-month month day-of-week) or 6 (a "
                          "second first)");

  Cron cron;
  cron.text_ = std::string(expression);
  cron.has_seconds_ = count == 6;
  const Token* at = fields.data();
  if (cron.has_seconds_) {
    auto bits = parse_field(*at++, kSecond);
    if (!bits) return tl::unexpected(std::move(bits.error()));
    cron.seconds_ = *bits;
  } else {
    cron.seconds_ = 1;  // second 0
  }
  const FieldSpec* specs[] = {&kMinute, &kHour, &kDayOfMonth, &kMonth, &kDayOfWeek};
  unsigned long long values[5] = {};
  for (int i = 0; i < 5; ++i, ++at) {
    auto bits = parse_field(*at, *specs[i]);
    if (!bits) return tl::unexpected(std::move(bits.error()));
    values[i] = *bits;
  }
  cron.minutes_ = values[0];
  cron.hours_ = static_cast<unsigned>(values[1]);
  cron.days_ = static_cast<unsigned>(values[2]);
  cron.months_ = static_cast<unsigned>(values[3]);
  cron.weekdays_ = static_cast<unsigned>(values[4]);
  cron.days_restricted_ = at[-3].text[0] != '*';
  cron.weekdays_restricted_ = at[-1].text[0] != '*';

  // Whether it ever fires. Every month has each weekday, so a restricted day-of-week (alone: with
  // day-of-month `*`-led, which always holds day 1; or or-ed with a restricted day-of-month)
  // fires. Otherwise a day of the set must exist in a month of the set (February 29 in leap
  // years); a `*`-led day-of-week that is a subset (`*/2`) is and-ed in, and each date falls on
  // each weekday in some year (February 29 within 40 years: next_after searches kSearchYears).
  if (!cron.weekdays_restricted_) {
    const int smallest_day = std::countr_zero(cron.days_);
    bool fires = false;
    for (int m = 1; m <= 12; ++m)
      fires = fires || ((cron.months_ >> m & 1U) != 0 && smallest_day <= max_days_in_month(m));
    if (!fires) {
      std::string months;
      int listed = 0;
      const int month_count = std::popcount(cron.months_);
      for (int m = 1; m <= 12; ++m) {
        if ((cron.months_ >> m & 1U) == 0) continue;
        ++listed;
        if (listed > 1) months += listed == month_count ? " and " : ", ";
        months += kMonthFullNames[m - 1];
      }
      return make_error(Errc::invalid_argument, quoted(trimmed) + ": never fires: " + months +
                                                    (month_count == 1 ? " has" : " have") +
                                                    " no day " + std::to_string(smallest_day));
    }
  }
  return cron;
}

std::optional<TimePoint> Cron::next_after(TimePoint after, const date::time_zone& zone) const {
  using namespace std::chrono;
  using cron_detail::next_bit;
  const sys_seconds after_s = floor<seconds>(after);
  // The local second after the local time of `after`, not the local time of the second after
  // `after`: when `after` is the last second before a gap, the next second's local time is past
  // the gap, whose local times fire at that very next second.
  const date::local_seconds start = zone.to_local(after_s) + seconds{1};
  const date::local_days start_day = floor<date::days>(start);
  const date::year_month_day start_ymd{start_day};
  const date::hh_mm_ss<seconds> start_tod{start - start_day};

  int y = static_cast<int>(start_ymd.year());
  int mo = static_cast<int>(static_cast<unsigned>(start_ymd.month()));
  int d = static_cast<int>(static_cast<unsigned>(start_ymd.day()));
  int h = static_cast<int>(start_tod.hours().count());
  int mi = static_cast<int>(start_tod.minutes().count());
  int s = static_cast<int>(start_tod.seconds().count());
  const int last_year = y + kSearchYears;
  int month_days = 0;  // days of (y, mo); 0: not computed yet

  // Each step either finds a time or moves the candidate forwards to the next possible one, and
  // the year is bounded; the step count is bounded too, in case of a bug.
  for (int steps = 0; steps < 1'000'000; ++steps) {
    if (y > last_year) return std::nullopt;
    // Month.
    const int month = next_bit(months_, mo, 12);
    if (month < 0) {
      ++y;
      mo = 1, d = 1, h = 0, mi = 0, s = 0, month_days = 0;
      continue;
    }
    if (month != mo) {
      mo = month, d = 1, h = 0, mi = 0, s = 0, month_days = 0;
    }
    if (month_days == 0) {
      month_days = static_cast<int>(static_cast<unsigned>(date::year_month_day_last{
          date::year{y} / date::month{static_cast<unsigned>(mo)} / date::last}
                                                              .day()));
    }
    // Day.
    if (d > month_days) {
      ++mo, d = 1, h = 0, mi = 0, s = 0, month_days = 0;
      if (mo > 12) mo = 1, ++y;
      continue;
    }
    if (!weekdays_restricted_ && (days_ >> d & 1U) == 0) {  // skip to the next day of the set
      const int next_day = next_bit(days_, d, month_days);
      d = next_day < 0 ? month_days + 1 : next_day;
      h = 0, mi = 0, s = 0;
      continue;
    }
    const date::year_month_day ymd{date::year{y}, date::month{static_cast<unsigned>(mo)},
                                   date::day{static_cast<unsigned>(d)}};
    const date::local_days day{ymd};
    const bool dom = (days_ >> d & 1U) != 0;
    const bool dow = (weekdays_ >> date::weekday{day}.c_encoding() & 1U) != 0;
    const bool day_fires = days_restricted_ && weekdays_restricted_ ? dom || dow : dom && dow;
    if (!day_fires) {
      ++d, h = 0, mi = 0, s = 0;
      continue;
    }
    // Hour, minute, second.
    const int hour = next_bit(hours_, h, 23);
    if (hour < 0) {
      ++d, h = 0, mi = 0, s = 0;
      continue;
    }
    if (hour != h) h = hour, mi = 0, s = 0;
    const int minute = next_bit(minutes_, mi, 59);
    if (minute < 0) {
      ++h, mi = 0, s = 0;
      continue;
    }
    if (minute != mi) mi = minute, s = 0;
    const int second = next_bit(seconds_, s, 59);
    if (second < 0) {
      ++mi, s = 0;
      continue;
    }
    s = second;

    // A local time that matches: the instant it stands for in the zone.
    const date::local_seconds local = day + hours{h} + minutes{mi} + seconds{s};
    const date::local_info info = zone.get_info(local);
    sys_seconds instant{};
    switch (info.result) {
      case date::local_info::unique:
        instant = sys_seconds{local.time_since_epoch()} - info.first.offset;
        break;
      case date::local_info::nonexistent:  // in a gap: the first instant after it
        instant = info.first.end;
        break;
      case date::local_info::ambiguous:  // repeated: its first occurrence
        instant = sys_seconds{local.time_since_epoch()} - info.first.offset;
        break;
    }
    // Past the start only in the second occurrence of a repeated hour, whose times fired in the
    // first: it fires once.
    if (instant > after_s) return TimePoint{instant};
    ++s;
  }
  return std::nullopt;
}

Result<const date::time_zone*> find_zone(std::string_view name) {
  if (name.empty()) return make_error(Errc::invalid_argument, "an empty time zone name");
  if (name.size() > kMaxZoneNameBytes)
    return make_error(Errc::invalid_argument, "a time zone name of " + std::to_string(name.size()) +
                                                  " bytes: longer than the limit of " +
                                                  std::to_string(kMaxZoneNameBytes));
  for (std::size_t i = 0; i < name.size(); ++i) {
    const char c = name[i];
    const bool allowed = cron_detail::is_alpha(c) || cron_detail::is_digit(c) || c == '/' ||
                         c == '_' || c == '-' || c == '+';
    if (!allowed)
      return make_error(Errc::invalid_argument,
                        "a time zone name is ASCII letters, digits, '/', '_', '-' and '+': "
                        "not the byte at column " +
                            std::to_string(i + 1));
  }
  try {
    return date::locate_zone(std::string(name));
  } catch (const std::exception&) {
    return make_error(Errc::invalid_argument, "unknown time zone '" + std::string(name) + "'");
  }
}

}  // namespace flowreg::schedule
