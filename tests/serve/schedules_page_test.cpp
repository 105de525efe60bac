// The dashboard's schedules (docs/schedules.md, "Watching them") on a real `flowreg serve
// --worker` with a token: the list, a schedule's page and its flow's page, escaped; the buttons as
// a signed-in browser sends them (forms POSTing with the session cookie and the page's Origin),
// refused without them; and the schedule metrics at /metrics once a schedule fired.

#include <doctest/doctest.h>

#include <chrono>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "serve/serve_scene.hpp"

namespace flowreg::servetest {

namespace {

json parsed(const httplib::Result& r) {
  REQUIRE(r);
  CAPTURE(r->body);
  return json::parse(r->body);
}

// The value of the exposition line `series` ("name{labels}"), or nullopt when there is none.
std::optional<double> sample(const std::string& text, const std::string& series) {
  const std::string line = "\n" + series + " ";
  const auto at = text.find(line);
  if (at == std::string::npos) return std::nullopt;
  return std::stod(text.substr(at + line.size(), text.find('\n', at + line.size())));
}

// A browser signed in with the token: its session cookie and this server's Origin, as the
// dashboard's forms send them.
struct SignedIn {
  httplib::Client& c;
  httplib::Headers headers;

  httplib::Result post(const std::string& path) {
    return c.Post(path.c_str(), headers, "", "application/x-www-form-urlencoded");
  }
  httplib::Result get(const std::string& path) { return c.Get(path.c_str(), headers); }
};

SignedIn sign_in(httplib::Client& c, const ServeScene& scene) {
  auto r = c.Post("/signin", "token=" + std::string(kToken) + "&next=%2Fschedules",
                  "application/x-www-form-urlencoded");
  REQUIRE(r);
  REQUIRE(r->status == 303);
  const std::string set = r->get_header_value("Set-Cookie");
  REQUIRE(!set.empty());
  return SignedIn{c,
                  {{"Cookie", set.substr(0, set.find(';'))},
                   {"Origin", "http://127.0.0.1:" + std::to_string(scene.port)},
                   {"Accept", "text/html"}}};
}

}  // namespace

TEST_SUITE("serve") {
  TEST_CASE(
      "the schedules page lists a schedule escaped, and its buttons pause, resume, trigger and "
      "delete it for a signed-in browser only") {
    ServeScene scene(kToken);
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto api = scene.client(kToken);
    // A yearly schedule (it does not fire during the test) whose input holds markup.
    const json def = {{"name", "dash.nightly"},
                      {"flow", "marked"},
                      {"cron", "0 3 1 1 *"},
                      {"timezone", "Europe/Berlin"},
                      {"input", {{"order_id", kScript}}}};
    auto created = api.Post("/api/v1/schedules", def.dump(), "application/json");
    REQUIRE(created);
    CAPTURE(created->body);
    REQUIRE(created->status == 201);

    auto c = scene.client();
    SignedIn browser = sign_in(c, scene);
    {
      auto page = browser.get("/schedules");
      REQUIRE(page);
      CAPTURE(page->body);
      REQUIRE(page->status == 200);
      CHECK(page->body.find("<a href=\"/schedules\" aria-current=\"page\">Schedules</a>") !=
            std::string::npos);
      CHECK(page->body.find("data-schedule=\"dash.nightly\"") != std::string::npos);
      CHECK(page->body.find("<a href=\"/flows/marked\">marked</a>") != std::string::npos);
      CHECK(
          page->body.find(
              "<code class=\"cron\">0 3 1 1 *</code> <span class=\"muted\">Europe/Berlin</span>") !=
          std::string::npos);
      CHECK(page->body.find(">scheduled</span>") != std::string::npos);
      CHECK(page->body.find("data-schedules-shown=\"1\"") != std::string::npos);
      // The input's markup as text, never as markup.
      CHECK(page->body.find("<script>alert") == std::string::npos);
      CHECK(page->body.find("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;") !=
            std::string::npos);
      for (const char* action : {"pause", "trigger", "delete"})
        CHECK(
            page->body.find(std::string("<form method=\"post\" action=\"/schedules/dash.nightly/") +
                            action + "\"") != std::string::npos);
      CHECK(page->body.find("/resume\"") == std::string::npos);
    }
    {
      auto page = browser.get("/schedules/dash.nightly");
      REQUIRE(page);
      REQUIRE(page->status == 200);
      CHECK(page->body.find("<h1>Schedule dash.nightly</h1>") != std::string::npos);
      CHECK(page->body.find("<script>alert") == std::string::npos);
      CHECK(page->body.find("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;") !=
            std::string::npos);
      CHECK(page->body.find("action=\"/schedules/dash.nightly/pause?back=page\"") !=
            std::string::npos);
      auto flow = browser.get("/flows/marked");
      REQUIRE(flow);
      CHECK(flow->body.find("data-flow-schedules=\"1\"") != std::string::npos);
      CHECK(flow->body.find("data-schedule=\"dash.nightly\"") != std::string::npos);
      auto none = browser.get("/schedules/no.such");
      REQUIRE(none);
      CHECK(none->status == 404);
    }
    const auto shown = [&] { return parsed(api.Get("/api/v1/schedules/dash.nightly")); };

    // Without the session (or the token) nothing is done; nor from another site's page.
    auto anonymous = c.Post("/schedules/dash.nightly/pause", httplib::Headers{}, "",
                            "application/x-www-form-urlencoded");
    REQUIRE(anonymous);
    CHECK(anonymous->status == 401);
    httplib::Headers foreign = browser.headers;
    foreign.erase("Origin");
    foreign.emplace("Origin", "http://evil.example");
    auto cross =
        c.Post("/schedules/dash.nightly/pause", foreign, "", "application/x-www-form-urlencoded");
    REQUIRE(cross);
    CHECK(cross->status == 403);
    CHECK(shown()["paused"] == false);

    // Pause: back to the list, with a notice, and the button is Resume now.
    auto paused = browser.post("/schedules/dash.nightly/pause");
    REQUIRE(paused);
    CAPTURE(paused->body);
    REQUIRE(paused->status == 303);
    CHECK(paused->get_header_value("Location") ==
          "/schedules?done=paused&schedule=dash.nightly#schedule-dash.nightly");
    CHECK(shown()["paused"] == true);
    {
      auto page = browser.get("/schedules?done=paused&schedule=dash.nightly");
      REQUIRE(page);
      CHECK(page->body.find("data-notice>Schedule <strong>dash.nightly</strong> paused") !=
            std::string::npos);
      CHECK(page->body.find("action=\"/schedules/dash.nightly/resume\"") != std::string::npos);
      CHECK(page->body.find(">paused</span>") != std::string::npos);
      // A notice names what it is given as text.
      auto hostile = browser.get("/schedules?done=paused&schedule=%3Cb%3Ex");
      REQUIRE(hostile);
      CHECK(hostile->body.find("<strong>&lt;b&gt;x</strong>") != std::string::npos);
    }

    // Resume from the schedule's own page: back to it.
    auto resumed = browser.post("/schedules/dash.nightly/resume?back=page");
    REQUIRE(resumed);
    REQUIRE(resumed->status == 303);
    CHECK(resumed->get_header_value("Location") ==
          "/schedules/dash.nightly?done=resumed&schedule=dash.nightly");
    CHECK(shown()["paused"] == false);
    {
      auto page = browser.get(resumed->get_header_value("Location"));
      REQUIRE(page);
      CHECK(page->body.find("data-notice>Schedule <strong>dash.nightly</strong> resumed") !=
            std::string::npos);
    }

    // Trigger now: a run of the schedule's input, named in the notice, and the schedule's last run.
    auto triggered = browser.post("/schedules/dash.nightly/trigger");
    REQUIRE(triggered);
    CAPTURE(triggered->body);
    REQUIRE(triggered->status == 303);
    const std::string location = triggered->get_header_value("Location");
    const std::string marker = "&run=";
    REQUIRE(location.find(marker) != std::string::npos);
    const std::string run = location.substr(location.find(marker) + marker.size(), 36);
    CHECK(location ==
          "/schedules?done=triggered&schedule=dash.nightly&run=" + run + "#schedule-dash.nightly");
    const json ended = scene.wait_run(run, kToken);
    CHECK(ended["flow"] == "marked");
    CHECK(ended["input"]["order_id"] == kScript);
    CHECK(shown()["last_run_id"] == run);
    {
      auto page = browser.get(location.substr(0, location.find('#')));
      REQUIRE(page);
      CHECK(page->body.find("started run <a class=\"mono\" href=\"/runs/" + run + "\"") !=
            std::string::npos);
      // The list's last run: a link to its page, with its status.
      CHECK(page->body.find("href=\"/runs/" + run + "\"") != std::string::npos);
    }

    // Delete: gone from the API and the list; a second delete is the dashboard's 404 page.
    auto deleted = browser.post("/schedules/dash.nightly/delete?back=page");
    REQUIRE(deleted);
    REQUIRE(deleted->status == 303);
    CHECK(deleted->get_header_value("Location") ==
          "/schedules?done=deleted&schedule=dash.nightly#schedule-dash.nightly");
    auto gone = api.Get("/api/v1/schedules/dash.nightly");
    REQUIRE(gone);
    CHECK(gone->status == 404);
    {
      auto page = browser.get("/schedules?done=deleted&schedule=dash.nightly");
      REQUIRE(page);
      CHECK(page->body.find("data-notice>Schedule <strong>dash.nightly</strong> deleted") !=
            std::string::npos);
      CHECK(page->body.find("data-schedule=\"dash.nightly\"") == std::string::npos);
      CHECK(page->body.find("No schedules.") != std::string::npos);
    }
    auto again = browser.post("/schedules/dash.nightly/delete");
    REQUIRE(again);
    CHECK(again->status == 404);
    CHECK(again->get_header_value("Content-Type").starts_with("text/html"));
  }

  TEST_CASE(
      "a schedule that fired is counted in the worker's firing metrics and the store's schedule "
      "gauges") {
    ServeScene scene;
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto c = scene.client();
    const auto make = [&](const json& def) {
      auto r = c.Post("/api/v1/schedules", def.dump(), "application/json");
      REQUIRE(r);
      CAPTURE(r->body);
      REQUIRE(r->status == 201);
    };
    // Every second, and a paused one.
    make({{"name", "every.second"},
          {"flow", "marked"},
          {"cron", "* * * * * *"},
          {"input", {{"order_id", "tick"}}}});
    make({{"name", "held"},
          {"flow", "marked"},
          {"cron", "0 3 1 1 *"},
          {"input", {{"order_id", "held"}}},
          {"paused", true}});
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    while (parsed(c.Get("/api/v1/schedules/every.second"))["fired"] < 2 &&
           std::chrono::steady_clock::now() < deadline)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    REQUIRE(parsed(c.Get("/api/v1/schedules/every.second"))["fired"] >= 2);
    // The store's gauges are read at most once a second: scraped until they show the schedules.
    std::string text;
    const auto scrape = [&] {
      auto m = c.Get("/metrics");
      REQUIRE(m);
      text = "\n" + m->body;
    };
    const auto until = [&](const std::string& series, bool present) {
      const auto by = std::chrono::steady_clock::now() + std::chrono::seconds(10);
      for (scrape();
           sample(text, series).has_value() != present && std::chrono::steady_clock::now() < by;
           scrape())
        std::this_thread::sleep_for(std::chrono::milliseconds(200));
      return sample(text, series).has_value() == present;
    };
    REQUIRE(until("flowreg_schedule_last_fire_lag_seconds{schedule=\"every.second\"}", true));
    CAPTURE(text);
    // Recorded by the worker's scheduler: one started firing per tick (each tick fires alone).
    CHECK(sample(text, "flowreg_schedule_firings_total{outcome=\"started\"}").value_or(0) >= 2);
    CHECK(sample(text, "flowreg_schedule_firings_total{outcome=\"error\"}") == 0);
    CHECK(sample(text, "flowreg_schedule_fire_lag_seconds_count").value_or(0) >= 2);
    CHECK(text.find("# TYPE flowreg_schedule_fire_lag_seconds histogram") != std::string::npos);
    // Read from the store: one paused, one not paused; the unpaused one's next tick, which is
    // within a few seconds of now, and its last lag (a worker waiting for the tick: well under a
    // minute).
    CHECK(sample(text, "flowreg_schedules{state=\"paused\"}") == 1);
    CHECK(sample(text, "flowreg_schedules{state=\"scheduled\"}").value_or(0) +
              sample(text, "flowreg_schedules{state=\"due\"}").value_or(0) ==
          1);
    const double now =
        std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    const auto next =
        sample(text, "flowreg_schedule_next_fire_timestamp_seconds{schedule=\"every.second\"}");
    REQUIRE(next);
    CHECK(*next > now - 60);
    CHECK(*next < now + 60);
    const auto lag =
        sample(text, "flowreg_schedule_last_fire_lag_seconds{schedule=\"every.second\"}");
    REQUIRE(lag);
    CHECK(*lag >= 0);
    CHECK(*lag < 60);
    CHECK(text.find("schedule=\"held\"") == std::string::npos);  // paused: no series
    // Deleted: its series go away.
    auto deleted = c.Post("/api/v1/schedules/every.second/delete");
    REQUIRE(deleted);
    REQUIRE(deleted->status == 200);
    CHECK(until("flowreg_schedule_next_fire_timestamp_seconds{schedule=\"every.second\"}", false));
    CHECK(text.find("schedule=\"every.second\"") == std::string::npos);
  }

  TEST_CASE(
      "GET /api/v1/schedules gives a page at a time; hostile schedule bodies are refused with a "
      "4xx and leave nothing behind") {
    ServeScene scene;
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto c = scene.client();
    for (const char* name : {"p.a", "p.b", "p.c", "p.d", "p.e"}) {
      const json def = {{"name", name}, {"flow", "marked"}, {"cron", "0 3 1 1 *"}};
      auto r = c.Post("/api/v1/schedules", def.dump(), "application/json");
      REQUIRE(r);
      CAPTURE(r->body);
      REQUIRE(r->status == 201);
    }
    const auto names = [&](const std::string& query) {
      std::vector<std::string> out;
      for (const auto& s : parsed(c.Get(("/api/v1/schedules" + query).c_str())))
        out.push_back(s["name"].get<std::string>());
      return out;
    };
    CHECK(names("?limit=2") == std::vector<std::string>{"p.a", "p.b"});
    CHECK(names("?limit=2&after=p.b") == std::vector<std::string>{"p.c", "p.d"});
    CHECK(names("?after=p.d") == std::vector<std::string>{"p.e"});
    CHECK(names("").size() == 5);
    for (const char* bad : {"?limit=0", "?limit=1001", "?limit=two", "?limit=%FF"}) {
      CAPTURE(bad);
      auto r = c.Get((std::string("/api/v1/schedules") + bad).c_str());
      REQUIRE(r);
      CHECK(r->status == 400);
      CHECK(r->body.find("is not a number from 1 to 1000") != std::string::npos);
    }

    // Invalid UTF-8 in the name and in the input, an input over its size limit, one nested
    // deeper than the limit, and a body that is not JSON: each refused, none stored.
    std::string deep;
    for (int i = 0; i < 200; ++i) deep += "[";
    for (int i = 0; i < 200; ++i) deep += "]";
    const std::vector<std::string> bodies = {
        "{\"name\": \"bad\xff\", \"flow\": \"marked\", \"cron\": \"* * * * *\"}",
        "{\"name\": \"bad.input\", \"flow\": \"marked\", \"cron\": \"* * * * *\", "
        "\"input\": {\"k\": \"\xc3\"}}",
        json{{"name", "big"},
             {"flow", "marked"},
             {"cron", "* * * * *"},
             {"input", {{"k", std::string(1 << 20, 'x')}}}}
            .dump(),
        "{\"name\": \"deep\", \"flow\": \"marked\", \"cron\": \"* * * * *\", \"input\": " + deep +
            "}",
        "{\"name\": \"cut\", \"flow\": ",
    };
    for (const auto& body : bodies) {
      CAPTURE(body.substr(0, 80));
      auto r = c.Post("/api/v1/schedules", body, "application/json");
      REQUIRE(r);
      CAPTURE(r->body.substr(0, 300));
      CHECK(r->status >= 400);
      CHECK(r->status < 500);
    }
    CHECK(names("").size() == 5);
  }
}

}  // namespace flowreg::servetest