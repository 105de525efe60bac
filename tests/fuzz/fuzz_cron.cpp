// Cron expressions (core/src/schedule/cron.cpp): Cron::parse on hostile bytes and next_after in
// zones with daylight saving. Properties: a refusal is Errc::invalid_argument with a short message
// of printable ASCII and tabs (never the hostile bytes); an accepted expression fires after every
// start within the search horizon (parse refuses those that never fire), strictly after it, and
// every start in between gives the same next instant (next_after is the next element of one fixed
// set).

#include <chrono>
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "schedule/cron.hpp"
#include "support.hpp"

namespace {

namespace s = flowreg::schedule;
using std::chrono::seconds;

const date::time_zone* fuzz_cron_zone(std::string_view name) {
  auto zone = s::find_zone(name);
  FUZZ_CHECK(zone.has_value());
  return *zone;
}

void check_next(const s::Cron& cron, const date::time_zone& zone, s::TimePoint start) {
  const auto next = cron.next_after(start, zone);
  FUZZ_CHECK(next.has_value());
  FUZZ_CHECK(*next > start);
  FUZZ_CHECK(*next - start <= std::chrono::years{s::Cron::kSearchYears + 1});
  FUZZ_CHECK(cron.next_after(*next - seconds{1}, zone) == next);
  const auto middle = start + std::chrono::floor<seconds>((*next - start) / 2);
  FUZZ_CHECK(cron.next_after(middle, zone) == next);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size > 1024) return 0;
  const std::string_view text(reinterpret_cast<const char*>(data), size);
  auto cron = s::Cron::parse(text);
  if (!cron) {
    FUZZ_CHECK(cron.error().code == flowreg::Errc::invalid_argument);
    FUZZ_CHECK(!cron.error().message.empty() &&
               cron.error().message.size() <= s::kMaxCronBytes + 200);
    for (char c : cron.error().message) FUZZ_CHECK((c >= 0x20 && c < 0x7f) || c == '\t');
    return 0;
  }
  FUZZ_CHECK(cron->text() == text);

  static const date::time_zone* const zones[] = {fuzz_cron_zone("UTC"),
                                                 fuzz_cron_zone("Europe/Berlin"),
                                                 fuzz_cron_zone("Australia/Lord_Howe")};
  // Starts around the daylight-saving changes of 2026, before 2100 (not a leap year), and one
  // that depends on the input (FNV-1a), anywhere in 1970-2150.
  std::uint64_t hash = 1469598103934665603ULL;
  for (std::size_t i = 0; i < size; ++i) hash = (hash ^ data[i]) * 1099511628211ULL;
  const s::TimePoint starts[] = {
      s::TimePoint{seconds{1774744200}},  // 2026-03-29T00:30:00Z
      s::TimePoint{seconds{1792888200}},  // 2026-10-25T00:30:00Z
      s::TimePoint{seconds{4012588800}},  // 2097-02-25T00:00:00Z
      s::TimePoint{seconds{static_cast<std::int64_t>(hash % 5680281600ULL)}},
  };
  for (const date::time_zone* zone : zones)
    for (const s::TimePoint start : starts) check_next(*cron, *zone, start);
  return 0;
}
