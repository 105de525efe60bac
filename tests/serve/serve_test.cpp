// `flowreg serve` as a real process (with --worker) on an embedded cluster of its own: every route
// of the API, its errors as problem+json, the limits, the token, the event stream, the dashboard's
// escaping, and the OpenAPI document's promises.

#include <doctest/doctest.h>
#include <fmt/chrono.h>
#include <signal.h>

#include <algorithm>
#include <fstream>
#include <functional>
#include <map>
#include <optional>
#include <pqxx/pqxx>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "cluster/embedded_cluster.hpp"
#include "serve/serve_scene.hpp"
#include "store/run_store.hpp"
#include "support/result_text.hpp"

namespace flowreg::servetest {

namespace {

json body_of(const httplib::Result& r) {
  REQUIRE(r);
  return json::parse(r->body);
}

void check_problem(const httplib::Result& r, int status) {
  REQUIRE(r);
  CAPTURE(r->body);
  CHECK(r->status == status);
  CHECK(r->get_header_value("Content-Type") == "application/problem+json");
  const json p = json::parse(r->body);
  CHECK(p["status"] == status);
  CHECK(p["detail"].is_string());
  CHECK(p["title"].is_string());
}

std::string start_order(httplib::Client& c, const std::string& sku) {
  auto r = c.Post("/api/v1/flows/marked/runs",
                  json({{"order_id", "o1"}, {"items", {{{"sku", sku}, {"qty", 1}}}}}).dump(),
                  "application/json");
  REQUIRE(r);
  CAPTURE(r->body);
  REQUIRE(r->status == 201);
  return json::parse(r->body)["id"];
}

// One server for the cases that need no particular configuration (each start initializes a
// cluster: seconds). Cases run in file order; only the first counts runs from zero.
ServeScene& shared_scene() {
  static ServeScene scene;
  return scene;
}

}  // namespace

TEST_SUITE("serve") {
  TEST_CASE("every API route answers its happy path and its errors as problem+json") {
    ServeScene& scene = shared_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto c = scene.client();

    {  // probes, metrics and the OpenAPI document
      CHECK(body_of(c.Get("/healthz"))["status"] == "ok");
      auto ready = c.Get("/readyz");
      REQUIRE(ready);
      CHECK(ready->status == 200);
      auto metrics = c.Get("/metrics");
      REQUIRE(metrics);
      CHECK(metrics->body.find("flowreg_build_info") != std::string::npos);
      // The store's run and task families, read at scrape time.
      CHECK(metrics->body.find("# TYPE flowreg_runs_started_total counter") != std::string::npos);
      CHECK(metrics->body.find("flowreg_run_store_up 1") != std::string::npos);
      CHECK(body_of(c.Get("/api/v1/openapi.json"))["openapi"] == "3.0.3");
      check_problem(c.Get("/api/v1/nothing"), 404);
    }
    {  // flows, one flow, its picture
      const json flows = body_of(c.Get("/api/v1/flows"));
      std::set<std::string> slugs;
      for (const auto& f : flows) slugs.insert(f["slug"]);
      CHECK(slugs.count("marked") == 1);
      CHECK(slugs.count("wprobe_chain") == 1);
      const json chain = body_of(c.Get("/api/v1/flows/wprobe_chain"));
      CHECK(chain["steps"].size() == 3);
      CHECK(chain["steps"][1]["depends_on"] == json::array({"a"}));
      auto svg = c.Get("/api/v1/flows/wprobe_chain/graph.svg");
      REQUIRE(svg);
      CHECK(svg->status == 200);
      CHECK(svg->get_header_value("Content-Type") == "image/svg+xml");
      CHECK(svg->body.find("<svg") != std::string::npos);
      CHECK(svg->body.find("wprobe.record") != std::string::npos);
      check_problem(c.Get("/api/v1/flows/nope"), 404);
      check_problem(c.Get("/api/v1/flows/nope/graph.svg"), 404);
    }
    {  // start, read, list, cancel and retry runs
      const std::string gate = (scene.scratch.dir / "gate").string();
      const std::string log = (scene.scratch.dir / "wprobe.log").string();
      auto r = c.Post("/api/v1/flows/wprobe_chain/runs",
                      json({{"log", log}, {"gate", gate}}).dump(), "application/json");
      REQUIRE(r);
      CHECK(r->status == 201);
      const json run = json::parse(r->body);
      CHECK(run["status"] == "started");
      CHECK(r->get_header_value("Location") == "/api/v1/runs/" + run["id"].get<std::string>());
      const std::string id = run["id"];
      const json shown = body_of(c.Get(("/api/v1/runs/" + id).c_str()));
      CHECK(shown["flow"] == "wprobe_chain");
      CHECK(shown["steps"].size() == 3);
      // Cancel it, then cancel again (409), then retry it (201, retry_of).
      CHECK(body_of(c.Post(("/api/v1/runs/" + id + "/cancel").c_str()))["status"] == "cancelled");
      check_problem(c.Post(("/api/v1/runs/" + id + "/cancel").c_str()), 409);
      std::ofstream(gate) << "open\n";
      auto retried = c.Post(("/api/v1/runs/" + id + "/retry").c_str());
      REQUIRE(retried);
      CHECK(retried->status == 201);
      const json again = json::parse(retried->body);
      CHECK(again["retry_of"] == id);
      CHECK(scene.wait_run(again["id"])["status"] == "completed");
      // A run still going cannot be retried: 409.
      const std::string gate2 = (scene.scratch.dir / "gate2").string();
      const std::string running =
          body_of(c.Post("/api/v1/flows/wprobe_chain/runs",
                         json({{"log", log}, {"gate", gate2}}).dump(), "application/json"))["id"];
      check_problem(c.Post(("/api/v1/runs/" + running + "/retry").c_str()), 409);
      std::ofstream(gate2) << "open\n";
      // Unknown and malformed run ids: 404.
      check_problem(c.Get("/api/v1/runs/00000000-0000-0000-0000-000000000000"), 404);
      check_problem(c.Get("/api/v1/runs/not-a-run"), 404);
      check_problem(c.Post("/api/v1/runs/00000000-0000-0000-0000-000000000000/cancel"), 404);
      check_problem(c.Post("/api/v1/runs/00000000-0000-0000-0000-000000000000/retry"), 404);
      // Keyset pagination: pages of 1, newest first, without overlap.
      const json page1 = body_of(c.Get("/api/v1/runs?flow=wprobe_chain&limit=1"));
      REQUIRE(page1["runs"].size() == 1);
      REQUIRE(page1["next_before"].is_string());
      const json page2 = body_of(c.Get(("/api/v1/runs?flow=wprobe_chain&limit=1&before=" +
                                        page1["next_before"].get<std::string>())
                                           .c_str()));
      REQUIRE(page2["runs"].size() == 1);
      CHECK(page2["runs"][0]["id"] != page1["runs"][0]["id"]);
      const json all = body_of(c.Get("/api/v1/runs?flow=wprobe_chain"));
      CHECK(all["runs"].size() == 3);
      CHECK(all["next_before"].is_null());
      CHECK(body_of(c.Get("/api/v1/runs?status=cancelled"))["runs"].size() == 1);
      check_problem(c.Get("/api/v1/runs?status=bogus"), 400);
      check_problem(c.Get("/api/v1/runs?limit=0"), 400);
      check_problem(c.Get("/api/v1/runs?before=xyz"), 400);
      scene.wait_run(running);
    }
    {  // input checked before anything is written: 400, 404, 413, 415, 422
      check_problem(c.Post("/api/v1/flows/marked/runs", "{\"order_id\": ", "application/json"),
                    400);
      check_problem(c.Post("/api/v1/flows/marked/runs", std::string(70, '[') + std::string(70, ']'),
                           "application/json"),
                    400);
      auto refused = c.Post("/api/v1/flows/marked/runs", "{}", "application/json");
      check_problem(refused, 422);
      CHECK(json::parse(refused->body)["detail"].get<std::string>().find(
                "input of flow 'marked'") != std::string::npos);
      // Regression: U+0000 in an input got a 500 carrying PostgreSQL's error text.
      auto nul =
          c.Post("/api/v1/flows/marked/runs", R"({"order_id": "a\u0000b"})", "application/json");
      check_problem(nul, 422);
      CHECK(json::parse(nul->body)["detail"] ==
            "the input holds a string with the character U+0000, which PostgreSQL cannot store");
      check_problem(c.Post("/api/v1/flows/nope/runs", "{}", "application/json"), 404);
      // Regression: two Content-Length headers that disagree were accepted (the first read).
      auto framed = c.Post("/api/v1/flows/marked/runs",
                           httplib::Headers{{"Content-Length", "2"}, {"Content-Length", "20"}},
                           "{}", "application/json");
      check_problem(framed, 400);
      CHECK(json::parse(framed->body)["detail"] ==
            "the request has a bad Content-Length header (not a number, or several that "
            "disagree)");
      check_problem(c.Post("/api/v1/flows/marked/runs", "order_id=1", "text/plain"), 415);
      const std::string big = "{\"order_id\": \"" + std::string((64u << 20) + 16, 'x') + "\"}";
      auto r = c.Post("/api/v1/flows/marked/runs", big, "application/json");
      if (r) check_problem(r, 413);  // else the server closed the connection while it was sent
      CHECK(body_of(c.Get("/api/v1/runs?flow=marked"))["runs"].empty());
    }
    {  // idempotency over HTTP: the same key and input return the first run; another input 409
      httplib::Headers key{{"Idempotency-Key", "order-42"}};
      auto first =
          c.Post("/api/v1/flows/marked/runs", key, "{\"order_id\": \"A\"}", "application/json");
      auto second =
          c.Post("/api/v1/flows/marked/runs", key, "{\"order_id\": \"A\"}", "application/json");
      REQUIRE(first);
      REQUIRE(second);
      CHECK(json::parse(first->body)["id"] == json::parse(second->body)["id"]);
      check_problem(
          c.Post("/api/v1/flows/marked/runs", key, "{\"order_id\": \"B\"}", "application/json"),
          409);
      CHECK(body_of(c.Get("/api/v1/runs?flow=marked"))["runs"].size() == 1);
    }
    {  // workers and plugins
      json workers;
      for (int i = 0; i < 300 && workers.empty(); ++i) {  // until its first heartbeat
        workers = body_of(c.Get("/api/v1/workers"));
        if (workers.empty()) std::this_thread::sleep_for(std::chrono::milliseconds(100));
      }
      REQUIRE(workers.size() >= 1);
      CHECK(workers[0]["status"] == "running");
      const json plugins = body_of(c.Get("/api/v1/plugins"));
      std::set<std::string> modules;
      for (const auto& p : plugins) modules.insert(p["module"].get<std::string>());
      CHECK(modules == std::set<std::string>{"orders", "wprobe"});
    }
  }

  TEST_CASE("the event stream delivers a run's transitions in order") {
    ServeScene& scene = shared_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto c = scene.client();
    const std::string gate = (scene.scratch.dir / "events-gate").string();
    const std::string log = (scene.scratch.dir / "wprobe.log").string();
    std::string id;
    std::vector<std::pair<std::string, json>> events;  // of this run
    std::vector<std::string> ids;                      // their event ids
    bool ended = false;
    std::string stream;
    auto events_client = scene.client();
    std::thread starter;
    auto r = events_client.Get("/api/v1/events", [&](const char* bytes, size_t n) {
      stream.append(bytes, n);
      if (id.empty()) {
        // Subscribed: start the run (on this thread, so that no event of it is read before its
        // id is known), then open the gate a little later.
        id = body_of(c.Post("/api/v1/flows/wprobe_chain/runs",
                            json({{"log", log}, {"gate", gate}}).dump(), "application/json"))["id"];
        starter = std::thread([&] {
          std::this_thread::sleep_for(std::chrono::milliseconds(700));
          std::ofstream(gate) << "open\n";
        });
      }
      std::size_t end;
      while ((end = stream.find("\n\n")) != std::string::npos) {
        const std::string block = stream.substr(0, end);
        stream.erase(0, end + 2);
        std::string type, data, event_id;
        std::istringstream lines(block);
        for (std::string line; std::getline(lines, line);) {
          if (line.rfind("event: ", 0) == 0) type = line.substr(7);
          if (line.rfind("data: ", 0) == 0) data = line.substr(6);
          if (line.rfind("id: ", 0) == 0) event_id = line.substr(4);
        }
        if (data.empty()) continue;
        const json d = json::parse(data);
        const std::string run = type == "run" ? d["id"].get<std::string>() : d.value("run", "");
        if (id.empty() || run != id) continue;
        events.emplace_back(type, d);
        ids.push_back(event_id);
        if (type == "run" && d["status"] != "started") ended = true;
      }
      return !ended;
    });
    if (starter.joinable()) starter.join();
    REQUIRE(!events.empty());
    CHECK(events.front().first == "run");
    CHECK(events.front().second["status"] == "started");
    CHECK(events.back().first == "run");
    CHECK(events.back().second["status"] == "completed");
    // Each step's statuses move forward only, and every step completed before the run did.
    static const std::vector<std::string> kOrder = {"created", "started", "completed"};
    std::map<std::string, std::size_t> at;
    for (const auto& [type, d] : events) {
      if (type != "step") continue;
      const auto pos = std::find(kOrder.begin(), kOrder.end(), d["status"].get<std::string>());
      REQUIRE(pos != kOrder.end());
      const std::size_t rank = static_cast<std::size_t>(pos - kOrder.begin());
      CHECK(rank >= at[d["step"]]);
      at[d["step"]] = rank;
    }
    CHECK(at == std::map<std::string, std::size_t>{{"a", 2}, {"b", 2}, {"c", 2}});

    // Reconnecting with Last-Event-ID = the run's first event resends the rest, in order, ids
    // included; an id this server process did not send begins the stream with a reset event.
    const auto replay = [&](const std::string& last, std::size_t want) {
      std::vector<std::string> got;
      std::string buffer;
      const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
      auto again = scene.client();
      (void)again.Get("/api/v1/events?run=" + id, httplib::Headers{{"Last-Event-ID", last}},
                      [&](const char* bytes, size_t n) {
                        buffer.append(bytes, n);
                        std::size_t end;
                        while ((end = buffer.find("\n\n")) != std::string::npos) {
                          const std::string block = buffer.substr(0, end);
                          buffer.erase(0, end + 2);
                          std::istringstream lines(block);
                          for (std::string line; std::getline(lines, line);) {
                            if (line.rfind("id: ", 0) == 0) got.push_back(line.substr(4));
                            if (line == "event: reset") got.push_back("reset");
                          }
                        }
                        // Bounded: a broken resume must fail the case, not hang it.
                        return got.size() < want && std::chrono::steady_clock::now() < deadline;
                      });
      return got;
    };
    REQUIRE(ids.size() >= 2);
    CHECK(replay(ids.front(), ids.size() - 1) ==
          std::vector<std::string>(ids.begin() + 1, ids.end()));
    CHECK(replay("0badc0de:1", 1) == std::vector<std::string>{"reset"});
  }

  TEST_CASE("a token: refused without it and with a wrong one, accepted with it") {
    ServeScene scene(kToken);
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto none = scene.client();
    auto wrong = scene.client("wrong-token-0123456789");
    auto right = scene.client(kToken);
    for (auto* c : {&none, &wrong}) {
      auto r = c->Get("/api/v1/flows");
      check_problem(r, 401);
      CHECK(r->get_header_value("WWW-Authenticate").rfind("Bearer", 0) == 0);
      check_problem(
          c->Post("/api/v1/flows/marked/runs", "{\"order_id\": \"A\"}", "application/json"), 401);
      // Only the first bytes: a stream opened by mistake must fail the case, not hang it.
      int events_status = 0;
      (void)c->Get(
          "/api/v1/events",
          [&](const httplib::Response& head) {
            events_status = head.status;
            return false;
          },
          [](const char*, size_t) { return false; });
      CHECK(events_status == 401);
    }
    CHECK(body_of(none.Get("/healthz"))["status"] == "ok");
    CHECK(body_of(right.Get("/api/v1/flows")).size() >= 2);
    // Regression: "bearer TOKEN" got "the bearer token is wrong". The scheme is matched in any
    // case, then one or more spaces (RFC 9110, 11.1 and 11.4); a missing space is refused.
    const std::string token(kToken);
    for (const std::string& header : {"bearer " + token, "BEARER   " + token}) {
      auto r = none.Get("/api/v1/flows", httplib::Headers{{"Authorization", header}});
      REQUIRE(r);
      CHECK(r->status == 200);
    }
    check_problem(none.Get("/api/v1/flows", httplib::Headers{{"Authorization", "Bearer" + token}}),
                  401);
    auto started =
        right.Post("/api/v1/flows/marked/runs", "{\"order_id\": \"A\"}", "application/json");
    REQUIRE(started);
    CHECK(started->status == 201);
    CHECK(body_of(right.Get("/api/v1/runs"))["runs"].size() == 1);
  }

  TEST_CASE("without a token, another site's page is refused: a foreign Origin, a rebound Host") {
    ServeScene& scene = shared_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto c = scene.client();
    const std::string self = "127.0.0.1:" + std::to_string(scene.port);
    const auto runs_before = body_of(c.Get("/api/v1/runs?limit=1000"))["runs"].size();
    // A form or fetch() of another site's page: the browser names that site in Origin.
    const httplib::Headers foreign{{"Origin", "http://evil.example"}};
    for (const char* path : {"/api/v1/flows/marked/runs", "/api/v1/runs/x/cancel"}) {
      check_problem(c.Post(path, foreign, "", "text/plain"), 403);
    }
    CHECK(body_of(c.Get("/api/v1/runs?limit=1000"))["runs"].size() == runs_before);
    // The dashboard's own requests carry this server as Origin.
    auto own = c.Post("/api/v1/runs/00000000-0000-0000-0000-000000000000/cancel",
                      httplib::Headers{{"Origin", "http://" + self}}, "", "application/json");
    REQUIRE(own);
    CHECK(own->status == 404);
    // DNS rebinding: another site's name resolved to 127.0.0.1 reaches the server with its name
    // in Host; reads are refused too, since they would hand inputs and outputs to that site.
    auto rebound = c.Get("/api/v1/runs", httplib::Headers{{"Host", "rebound.example:80"}});
    check_problem(rebound, 403);
    CHECK(body_of(c.Get("/api/v1/runs", httplib::Headers{{"Host", "localhost:80"}}))
              .contains("runs"));
    CHECK(body_of(c.Get("/healthz"))["status"] == "ok");
  }

  TEST_CASE("binding a non-loopback address without a token is refused before anything starts") {
    pgtest::CliScratch scratch("flowreg_serve_bind", false);  // no cluster
    std::ofstream(scratch.config) << "plugins: {dir: none}\ndatabase: {data_dir: data}\n";
    const auto r = scratch.flowreg({"serve", "--listen", "0.0.0.0:0"});
    CHECK(r.exit_code == 1);
    CHECK(r.err.find("requires a token") != std::string::npos);
    CHECK(!std::filesystem::exists(scratch.dir / "data"));
  }

  TEST_CASE("the dashboard escapes a flow description and a run error holding <script>") {
    ServeScene& scene = shared_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto c = scene.client();
    const std::string failed = start_order(c, kScript);
    const json run = scene.wait_run(failed);
    REQUIRE(run["status"] == "failed");
    REQUIRE(run["error"].get<std::string>().find(kScript) != std::string::npos);
    for (const std::string& page :
         std::vector<std::string>{"/", "/flows/marked", "/runs", "/runs/" + failed}) {
      auto r = c.Get(page.c_str());
      REQUIRE(r);
      CAPTURE(page);
      CHECK(r->status == 200);
      CHECK(r->body.find("<script>alert") == std::string::npos);
      CHECK(r->body.find("&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;") != std::string::npos);
      CHECK(r->get_header_value("Content-Security-Policy").find("script-src 'self'") !=
            std::string::npos);
      CHECK(!r->has_header("Access-Control-Allow-Origin"));
    }
    for (const char* page : {"/workers", "/plugins"}) {
      auto r = c.Get(page);
      REQUIRE(r);
      CHECK(r->status == 200);
    }
  }

  TEST_CASE("every route answers as the OpenAPI document says") {
    std::ifstream in(std::string(FLOWREG_SOURCE_DIR) + "/schemas/openapi.json");
    const json doc = json::parse(in);
    ServeScene& scene = shared_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto c = scene.client();
    // The served document is the file.
    CHECK(body_of(c.Get("/api/v1/openapi.json")) == doc);
    const std::string done = start_order(c, "book");
    REQUIRE(scene.wait_run(done)["status"] == "completed");
    const json schemas = doc["components"]["schemas"];
    // The required fields of `schema` (following $ref and allOf) present in `value`.
    std::function<void(const json&, const json&)> conforms = [&](const json& schema,
                                                                 const json& value) {
      if (schema.contains("$ref")) {
        const std::string ref = schema["$ref"];
        return conforms(schemas[ref.substr(ref.rfind('/') + 1)], value);
      }
      if (schema.contains("allOf")) {
        for (const auto& s : schema["allOf"]) conforms(s, value);
        return;
      }
      if (schema.value("type", "") == "array") {
        REQUIRE(value.is_array());
        for (const auto& v : value) conforms(schema["items"], v);
        return;
      }
      if (schema.contains("required")) {
        REQUIRE(value.is_object());
        for (const auto& f : schema["required"]) {
          CAPTURE(f);
          CHECK(value.contains(f.get<std::string>()));
        }
        for (const auto& [k, s] : schema["properties"].items())
          if (value.contains(k) && !value[k].is_null() && s.is_object() &&
              (s.contains("$ref") || s.contains("required") || s.value("type", "") == "array"))
            conforms(s, value[k]);
      }
    };
    struct Call {
      std::string method, path, concrete, body;
      int status;
    };
    const std::string kSchedule =
        R"({"name": "nightly", "flow": "marked", "cron": "0 2 * * *", "timezone": "Europe/Berlin", )"
        R"("input": {"order_id": "nightly"}})";
    const std::vector<Call> calls = {
        {"get", "/flows", "/flows", "", 200},
        {"get", "/flows/{slug}", "/flows/marked", "", 200},
        {"get", "/flows/{slug}", "/flows/nope", "", 404},
        {"get", "/flows/{slug}/graph.svg", "/flows/marked/graph.svg", "", 200},
        {"post", "/flows/{slug}/runs", "/flows/marked/runs", "{\"order_id\": \"x\"}", 201},
        {"post", "/flows/{slug}/runs", "/flows/marked/runs", "{}", 422},
        {"post", "/flows/{slug}/runs", "/flows/marked/runs", "{", 400},
        {"get", "/runs", "/runs", "", 200},
        {"get", "/runs", "/runs?limit=-1", "", 400},
        {"get", "/runs/{id}", "/runs/" + done, "", 200},
        {"get", "/runs/{id}", "/runs/00000000-0000-0000-0000-000000000000", "", 404},
        {"get", "/runs/{id}/attempts", "/runs/" + done + "/attempts", "", 200},
        {"get", "/runs/{id}/attempts", "/runs/" + done + "/attempts?limit=1001", "", 400},
        {"get", "/runs/{id}/attempts", "/runs/00000000-0000-0000-0000-000000000000/attempts", "",
         404},
        {"get", "/runs/{id}/input", "/runs/" + done + "/input", "", 200},
        {"get", "/runs/{id}/output", "/runs/" + done + "/output", "", 200},
        {"get", "/runs/{id}/graph.svg", "/runs/" + done + "/graph.svg", "", 200},
        {"get", "/runs/{id}/steps/{step}/tasks", "/runs/" + done + "/steps/fetch/tasks", "", 200},
        {"get", "/runs/{id}/steps/{step}/tasks", "/runs/" + done + "/steps/nope/tasks", "", 404},
        {"get", "/runs/{id}/steps/{step}/tasks", "/runs/" + done + "/steps/fetch/tasks?limit=501",
         "", 400},
        {"post", "/runs/{id}/cancel", "/runs/" + done + "/cancel", "", 409},
        // Its flow has no wait step: every signal is a conflict; an event no run waits for.
        {"post", "/runs/{id}/signals/{name}", "/runs/" + done + "/signals/approve", "{}", 409},
        {"post", "/runs/{id}/signals/{name}", "/runs/" + done + "/signals/a~b", "{}", 400},
        {"post", "/events/{name}", "/events/paid", R"({"order": 1})", 200},
        {"post", "/events/{name}", "/events/paid", "{", 400},
        {"post", "/runs/{id}/retry", "/runs/" + done + "/retry", "", 201},
        {"post", "/runs/{id}/retry", "/runs/" + done + "/retry?from=failed", "", 409},
        {"post", "/runs/{id}/retry", "/runs/" + done + "/retry?from=elsewhere", "", 400},
        {"get", "/workers", "/workers", "", 200},
        {"post", "/workers/{id}/forget", "/workers/nobody/forget", "", 404},
        {"get", "/plugins", "/plugins", "", 200},
        {"get", "/health", "/health", "", 200},
        {"get", "/openapi.json", "/openapi.json", "", 200},
        {"post", "/schedules", "/schedules", kSchedule, 201},
        {"post", "/schedules", "/schedules", kSchedule, 200},
        {"post", "/schedules", "/schedules",
         R"({"name": "bad", "flow": "marked", "cron": "*/0 * * * *"})", 422},
        {"post", "/schedules", "/schedules", R"({"name": "bad", "when": "now"})", 422},
        {"post", "/schedules", "/schedules", "{", 400},
        {"get", "/schedules", "/schedules", "", 200},
        {"get", "/schedules/{name}", "/schedules/nightly", "", 200},
        {"get", "/schedules/{name}", "/schedules/nope", "", 404},
        {"post", "/schedules/{name}/pause", "/schedules/nightly/pause", "", 200},
        {"post", "/schedules/{name}/resume", "/schedules/nightly/resume", "", 200},
        {"post", "/schedules/{name}/trigger", "/schedules/nightly/trigger", "", 201},
        {"post", "/schedules/{name}/trigger", "/schedules/nope/trigger", "", 404},
        {"post", "/schedules/{name}/delete", "/schedules/nightly/delete", "", 200},
        {"post", "/schedules/{name}/delete", "/schedules/nightly/delete", "", 404},
    };
    std::set<std::string> covered;
    for (const auto& call : calls) {
      CAPTURE(call.method);
      CAPTURE(call.concrete);
      const std::string url = "/api/v1" + call.concrete;
      auto r = call.method == "get" ? c.Get(url.c_str())
                                    : c.Post(url.c_str(), call.body, "application/json");
      REQUIRE(r);
      CHECK(r->status == call.status);
      REQUIRE(doc["paths"].contains(call.path));
      const json op = doc["paths"][call.path][call.method];
      const std::string code = std::to_string(r->status);
      REQUIRE(op["responses"].contains(code));
      json response = op["responses"][code];
      if (response.contains("$ref")) response = doc["components"]["responses"]["Problem"];
      // The first media type, copied (a structured binding of *items().begin() dangles: the
      // iterator it names is a temporary).
      REQUIRE(response["content"].is_object());
      const std::string type = response["content"].begin().key();
      const json media = response["content"].begin().value();
      CHECK(r->get_header_value("Content-Type").rfind(type, 0) == 0);
      if (type.find("json") != std::string::npos) conforms(media["schema"], json::parse(r->body));
      covered.insert(call.method + " " + call.path);
    }
    // Every operation of the document but the event stream was called.
    for (const auto& [path, ops] : doc["paths"].items())
      for (const auto& [method, op] : ops.items())
        if (path != "/events") CHECK_MESSAGE(covered.count(method + " " + path) == 1, path);
  }
}

namespace {

// A store on the scene's cluster with the flow `slug` of one step that no worker serves (its
// handler is in no plugin): its runs stay started, and nothing reads their inputs.
detail::RunStore unserved_flow(const ServeScene& scene, const std::string& slug) {
  auto store = std::optional<detail::RunStore>(scene_store(scene));
  FlowDef flow;
  flow.slug = slug;
  flow.module = "servetest";
  flow.steps.push_back(StepDef{"only", StepKind::single, {}, "nobody.none", {}});
  auto stored = store->upsert_flow(flow, "v1");
  REQUIRE_MESSAGE(stored, testing::failure_text(stored));
  return std::move(*store);
}

// The port a `flowreg serve` prints on stderr ("listening on http://127.0.0.1:PORT/"), waiting
// for it up to 60 s; 0 when it exits first.
int port_of(test::Child& server, const fs::path& err) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream in(err);
    std::stringstream text;
    text << in.rdbuf();
    const std::string s = text.str();
    const auto at = s.find("listening on http://127.0.0.1:");
    if (at != std::string::npos && s.find('/', at + 30) != std::string::npos)
      return std::stoi(s.substr(at + 30));
    if (server.wait(std::chrono::milliseconds(100))) break;
  }
  return 0;
}

}  // namespace

TEST_SUITE("serve") {
  TEST_CASE(
      "lists of runs carry summaries, not inputs: 300 runs of 1 MiB inputs list in a few KiB "
      "each") {
    // GET /api/v1/runs?limit=1 answered 84 MB for a run of an 80 MiB input, and / took 3 s: the
    // lists read and sent every run's input and output.
    ServeScene& scene = shared_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    detail::RunStore store = unserved_flow(scene, "bulk");
    constexpr int kRuns = 300;
    std::set<std::string> ids;
    for (int batch = 0; batch < kRuns / 50; ++batch) {
      std::vector<detail::Json> inputs;
      for (int i = 0; i < 50; ++i)
        inputs.push_back({{"n", batch * 50 + i},
                          {"pad", std::string(1 << 20, static_cast<char>('a' + i % 26))}});
      auto started = store.start_runs("bulk", "v1", inputs);
      REQUIRE_MESSAGE(started, testing::failure_text(started));
      ids.insert(started->begin(), started->end());
    }
    REQUIRE(ids.size() == kRuns);
    const std::size_t bound = 64 * 1024 + 1024 * kRuns;
    auto c = scene.client();
    auto listed = c.Get("/api/v1/runs?flow=bulk&limit=1000");
    REQUIRE(listed);
    REQUIRE(listed->status == 200);
    CHECK(listed->body.size() < bound);
    const json page = json::parse(listed->body);
    std::set<std::string> seen;
    for (const auto& r : page["runs"]) {
      seen.insert(r["id"].get<std::string>());
      CHECK_FALSE(r.contains("input"));
      CHECK_FALSE(r.contains("output"));
      CHECK(r["input_stored_bytes"].get<std::int64_t>() > 0);
    }
    CHECK(seen == ids);
    CHECK(page["next_before"].is_null());
    // Every flow's runs, without a filter: the same bound.
    auto all = c.Get("/api/v1/runs?limit=1000");
    REQUIRE(all);
    CHECK(all->status == 200);
    CHECK(all->body.size() < bound);
    for (const char* html : {"/runs?flow=bulk&limit=1000", "/", "/flows/marked"}) {
      CAPTURE(html);
      auto r = c.Get(html);
      REQUIRE(r);
      CHECK(r->status == 200);
      CHECK(r->body.size() < bound);
    }
    auto runs_page = c.Get("/runs?flow=bulk&limit=1000");
    REQUIRE(runs_page);
    for (const auto& id : ids) CHECK(runs_page->body.find(id) != std::string::npos);
    // One run keeps its whole input, and the run's page shows a part of it with a link.
    const std::string one = *ids.begin();
    auto input = c.Get(("/api/v1/runs/" + one + "/input").c_str());
    REQUIRE(input);
    CHECK(input->status == 200);
    CHECK(json::parse(input->body)["pad"].get<std::string>().size() == (1u << 20));
    auto page_of_one = c.Get(("/runs/" + one).c_str());
    REQUIRE(page_of_one);
    CHECK(page_of_one->status == 200);
    CHECK(page_of_one->body.size() < 64 * 1024);
    CHECK(page_of_one->body.find("more bytes") != std::string::npos);
    CHECK(page_of_one->body.find("/api/v1/runs/" + one + "/input") != std::string::npos);
  }

  TEST_CASE("the runs list filters by creation time and input text, and pages to newer runs") {
    // since, until, text and after were not read: every run of the flow was listed.
    ServeScene& scene = shared_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    detail::RunStore store = unserved_flow(scene, "filtered");
    std::vector<std::string> ids;  // oldest first
    const char* notes[] = {"alpha", "a Brown FOX", "gamma", "the fox again", "epsilon"};
    for (const char* note : notes) {
      auto id = store.start_run("filtered", "v1", detail::Json{{"note", note}});
      REQUIRE_MESSAGE(id, testing::failure_text(id));
      ids.push_back(*id);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    auto listed = store.list_run_summaries(detail::RunFilter{"filtered", std::nullopt, 10});
    REQUIRE_MESSAGE(listed, testing::failure_text(listed));
    REQUIRE(listed->size() == 5);
    const auto ids_of = [](const json& page) {
      std::vector<std::string> out;
      for (const auto& r : page["runs"]) out.push_back(r["id"].get<std::string>());
      return out;
    };
    // A creation time to the microsecond, as the API takes it.
    const auto iso_us = [](detail::TimePoint t) {
      const auto s = std::chrono::floor<std::chrono::seconds>(t);
      return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:06}Z", s,
                         std::chrono::duration_cast<std::chrono::microseconds>(t - s).count());
    };
    auto c = scene.client();
    // The input holds the text, in any case.
    const json fox = body_of(c.Get("/api/v1/runs?flow=filtered&text=fox"));
    CHECK(ids_of(fox) == std::vector<std::string>{ids[3], ids[1]});
    CHECK(fox["total"] == 2);
    CHECK(body_of(c.Get("/api/v1/runs?flow=filtered&text=%22gamma%22"))["runs"].size() == 1);
    // Created at or after since, before until: [ids[1], ids[3]).
    const std::string since = iso_us((*listed)[3].created_at);  // listed: newest first
    const std::string until = iso_us((*listed)[1].created_at);
    CAPTURE(since);
    CAPTURE(until);
    const json range =
        body_of(c.Get(("/api/v1/runs?flow=filtered&since=" + since + "&until=" + until).c_str()));
    CHECK(ids_of(range) == std::vector<std::string>{ids[2], ids[1]});
    CHECK(range["total"] == 2);
    CHECK(body_of(c.Get("/api/v1/runs?flow=filtered&since=1h"))["runs"].size() == 5);
    CHECK(body_of(c.Get("/api/v1/runs?flow=filtered&until=1h"))["runs"].empty());
    check_problem(c.Get("/api/v1/runs?since=yesterday"), 400);
    check_problem(c.Get("/api/v1/runs?text=" + std::string(201, 'x')), 400);
    check_problem(c.Get(("/api/v1/runs?before=" + ids[0] + "&after=" + ids[1]).c_str()), 400);
    // Paging down two pages, then back up to the newest.
    const json p1 = body_of(c.Get("/api/v1/runs?flow=filtered&limit=2"));
    CHECK(ids_of(p1) == std::vector<std::string>{ids[4], ids[3]});
    CHECK(p1["next_after"].is_null());
    const json p2 = body_of(
        c.Get(("/api/v1/runs?flow=filtered&limit=2&before=" + p1["next_before"].get<std::string>())
                  .c_str()));
    CHECK(ids_of(p2) == std::vector<std::string>{ids[2], ids[1]});
    REQUIRE(p2["next_after"] == ids[2]);
    const json up = body_of(
        c.Get(("/api/v1/runs?flow=filtered&limit=2&after=" + p2["next_after"].get<std::string>())
                  .c_str()));
    CHECK(ids_of(up) == std::vector<std::string>{ids[4], ids[3]});
    CHECK(up["next_after"].is_null());  // the newest page
    CHECK(up["next_before"] == ids[3]);
    const json up1 = body_of(c.Get(("/api/v1/runs?flow=filtered&limit=1&after=" + ids[2]).c_str()));
    CHECK(ids_of(up1) == std::vector<std::string>{ids[3]});
    CHECK(up1["next_after"] == ids[3]);  // ids[4] is above it
    // The dashboard: the filters kept in its form and in its paging links.
    auto page = c.Get(("/runs?flow=filtered&text=FOX&limit=1&before=" + ids[4]).c_str());
    REQUIRE(page);
    CHECK(page->status == 200);
    CHECK(page->body.find(ids[3]) != std::string::npos);
    CHECK(page->body.find(ids[2]) == std::string::npos);
    CHECK(page->body.find("name=\"text\" value=\"FOX\"") != std::string::npos);
    CHECK(page->body.find("Inputs are searched among the newest 10,000 runs") != std::string::npos);
    CHECK(page->body.find("text=FOX&amp;after=" + ids[3] + "\" rel=\"prev\">Newer runs") !=
          std::string::npos);
    CHECK(page->body.find("data-ago>") != std::string::npos);  // "5 s ago"
  }

  TEST_CASE("a paging cursor naming a run pruned since gives the runs older than it") {
    // before=<id of a pruned run> answered an empty page: the cursor was looked up by id.
    ServeScene& scene = shared_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    detail::RunStore store = unserved_flow(scene, "cursor");
    std::vector<std::string> ids;  // oldest first
    for (int i = 0; i < 3; ++i) {
      auto id = store.start_run("cursor", "v1", detail::Json{{"i", i}});
      REQUIRE_MESSAGE(id, testing::failure_text(id));
      ids.push_back(*id);
      std::this_thread::sleep_for(std::chrono::milliseconds(5));
    }
    auto c = scene.client();
    const json first = body_of(c.Get("/api/v1/runs?flow=cursor&limit=2"));
    REQUIRE(first["runs"].size() == 2);
    REQUIRE(first["next_before"] == ids[1]);
    // The middle run ends and is pruned (with every other ended run: this case comes last).
    auto cancelled = store.cancel_run(ids[1]);
    REQUIRE_MESSAGE(cancelled, testing::failure_text(cancelled));
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
    auto pruned = store.prune(Millis(1));
    REQUIRE_MESSAGE(pruned, testing::failure_text(pruned));
    REQUIRE(*pruned >= 1);
    auto gone = store.get_run(ids[1]);
    REQUIRE(gone);
    REQUIRE_FALSE(gone->has_value());
    const json next = body_of(
        c.Get(("/api/v1/runs?flow=cursor&limit=2&before=" + first["next_before"].get<std::string>())
                  .c_str()));
    REQUIRE(next["runs"].size() == 1);
    CHECK(next["runs"][0]["id"] == ids[0]);
    CHECK(next["next_before"].is_null());
    // The dashboard's page of older runs too.
    auto older = c.Get(("/runs?flow=cursor&before=" + ids[1]).c_str());
    REQUIRE(older);
    CHECK(older->status == 200);
    CHECK(older->body.find(ids[0]) != std::string::npos);
  }

  TEST_CASE("the flows pages answer 503 saying the database is unreachable, not 'No runs.'") {
    // / and /flows/{slug} answered 200 "No runs." while the database was down.
    ServeScene scene;
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    // A server without a worker, which would start the cluster again.
    scene.server->signal(SIGTERM);
    REQUIRE(scene.server->wait(std::chrono::seconds(20)));
    const fs::path err = scene.scratch.dir / "serve2.err";
    test::Child server =
        test::Child::spawn({FLOWREG_BINARY, "--config", scene.scratch.config.string(), "serve"},
                           (scene.scratch.dir / "serve2.out").string(), err.string());
    const int port = port_of(server, err);
    REQUIRE(port > 0);
    auto cluster = detail::EmbeddedCluster::open(scene.scratch.dir / "data");
    REQUIRE_MESSAGE(cluster, testing::failure_text(cluster));
    auto stopped = cluster->stop();
    REQUIRE_MESSAGE(stopped, testing::failure_text(stopped));
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(30, 0);
    for (const char* page : {"/", "/flows/marked"}) {
      CAPTURE(page);
      auto r = c.Get(page);
      REQUIRE(r);
      CHECK(r->status == 503);
      CHECK(r->body.find("database is unreachable") != std::string::npos);
      CHECK(r->body.find("No runs.") == std::string::npos);
    }
    server.signal(SIGTERM);
    (void)server.wait(std::chrono::seconds(20));
  }
}

TEST_SUITE("serve") {
  TEST_CASE("a flow's page holds a form that starts a run, inert until its script runs") {
    ServeScene& scene = shared_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto c = scene.client();
    auto page = c.Get("/flows/marked");
    REQUIRE(page);
    CHECK(page->status == 200);
    const std::string& html = page->body;
    CHECK(html.find("<form id=\"start-run\"") != std::string::npos);
    CHECK(html.find("data-start-url=\"/api/v1/flows/marked/runs\"") != std::string::npos);
    // Without the script, the button does nothing: it is disabled.
    CHECK(html.find("id=\"start-button\" disabled") != std::string::npos);
    // The input is prefilled from the schema's required properties (order_id, of no type).
    CHECK(html.find("&quot;order_id&quot;: null") != std::string::npos);
    // No inline script: the form's code is in /static/app.js.
    CHECK(html.find("<script>") == std::string::npos);
    auto js = c.Get("/static/app.js");
    REQUIRE(js);
    CHECK(js->body.find("start-run") != std::string::npos);
    CHECK(js->body.find("innerHTML") == std::string::npos);
  }

  TEST_CASE(
      "a run waiting for a concurrency limit and a rate limit says which, by the API and on its "
      "page") {
    ServeScene& scene = shared_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto store = std::optional<detail::RunStore>(scene_store(scene));
    // A flow no worker of the scene serves: one task at once per /c, whose key holds markup.
    FlowDef flow;
    flow.slug = "limited";
    flow.module = "servetest";
    flow.steps.push_back(StepDef{"only", StepKind::single, {}, "nobody.none", {}});
    Concurrency one;
    one.key = "/c";
    flow.steps[0].concurrency = one;
    // And one task start an hour (one bucket): the first claim takes its token.
    RateLimit hourly;
    hourly.per = std::chrono::hours(1);
    flow.steps[0].rate_limit = hourly;
    REQUIRE(store->upsert_flow(flow, "v1"));
    std::vector<detail::RunId> runs;
    for (int i = 0; i < 2; ++i) {
      auto run = store->start_run("limited", "v1", detail::Json{{"c", "<b>k</b>"}});
      REQUIRE_MESSAGE(run, testing::failure_text(run));
      runs.push_back(*run);
    }
    const detail::FlowKey key{"limited", "v1"};
    auto claimed = store->claim("test-worker", std::span(&key, 1), 10);
    REQUIRE_MESSAGE(claimed, testing::failure_text(claimed));
    REQUIRE(claimed->size() == 1);
    const detail::RunId waiting = (*claimed)[0].run_id == runs[0] ? runs[1] : runs[0];

    auto c = scene.client();
    const json got = body_of(c.Get(("/api/v1/runs/" + waiting).c_str()));
    CAPTURE(got.dump());
    CHECK(got["concurrency"]["held_key"].is_null());
    json wait = got["concurrency"]["waiting"];
    REQUIRE(wait["rate_limited_until"].is_string());
    CHECK(wait["rate_limited_until"].get<std::string>().ends_with("Z"));
    wait.erase("rate_limited_until");
    CHECK(wait == json{{"step", "only"},
                       {"key", "<b>k</b>"},
                       {"limit", 1},
                       {"holding", 1},
                       {"rate_limit", {{"limit", 1}, {"per", "1h"}}},
                       {"text",
                        "step 'only': concurrency limit 1 reached for key \"<b>k</b>\" (1 task "
                        "at once); rate limit 1 per 1h reached too"}});
    // The running one waits for nothing.
    CHECK(
        body_of(c.Get(("/api/v1/runs/" + (*claimed)[0].run_id).c_str()))["concurrency"].is_null());
    auto page = c.Get(("/runs/" + waiting).c_str());
    REQUIRE(page);
    CHECK(page->status == 200);
    CHECK(page->body.find("<dt>Waiting</dt><dd data-run-waiting>step &#39;only&#39;: concurrency "
                          "limit 1 reached for key &quot;&lt;b&gt;k&lt;/b&gt;&quot;") !=
          std::string::npos);
    CHECK(page->body.find("<b>k</b>") == std::string::npos);
    // A flow's page shows its rate limit, and its steps' limits.
    auto flow_page = c.Get("/flows/paced");
    REQUIRE(flow_page);
    CHECK(flow_page->status == 200);
    CHECK(flow_page->body.find(", at most 3 tasks at once per key <code>/tenant</code></td>") !=
          std::string::npos);
    CHECK(flow_page->body.find(
              ", at most 500 task starts per 1s per key <code>/tenant</code></dd>") !=
          std::string::npos);
    const json paced = body_of(c.Get("/api/v1/flows/paced"));
    CHECK(paced["rate_limit"] == json{{"limit", 500}, {"per", "1s"}, {"key", "/tenant"}});
    CHECK(paced["steps"][0]["rate_limit"].is_null());
  }

  TEST_CASE("a step waiting for its retry says when, and how its last attempt failed") {
    ServeScene& scene = shared_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto store = std::optional<detail::RunStore>(scene_store(scene));
    // A flow no worker of the scene serves, retried an hour after a failure.
    FlowDef flow;
    flow.slug = "retried";
    flow.module = "servetest";
    flow.options.base_delay = Millis(3'600'000);
    flow.options.max_delay = Millis(3'600'000);
    flow.steps.push_back(StepDef{"only", StepKind::single, {}, "nobody.none", {}});
    REQUIRE(store->upsert_flow(flow, "v1"));
    auto run = store->start_run("retried", "v1", detail::Json::object());
    REQUIRE_MESSAGE(run, testing::failure_text(run));
    const detail::FlowKey key{"retried", "v1"};
    auto claimed = store->claim("test-worker", std::span(&key, 1), 1);
    REQUIRE_MESSAGE(claimed, testing::failure_text(claimed));
    REQUIRE(claimed->size() == 1);
    const detail::Failure failure{(*claimed)[0].id, (*claimed)[0].attempt, "<b>boom</b> at 42",
                                  false};
    auto failed = store->fail(std::span(&failure, 1));
    REQUIRE_MESSAGE(failed, testing::failure_text(failed));
    REQUIRE(failed->empty());  // none rejected

    auto c = scene.client();
    const json got = body_of(c.Get(("/api/v1/runs/" + *run).c_str()));
    CAPTURE(got.dump());
    REQUIRE(got["status"] == "started");
    const json step = got["steps"][0];
    CHECK(step["failed_attempt"] == 1);
    CHECK(step["last_error"] == "<b>boom</b> at 42");
    REQUIRE(step["next_attempt_at"].is_string());
    // An hour from now (the store's delay), not now: later than the run's creation.
    CHECK(step["next_attempt_at"].get<std::string>() > got["created_at"].get<std::string>());
    auto page = c.Get(("/runs/" + *run).c_str());
    REQUIRE(page);
    CHECK(page->status == 200);
    CHECK(
        page->body.find("retrying at <time>" + step["next_attempt_at"].get<std::string>() +
                        "</time> (attempt 1 failed: <span class=\"error\">&lt;b&gt;boom&lt;/b&gt; "
                        "at 42</span>)") != std::string::npos);
    // A step that is not waiting says nothing of retries.
    const json done = scene.wait_run(start_order(c, "retry-free"));
    for (const auto& s :
         body_of(c.Get(("/api/v1/runs/" + done["id"].get<std::string>()).c_str()))["steps"]) {
      CHECK(s["next_attempt_at"].is_null());
      CHECK(s["last_error"].is_null());
    }
  }

  TEST_CASE(
      "a sleeping step and a snoozed one say until when, over the API and on the run's page") {
    ServeScene& scene = shared_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto store = std::optional<detail::RunStore>(scene_store(scene));
    // Flows no worker of the scene serves: a sleep of a day, and a step whose task is snoozed
    // here for an hour.
    FlowDef napping;
    napping.slug = "napping";
    napping.module = "servetest";
    StepDef nap{"nap", StepKind::sleep, {}, "", {}};
    nap.sleep = Sleep{Millis(86'400'000), std::nullopt};
    napping.steps.push_back(nap);
    napping.steps.push_back(StepDef{"after", StepKind::single, {"nap"}, "nobody.after", {}});
    REQUIRE(store->upsert_flow(napping, "v1"));
    auto asleep = store->start_run("napping", "v1", detail::Json::object());
    REQUIRE_MESSAGE(asleep, testing::failure_text(asleep));
    FlowDef polling;
    polling.slug = "polling";
    polling.module = "servetest";
    polling.steps.push_back(StepDef{"poll", StepKind::single, {}, "nobody.poll", {}});
    REQUIRE(store->upsert_flow(polling, "v1"));
    auto snoozing = store->start_run("polling", "v1", detail::Json::object());
    REQUIRE_MESSAGE(snoozing, testing::failure_text(snoozing));
    const detail::FlowKey key{"polling", "v1"};
    auto claimed = store->claim("test-worker", std::span(&key, 1), 1);
    REQUIRE_MESSAGE(claimed, testing::failure_text(claimed));
    REQUIRE(claimed->size() == 1);
    detail::Failure snooze{(*claimed)[0].id, (*claimed)[0].attempt, {}, false};
    snooze.snooze = Millis(3'600'000);
    auto rejected = store->fail(std::span(&snooze, 1));
    REQUIRE_MESSAGE(rejected, testing::failure_text(rejected));
    REQUIRE(rejected->empty());

    auto c = scene.client();
    const json slept = body_of(c.Get(("/api/v1/runs/" + *asleep).c_str()));
    CAPTURE(slept.dump());
    const json nap_step = slept["steps"][0];
    CHECK(nap_step["kind"] == "sleep");
    CHECK(nap_step["status"] == "started");
    CHECK(nap_step["snoozes"] == 0);
    REQUIRE(nap_step["waits_until"].is_string());
    CHECK(nap_step["waits_until"].get<std::string>() > slept["created_at"].get<std::string>());
    CHECK(slept["steps"][1]["waits_until"].is_null());
    auto page = c.Get(("/runs/" + *asleep).c_str());
    REQUIRE(page);
    CHECK(page->status == 200);
    CHECK(page->body.find("<div class=\"retry\" data-step-sleep=\"nap\">sleeping until <time>" +
                          nap_step["waits_until"].get<std::string>() + "</time></div>") !=
          std::string::npos);

    const json polled = body_of(c.Get(("/api/v1/runs/" + *snoozing).c_str()));
    CAPTURE(polled.dump());
    const json poll_step = polled["steps"][0];
    CHECK(poll_step["snoozes"] == 1);
    CHECK(poll_step["attempts"] == 0);
    CHECK(poll_step["next_attempt_at"].is_null());  // a snooze is no failed attempt
    REQUIRE(poll_step["waits_until"].is_string());
    page = c.Get(("/runs/" + *snoozing).c_str());
    REQUIRE(page);
    CHECK(page->body.find("<div class=\"retry\" data-step-snooze=\"poll\">snoozed (1x) until "
                          "<time>" +
                          poll_step["waits_until"].get<std::string>() + "</time></div>") !=
          std::string::npos);
  }

  TEST_CASE(
      "a waiting step says what for over the API and on its page, with a signal form; signals and "
      "events over the API, and their refusals") {
    ServeScene& scene = shared_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto store = std::optional<detail::RunStore>(scene_store(scene));
    // A flow no worker of the scene serves: a wait for signal "approve" (a timeout of a day), one
    // for event "paid" matching the run's /order, then a step.
    FlowDef waiting;
    waiting.slug = "waiting";
    waiting.module = "servetest";
    StepDef approve{"approve", StepKind::wait, {}, "", {}};
    approve.wait = Wait{};
    approve.wait->signal = "approve";
    approve.wait->timeout = Millis(86'400'000);
    StepDef paid{"paid", StepKind::wait, {}, "", {}};
    paid.wait = Wait{};
    paid.wait->event = "paid";
    paid.wait->match = {{"/order", "/order"}};
    waiting.steps = {approve, paid,
                     StepDef{"after", StepKind::single, {"approve", "paid"}, "nobody.after", {}}};
    REQUIRE(store->upsert_flow(waiting, "v1"));
    auto run = store->start_run("waiting", "v1", detail::Json{{"order", 7}});
    REQUIRE_MESSAGE(run, testing::failure_text(run));

    auto c = scene.client();
    const json shown = body_of(c.Get(("/api/v1/runs/" + *run).c_str()));
    CAPTURE(shown.dump());
    CHECK(shown["steps"][0]["waits_for"] == json{{"signal", "approve"}});
    CHECK(shown["steps"][0]["waits_until"].is_string());  // its timeout
    CHECK(shown["steps"][1]["waits_for"] == json{{"event", "paid"}, {"match", {{"/order", 7}}}});
    CHECK(shown["steps"][2]["waits_for"].is_null());
    auto page = c.Get(("/runs/" + *run).c_str());
    REQUIRE(page);
    CHECK(page->status == 200);
    CHECK(page->body.find("<div class=\"retry\" data-step-wait=\"approve\">waiting for signal "
                          "&#39;approve&#39;, times out at <time>" +
                          shown["steps"][0]["waits_until"].get<std::string>() + "</time></div>") !=
          std::string::npos);
    CHECK(page->body.find("data-signal-url=\"/api/v1/runs/" + *run + "/signals/approve\"") !=
          std::string::npos);
    CHECK(page->body.find("data-step-wait=\"paid\">waiting for event &#39;paid&#39; where "
                          "/order = 7</div>") != std::string::npos);
    // An event step has no form (an event is not sent to one run).
    CHECK(page->body.find("/signals/paid") == std::string::npos);

    // Refusals: a signal its flow does not wait for (409), a bad name (400), data that is not
    // JSON (400), a run that does not exist (404).
    const std::string signals = "/api/v1/runs/" + *run + "/signals/";
    check_problem(c.Post((signals + "aprove").c_str(), "{}", "application/json"), 409);
    check_problem(c.Post((signals + "a%20b").c_str(), "{}", "application/json"), 400);
    check_problem(c.Post((signals + "approve").c_str(), "{oops", "application/json"), 400);
    check_problem(c.Post("/api/v1/runs/00000000-0000-0000-0000-000000000000/signals/approve", "{}",
                         "application/json"),
                  404);
    // Delivered, then the same key again: a duplicate; another send: 409.
    httplib::Headers keyed{{"Idempotency-Key", "ok-1"}};
    const json sent = body_of(
        c.Post((signals + "approve").c_str(), keyed, R"({"by": "ana"})", "application/json"));
    CHECK(sent["outcome"] == "delivered");
    CHECK(sent["run"] == *run);
    const json again = body_of(
        c.Post((signals + "approve").c_str(), keyed, R"({"by": "bob"})", "application/json"));
    CHECK(again["outcome"] == "duplicate");
    CHECK(again["id"] == sent["id"]);
    check_problem(c.Post((signals + "approve").c_str(), "{}", "application/json"), 409);
    // An event: the one of another order resumes none; this order's resumes it.
    CHECK(body_of(c.Post("/api/v1/events/paid", R"({"order": 8})",
                         "application/json"))["resumed"] == 0);
    const json event =
        body_of(c.Post("/api/v1/events/paid", R"({"order": 7})", "application/json"));
    CHECK(event["resumed"] == 1);
    CHECK(event["duplicate"] == false);
    const json after = body_of(c.Get(("/api/v1/runs/" + *run).c_str()));
    CHECK(after["steps"][0]["status"] == "completed");
    CHECK(after["steps"][0]["output"] == json{{"by", "ana"}});
    CHECK(after["steps"][1]["output"] == json{{"order", 7}});
    CHECK(after["steps"][2]["status"] == "started");
  }

  TEST_CASE(
      "a failed run is retried from its failed step over the API and from its page's button: its "
      "completed step keeps its output and is not run again") {
    ServeScene& scene = shared_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto store = std::optional<detail::RunStore>(scene_store(scene));
    // A chain no worker of the scene serves: its tasks are claimed here. Step a completes, b fails
    // for good, and so does the run.
    FlowDef flow;
    flow.slug = "resumed";
    flow.module = "servetest";
    flow.steps.push_back(StepDef{"a", StepKind::single, {}, "nobody.a", {}});
    flow.steps.push_back(StepDef{"b", StepKind::single, {"a"}, "nobody.b", {}});
    REQUIRE(store->upsert_flow(flow, "v1"));
    auto run = store->start_run("resumed", "v1", detail::Json{{"n", 1}});
    REQUIRE_MESSAGE(run, testing::failure_text(run));
    const detail::FlowKey key{"resumed", "v1"};
    const auto claim = [&] {
      auto claimed = store->claim("test-worker", std::span(&key, 1), 10);
      REQUIRE_MESSAGE(claimed, testing::failure_text(claimed));
      return *claimed;
    };
    auto a = claim();
    REQUIRE(a.size() == 1);
    const detail::Completion done_a{a[0].id, a[0].attempt, detail::Json{{"made", "by a"}}};
    REQUIRE(store->complete(std::span(&done_a, 1)));
    auto b = claim();
    REQUIRE(b.size() == 1);
    const detail::Failure failure{b[0].id, b[0].attempt, "down", true};
    REQUIRE(store->fail(std::span(&failure, 1)));

    auto c = scene.client();
    REQUIRE(body_of(c.Get(("/api/v1/runs/" + *run).c_str()))["status"] == "failed");
    // The failed run's page offers both retries.
    auto page = c.Get(("/runs/" + *run).c_str());
    REQUIRE(page);
    CHECK(page->body.find("data-action=\"/api/v1/runs/" + *run +
                          "/retry?from=failed\">Retry from the failed step</button>") !=
          std::string::npos);
    CHECK(page->body.find("data-action=\"/api/v1/runs/" + *run + "/retry\">") != std::string::npos);
    check_problem(c.Post(("/api/v1/runs/" + *run + "/retry?from=nowhere").c_str()), 400);

    auto retried = c.Post(("/api/v1/runs/" + *run + "/retry?from=failed").c_str());
    REQUIRE(retried);
    CAPTURE(retried->body);
    REQUIRE(retried->status == 201);
    const json fresh = json::parse(retried->body);
    CHECK(fresh["retry_of"] == *run);
    CHECK(fresh["status"] == "started");
    CHECK(retried->get_header_value("Location") ==
          "/api/v1/runs/" + fresh["id"].get<std::string>());
    const json shown = body_of(c.Get(("/api/v1/runs/" + fresh["id"].get<std::string>()).c_str()));
    REQUIRE(shown["steps"].size() == 2);
    CHECK(shown["steps"][0]["slug"] == "a");
    CHECK(shown["steps"][0]["status"] == "completed");
    CHECK(shown["steps"][0]["attempts"] == 0);
    CHECK(shown["steps"][0]["output"] == json{{"made", "by a"}});
    CHECK(shown["steps"][1]["slug"] == "b");
    CHECK(shown["steps"][1]["status"] == "started");
    // Only b is there to run, with a's output as its input.
    auto again = claim();
    REQUIRE(again.size() == 1);
    CHECK(again[0].run_id == fresh["id"]);
    CHECK(again[0].step_slug == "b");
    CHECK(again[0].input == detail::Json{{"a", {{"made", "by a"}}}});
    const detail::Completion done_b{again[0].id, again[0].attempt, "shipped"};
    REQUIRE(store->complete(std::span(&done_b, 1)));
    const json ended = scene.wait_run(fresh["id"]);
    CHECK(ended["status"] == "completed");
    CHECK(ended["output"] == json{{"b", "shipped"}});
    // A completed run has no failed step: 409, and its page offers the plain retry only.
    const std::string completed = fresh["id"];
    check_problem(c.Post(("/api/v1/runs/" + completed + "/retry?from=failed").c_str()), 409);
    auto done_page = c.Get(("/runs/" + completed).c_str());
    REQUIRE(done_page);
    CHECK(done_page->body.find("Retry from the failed step") == std::string::npos);
  }

  TEST_CASE("runs are found by their exact id or idempotency key, and counted") {
    ServeScene& scene = shared_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    detail::RunStore store = unserved_flow(scene, "searched");
    std::vector<std::string> ids;
    for (const char* k : {"key-1", "key-<2>", "key-3"}) {
      detail::StartOptions start;
      start.idempotency_key = k;
      auto id = store.start_run("searched", "v1", detail::Json::object(), start);
      REQUIRE_MESSAGE(id, testing::failure_text(id));
      ids.push_back(*id);
    }
    auto c = scene.client();
    const json by_key = body_of(c.Get("/api/v1/runs?key=key-%3C2%3E"));
    REQUIRE(by_key["runs"].size() == 1);
    CHECK(by_key["runs"][0]["id"] == ids[1]);
    CHECK(by_key["total"] == 1);
    CHECK(by_key["total_exact"] == true);
    CHECK(by_key["next_before"].is_null());
    const json by_id = body_of(c.Get(("/api/v1/runs?id=" + ids[2]).c_str()));
    REQUIRE(by_id["runs"].size() == 1);
    CHECK(by_id["runs"][0]["idempotency_key"] == "key-3");
    // An id and a key that do not go together: nothing.
    CHECK(body_of(c.Get(("/api/v1/runs?key=key-1&id=" + ids[2]).c_str()))["runs"].empty());
    CHECK(body_of(c.Get("/api/v1/runs?key=nobody"))["total"] == 0);
    check_problem(c.Get("/api/v1/runs?id=not-a-run"), 400);
    check_problem(c.Get(("/api/v1/runs?key=" + std::string(256, 'k')).c_str()), 400);
    // The count of a flow's runs, whatever the page's limit.
    const json listed = body_of(c.Get("/api/v1/runs?flow=searched&limit=1"));
    CHECK(listed["runs"].size() == 1);
    CHECK(listed["total"] == 3);
    CHECK(listed["total_exact"] == true);
    // The page: a search box, the count, the run found, the key escaped in the box.
    auto page = c.Get("/runs?key=key-%3C2%3E");
    REQUIRE(page);
    CHECK(page->status == 200);
    CHECK(page->body.find("name=\"key\" value=\"key-&lt;2&gt;\"") != std::string::npos);
    CHECK(page->body.find("data-runs-total=\"1\">1 run found<") != std::string::npos);
    CHECK(page->body.find(ids[1]) != std::string::npos);
    CHECK(page->body.find(ids[0]) == std::string::npos);
    auto all = c.Get("/runs?flow=searched");
    REQUIRE(all);
    CHECK(all->body.find(">3 runs<") != std::string::npos);
    // Past the bound, the count says so instead of reading the whole history.
    std::vector<detail::Json> inputs(10'001, detail::Json::object());
    REQUIRE(unserved_flow(scene, "counted").start_runs("counted", "v1", inputs));
    const json many = body_of(c.Get("/api/v1/runs?flow=counted&limit=5"));
    CHECK(many["total"] == 10'000);
    CHECK(many["total_exact"] == false);
    auto many_page = c.Get("/runs?flow=counted");
    REQUIRE(many_page);
    CHECK(many_page->body.find(">more than 10,000 runs<") != std::string::npos);
  }

  TEST_CASE("a run's attempts are listed by the API, paged, and on its page, escaped") {
    ServeScene& scene = shared_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    detail::RunStore store = unserved_flow(scene, "attempted");
    auto run = store.start_run("attempted", "v1", detail::Json::object());
    REQUIRE_MESSAGE(run, testing::failure_text(run));
    const detail::FlowKey key{"attempted", "v1"};
    auto claimed = store.claim("test-worker", std::span(&key, 1), 1);
    REQUIRE_MESSAGE(claimed, testing::failure_text(claimed));
    REQUIRE(claimed->size() == 1);
    detail::Failure failure{(*claimed)[0].id, 1, "<b>boom</b> " + std::string(5000, 'x'), false};
    // It ran in a handler process, killed with two processes its handler had left; a negative
    // count (no worker sends one) is stored as 0.
    failure.process = detail::TaskProcess{4242, 1500, 2048, -700, SIGKILL, std::nullopt, 2};
    auto failed = store.fail(std::span(&failure, 1));
    REQUIRE_MESSAGE(failed, testing::failure_text(failed));
    REQUIRE(failed->empty());

    auto c = scene.client();
    const std::string base = "/api/v1/runs/" + *run + "/attempts";
    const json got = body_of(c.Get(base.c_str()));
    CAPTURE(got.dump());
    CHECK(got["run"] == *run);
    CHECK(got["total"] == 1);
    CHECK(got["next_offset"].is_null());
    REQUIRE(got["attempts"].size() == 1);
    const json a = got["attempts"][0];
    CHECK(a["step"] == "only");
    CHECK(a["task"] == 0);
    CHECK(a["attempt"] == 1);
    CHECK(a["outcome"] == "retried");
    CHECK(a["worker"] == "test-worker");
    REQUIRE(a["started_at"].is_string());
    CHECK(a["started_at"].get<std::string>().size() == 24);  // 2026-01-02T03:04:05.678Z
    CHECK(a["duration_ms"].is_number_integer());
    // Bounded: 1,000 bytes and an ellipsis.
    const std::string error = a["error"];
    CHECK(error.rfind("<b>boom</b> xxx", 0) == 0);
    CHECK(error.size() <= 1000 + 3);
    CHECK(a["process"] == json::parse(R"({"pid": 4242, "cpu_us": 1500, "max_rss_kb": 2048,
        "handler_us": 0, "signal": 9, "signal_name": "SIGKILL", "exit_status": null,
        "left_processes": 2})"));
    // Another step: none; paging past the end: none, counted.
    CHECK(body_of(c.Get((base + "?step=other").c_str()))["total"] == 0);
    const json past = body_of(c.Get((base + "?offset=5&limit=1").c_str()));
    CHECK(past["attempts"].empty());
    CHECK(past["total"] == 1);
    check_problem(c.Get((base + "?limit=0").c_str()), 400);
    check_problem(c.Get((base + "?offset=x").c_str()), 400);

    auto page = c.Get(("/runs/" + *run).c_str());
    REQUIRE(page);
    CHECK(page->status == 200);
    CHECK(page->body.find("<h2 id=\"attempts\">Attempts</h2>") != std::string::npos);
    CHECK(page->body.find("data-attempt=\"only/0/1\"") != std::string::npos);
    CHECK(page->body.find("&lt;b&gt;boom&lt;/b&gt; xxx") != std::string::npos);
    CHECK(page->body.find("<b>boom</b>") == std::string::npos);
    CHECK(page->body.find(a["started_at"].get<std::string>()) != std::string::npos);
    CHECK(page->body.find(std::string(400, 'x')) == std::string::npos);  // cut to 300 bytes
    CHECK(page->body.find("<td data-attempt-process>pid 4242, CPU 1.50 ms, handler 0.00 ms, peak "
                          "RSS 2.0 MiB, ended by signal 9 (SIGKILL), 2 processes it started "
                          "killed with it</td>") != std::string::npos);
    auto bad = c.Get(("/runs/" + *run + "?attempts_offset=-1").c_str());
    REQUIRE(bad);
    CHECK(bad->status == 400);
  }
}

namespace {

// A store on the scene's cluster with the flow `slug`: a map step "fan" over the run input, then
// "sum" after it, whose handlers are in no plugin: its runs stay started with their tasks queued.
detail::RunStore unserved_map_flow(const ServeScene& scene, const std::string& slug) {
  auto store = std::optional<detail::RunStore>(scene_store(scene));
  FlowDef flow;
  flow.slug = slug;
  flow.module = "servetest";
  flow.steps.push_back(StepDef{"fan", StepKind::map, {}, "nobody.fan", {}});
  flow.steps.push_back(StepDef{"sum", StepKind::single, {"fan"}, "nobody.sum", {}});
  auto stored = store->upsert_flow(flow, "v1");
  REQUIRE_MESSAGE(stored, testing::failure_text(stored));
  return std::move(*store);
}

std::size_t count_of(const std::string& text, const std::string& part) {
  std::size_t n = 0;
  for (auto at = text.find(part); at != std::string::npos; at = text.find(part, at + 1)) ++n;
  return n;
}

}  // namespace

TEST_SUITE("serve") {
  TEST_CASE("a run's DAG is drawn with each step's state, in colour and in words") {
    ServeScene& scene = shared_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto c = scene.client();
    // A run of a map step whose tasks nobody claims: fan started, sum waiting.
    detail::RunStore store = unserved_map_flow(scene, "drawn");
    auto started = store.start_run("drawn", "v1", detail::Json::array({1, 2, 3}));
    REQUIRE_MESSAGE(started, testing::failure_text(started));
    auto svg = c.Get(("/api/v1/runs/" + *started + "/graph.svg").c_str());
    REQUIRE(svg);
    CHECK(svg->status == 200);
    CHECK(svg->get_header_value("Content-Type") == "image/svg+xml");
    CHECK(svg->body.find("<svg") != std::string::npos);
    CHECK(svg->body.find("nobody.fan (map)") != std::string::npos);
    CHECK(svg->body.find("\u25b6 started") != std::string::npos);
    CHECK(svg->body.find("\u25cb waiting") != std::string::npos);
    CHECK(svg->body.find("#fff4c2") != std::string::npos);  // started's fill
    // Cancelled: both steps say so, and the picture is drawn again.
    REQUIRE(body_of(c.Post(("/api/v1/runs/" + *started + "/cancel").c_str()))["status"] ==
            "cancelled");
    auto after = c.Get(("/api/v1/runs/" + *started + "/graph.svg").c_str());
    REQUIRE(after);
    CHECK(count_of(after->body, "\u2298 cancelled") == 2);
    // A completed run: every step completed.
    const json done = scene.wait_run(start_order(c, "book"));
    REQUIRE(done["status"] == "completed");
    auto green = c.Get(("/api/v1/runs/" + done["id"].get<std::string>() + "/graph.svg").c_str());
    REQUIRE(green);
    CHECK(count_of(green->body, "\u2713 completed") == 1);
    CHECK(green->body.find("orders.fetch") != std::string::npos);
    // The run's page shows it with its legend.
    auto page = c.Get(("/runs/" + *started).c_str());
    REQUIRE(page);
    CHECK(page->body.find("src=\"/api/v1/runs/" + *started + "/graph.svg\"") != std::string::npos);
    CHECK(page->body.find("<ul class=\"legend\"") != std::string::npos);
    CHECK(page->body.find("\u2717</span> failed") != std::string::npos);
    check_problem(c.Get("/api/v1/runs/00000000-0000-0000-0000-000000000000/graph.svg"), 404);
    check_problem(c.Get("/api/v1/runs/not-a-run/graph.svg"), 404);
  }

  TEST_CASE("a map step's tasks are listed 50 to a page, with next and previous links") {
    ServeScene& scene = shared_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto c = scene.client();
    detail::RunStore store = unserved_map_flow(scene, "paged");
    detail::Json input = detail::Json::array();
    for (int i = 0; i < 120; ++i) input.push_back(i);
    auto started = store.start_run("paged", "v1", input);
    REQUIRE_MESSAGE(started, testing::failure_text(started));
    const std::string base = "/api/v1/runs/" + *started + "/steps/fan/tasks";
    const json first = body_of(c.Get((base + "?limit=50").c_str()));
    CHECK(first["task_count"] == 120);
    REQUIRE(first["tasks"].size() == 50);
    CHECK(first["tasks"][0]["index"] == 0);
    CHECK(first["tasks"][0]["status"] == "queued");
    CHECK(first["tasks"][0]["attempt"] == 0);
    CHECK(first["tasks"][49]["index"] == 49);
    CHECK(first["next_offset"] == 50);
    CHECK(first["previous_offset"].is_null());
    const json second = body_of(c.Get((base + "?offset=50&limit=50").c_str()));
    CHECK(second["tasks"][0]["index"] == 50);
    CHECK(second["next_offset"] == 100);
    CHECK(second["previous_offset"] == 0);
    const json last = body_of(c.Get((base + "?offset=100").c_str()));
    CHECK(last["tasks"].size() == 20);
    CHECK(last["tasks"][19]["index"] == 119);
    CHECK(last["next_offset"].is_null());
    // The step that has not started holds no task yet.
    CHECK(
        body_of(c.Get(("/api/v1/runs/" + *started + "/steps/sum/tasks").c_str()))["tasks"].empty());
    check_problem(c.Get((base + "?limit=0").c_str()), 400);
    check_problem(c.Get((base + "?limit=501").c_str()), 400);
    check_problem(c.Get((base + "?offset=-1").c_str()), 400);
    check_problem(c.Get((base + "?offset=x").c_str()), 400);
    check_problem(c.Get(("/api/v1/runs/" + *started + "/steps/nope/tasks").c_str()), 404);
    // The run's page: a link per step, and ?step= shows 50 tasks with the next page's link.
    auto page = c.Get(("/runs/" + *started + "?step=fan").c_str());
    REQUIRE(page);
    CHECK(page->status == 200);
    CHECK(page->body.find("data-step-tasks-link=\"fan\"") != std::string::npos);
    CHECK(page->body.find("data-step-tasks=\"fan\"") != std::string::npos);
    CHECK(page->body.find("data-task-index=\"49\"") != std::string::npos);
    CHECK(page->body.find("data-task-index=\"50\"") == std::string::npos);
    CHECK(page->body.find("?step=fan&amp;offset=50#tasks\" rel=\"next\"") != std::string::npos);
    CHECK(page->body.find("rel=\"prev\"") == std::string::npos);
    auto next = c.Get(("/runs/" + *started + "?step=fan&offset=50").c_str());
    REQUIRE(next);
    CHECK(next->body.find("data-task-index=\"50\"") != std::string::npos);
    CHECK(next->body.find("?step=fan&amp;offset=0#tasks\" rel=\"prev\"") != std::string::npos);
    auto missing = c.Get(("/runs/" + *started + "?step=nope").c_str());
    REQUIRE(missing);
    CHECK(missing->status == 404);
    // Cancelled, the run's tasks leave the queue: the page says it holds none.
    REQUIRE(c.Post(("/api/v1/runs/" + *started + "/cancel").c_str()));
    const json gone = body_of(c.Get(base.c_str()));
    CHECK(gone["tasks"].empty());
    CHECK(gone["task_count"] == 120);
  }

  TEST_CASE("workers show their slots in use, and stopped or stale ones can be forgotten") {
    ServeScene& scene = shared_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto c = scene.client();
    auto store = std::optional<detail::RunStore>(scene_store(scene));
    // A stopped worker and a stale one (it said it beats every 10 ms, and then did not).
    detail::WorkerRecord gone;
    gone.id = "gone:1:<b>";
    gone.host = "gone";
    gone.pid = 1;
    gone.concurrency = 4;
    REQUIRE(store->heartbeat(gone, true));
    detail::WorkerRecord lost = gone;
    lost.id = "lost:2:x";
    lost.heartbeat_interval = Millis(10);
    // Its handler processes as a row may hold them: what is not a count reads as 0.
    lost.handler_processes = json::parse(
        R"({"alive": 2, "busy": "<b>", "started": 3, "crashed": -5, "timed_out": 1.5,
            "killed_by_limit": 1, "broken": 0, "extra": "<script>"})");
    REQUIRE(store->heartbeat(lost, false));
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    // The server's worker holds a task while its handler waits at a gate: 1 of its 2 slots.
    const std::string gate = (scene.scratch.dir / "slots-gate").string();
    const std::string ran = (scene.scratch.dir / "slots-started").string();
    const std::string held_run = body_of(c.Post(
        "/api/v1/flows/wprobe_single/runs",
        json(
            {{"log", (scene.scratch.dir / "slots.log").string()}, {"gate", gate}, {"started", ran}})
            .dump(),
        "application/json"))["id"];
    for (int i = 0; i < 300 && !fs::exists(ran); ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    REQUIRE(fs::exists(ran));
    std::string running;
    for (const auto& w : body_of(c.Get("/api/v1/workers"))) {
      if (w["status"] == "running") {
        running = w["id"];
        CHECK(w["held"] == 1);
        CHECK(w["concurrency"] == 2);
      }
      if (w["status"] == "running") CHECK(w["handler_processes"].is_null());  // threads
      if (w["id"] == gone.id) CHECK(w["status"] == "stopped");
      if (w["id"] == lost.id) {
        CHECK(w["status"] == "stale");
        CHECK(w["handler_processes"] == json::parse(R"({"alive": 2, "busy": 0, "started": 3,
            "crashed": 0, "timed_out": 0, "killed_by_limit": 1, "broken": 0})"));
      }
    }
    REQUIRE(!running.empty());
    auto page = c.Get("/workers");
    REQUIRE(page);
    CHECK(page->body.find("data-worker-slots>1 / 2<") != std::string::npos);
    CHECK(page->body.find("<td data-handler-processes>none (threads)</td>") != std::string::npos);
    CHECK(page->body.find("<td data-handler-processes>2 alive (0 busy); 3 started, 0 crashed, 0 "
                          "timed out, 1 killed by a limit, 0 broken</td>") != std::string::npos);
    CHECK(page->body.find("<script>") == std::string::npos);
    CHECK(page->body.find("data-action=\"/api/v1/workers/gone%3A1%3A%3Cb%3E/forget\"") !=
          std::string::npos);
    CHECK(page->body.find("data-action=\"/api/v1/workers/lost%3A2%3Ax/forget\"") !=
          std::string::npos);
    CHECK(page->body.find("gone:1:&lt;b&gt;") != std::string::npos);
    CHECK(page->body.find("/forget\">Forget</button>") != std::string::npos);
    CHECK(count_of(page->body, ">Forget</button>") == 2);  // not the running worker's
    // A running worker cannot be forgotten; the others can, once.
    check_problem(c.Post(("/api/v1/workers/" + running + "/forget").c_str()), 409);
    const json forgotten = body_of(c.Post("/api/v1/workers/gone%3A1%3A%3Cb%3E/forget"));
    CHECK(forgotten["forgotten"] == true);
    CHECK(forgotten["worker"] == gone.id);
    check_problem(c.Post("/api/v1/workers/gone%3A1%3A%3Cb%3E/forget"), 404);
    CHECK(body_of(c.Post("/api/v1/workers/lost%3A2%3Ax/forget"))["forgotten"] == true);
    for (const auto& w : body_of(c.Get("/api/v1/workers"))) CHECK(w["id"] == running);
    std::ofstream(gate) << "open\n";
    CHECK(scene.wait_run(held_run)["status"] == "completed");
  }

  TEST_CASE("each plugin lists its handlers and the flows that use them") {
    ServeScene& scene = shared_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto c = scene.client();
    bool seen = false;
    for (const auto& p : body_of(c.Get("/api/v1/plugins"))) {
      if (p["module"] != "wprobe") continue;
      for (const auto& h : p["handler_uses"])
        if (h["handler"] == "wprobe.record") {
          seen = true;
          const std::set<std::string> flows(h["flows"].begin(), h["flows"].end());
          CHECK(flows.count("wprobe_chain") == 1);
          CHECK(flows.count("wprobe_single") == 1);
        }
    }
    CHECK(seen);
    auto page = c.Get("/plugins");
    REQUIRE(page);
    CHECK(page->body.find("data-handler=\"wprobe.record\"") != std::string::npos);
    CHECK(page->body.find("<a href=\"/flows/wprobe_chain\">wprobe_chain</a>") != std::string::npos);
  }

  TEST_CASE("the database's health names a held snapshot and dead rows: API, readyz, dashboard") {
    ServeScene& scene = shared_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto c = scene.client();
    auto cluster = detail::EmbeddedCluster::open(scene.scratch.dir / "data");
    REQUIRE_MESSAGE(cluster, testing::failure_text(cluster));
    auto url = cluster->ensure_running();
    REQUIRE_MESSAGE(url, testing::failure_text(url));
    // A snapshot held (a pg_dump's), then 12,000 events sent and deleted behind it: dead rows
    // that no VACUUM may remove while it is held.
    pqxx::connection reader(*url);
    std::optional<pqxx::transaction<pqxx::isolation_level::repeatable_read>> held;
    held.emplace(reader, "held");
    held->exec("SELECT count(*) FROM flowreg.events /* <script>alert(1)</script> */");
    const std::string pid = std::to_string(reader.backendpid());
    {
      pqxx::connection writer(*url);
      pqxx::work tx(writer);
      tx.exec(
          "INSERT INTO flowreg.events (name, data) SELECT 'health', '{}' FROM "
          "generate_series(1, 12000)");
      tx.commit();
      pqxx::work del(writer);
      del.exec("DELETE FROM flowreg.events WHERE name = 'health'");
      del.exec("SELECT pg_stat_force_next_flush()");
      del.commit();
    }
    json health;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
    bool dead_seen = false;
    while (!dead_seen && std::chrono::steady_clock::now() < deadline) {
      health = body_of(c.Get("/api/v1/health"));
      for (const auto& w : health["warnings"])
        if (w.get<std::string>().find("table events has") != std::string::npos) dead_seen = true;
      if (!dead_seen) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    CHECK_MESSAGE(dead_seen, health.dump());
    CHECK(health["ok"] == false);
    bool holder = false;
    for (const auto& h : health["holders"])
      if (h["kind"] == "session" && h["name"] == pid) holder = true;
    CHECK_MESSAGE(holder, health.dump());
    const json ready = body_of(c.Get("/readyz"));
    CHECK(ready["status"] == "ready");  // a held snapshot takes no server out of service
    CHECK(ready["health"]["ok"] == false);
    auto home = c.Get("/");
    REQUIRE(home);
    CHECK(home->body.find("data-db-warning>table events has") != std::string::npos);
    auto workers = c.Get("/workers");
    REQUIRE(workers);
    CHECK(workers->body.find("data-db-holder=\"" + pid + "\"") != std::string::npos);
    CHECK(workers->body.find("data-db-table=\"events\"") != std::string::npos);
    CHECK(workers->body.find("data-retention>") != std::string::npos);
    // The holder's query, from outside, is escaped where it shows.
    CHECK(workers->body.find("&lt;script&gt;alert(1)&lt;/script&gt;") != std::string::npos);
    CHECK(workers->body.find("<script>alert") == std::string::npos);
    auto metrics = c.Get("/metrics");
    REQUIRE(metrics);
    CHECK(metrics->body.find("flowreg_table_rows{table=\"events\",kind=\"dead\"}") !=
          std::string::npos);
    CHECK(metrics->body.find("flowreg_db_oldest_transaction_seconds ") != std::string::npos);
    // Released and vacuumed: nothing to say any more. (Vacuumed again until then: another
    // snapshot of a moment, an autovacuum's ANALYZE of another table, may keep the dead rows
    // from one VACUUM, as a run of the whole suite saw once.)
    held->abort();
    held.reset();
    pqxx::connection writer(*url);
    bool clear = false;
    while (!clear && std::chrono::steady_clock::now() < deadline + std::chrono::seconds(30)) {
      pqxx::nontransaction(writer).exec("VACUUM flowreg.events");
      health = body_of(c.Get("/api/v1/health"));
      clear = health["ok"] == true;
      if (!clear) std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    CHECK_MESSAGE(clear, health.dump());
    for (const auto& h : health["holders"]) CHECK(h["name"] != pid);
  }
}

TEST_SUITE("serve") {
  TEST_CASE("a run started with run_at or delay is scheduled, cancellable, and runs at its time") {
    ServeScene& scene = shared_scene();
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto c = scene.client();
    const std::string input =
        json({{"order_id", "later"}, {"items", {{{"sku", "book"}, {"qty", 1}}}}}).dump();
    // Bad times: 400 with the reason, and no run.
    for (const auto& [query, reason] : std::vector<std::pair<std::string, std::string>>{
             {"run_at=tomorrow", "run_at 'tomorrow' is not a time: write RFC 3339"},
             {"run_at=2026-11-27T18:00:00", "is not a time"},
             {"run_at=9999-01-01T00:00:00Z", "is more than 10 years ahead"},
             {"delay=5x", "delay '5x' is not a duration"},
             {"delay=5m&run_at=2099-01-01T00:00:00Z", "give run_at or delay, not both"}}) {
      CAPTURE(query);
      auto r = c.Post(("/api/v1/flows/marked/runs?" + query).c_str(), input, "application/json");
      check_problem(r, 400);
      CHECK(json::parse(r->body)["detail"].get<std::string>().find(reason) != std::string::npos);
    }

    // Far ahead: scheduled in the run, the list and the dashboard; cancelled, it never runs.
    // January 2nd of next year (less than 10 years ahead).
    const std::string year = std::to_string(
        static_cast<int>(std::chrono::year_month_day(std::chrono::floor<std::chrono::days>(
                                                         std::chrono::system_clock::now()))
                             .year()) +
        1);
    const std::string due = year + "-01-02T02:04:05Z";
    auto far =
        c.Post(("/api/v1/flows/marked/runs?run_at=" + year + "-01-02T03:04:05%2B01:00").c_str(),
               input, "application/json");
    REQUIRE(far);
    CAPTURE(far->body);
    REQUIRE(far->status == 201);
    const json scheduled = json::parse(far->body);
    CHECK(scheduled["status"] == "scheduled");
    CHECK(scheduled["start_at"] == due);
    const std::string far_id = scheduled["id"];
    CHECK(body_of(c.Get(("/api/v1/runs/" + far_id).c_str()))["status"] == "scheduled");
    bool listed = false;
    const json runs = body_of(c.Get("/api/v1/runs?flow=marked"));
    for (const auto& r : runs["runs"])
      if (r["id"] == far_id) {
        listed = true;
        CHECK(r["status"] == "scheduled");
        CHECK(r["start_at"] == due);
      }
    CHECK(listed);
    auto page = c.Get(("/runs/" + far_id).c_str());
    REQUIRE(page);
    CHECK(page->body.find("s-scheduled") != std::string::npos);
    CHECK(page->body.find("for " + due) != std::string::npos);
    CHECK(page->body.find("/api/v1/runs/" + far_id + "/cancel") != std::string::npos);
    auto runs_page = c.Get("/runs?flow=marked");
    REQUIRE(runs_page);
    CHECK(runs_page->body.find("for " + due) != std::string::npos);
    CHECK(body_of(c.Post(("/api/v1/runs/" + far_id + "/cancel").c_str()))["status"] == "cancelled");
    CHECK(body_of(c.Get(("/api/v1/runs/" + far_id).c_str()))["status"] == "cancelled");

    // Soon: the server's worker runs it once its time has come, not before.
    const auto asked = std::chrono::system_clock::now();
    auto soon = c.Post("/api/v1/flows/marked/runs?delay=2s", input, "application/json");
    REQUIRE(soon);
    REQUIRE(soon->status == 201);
    const json soon_run = json::parse(soon->body);
    CHECK(soon_run["status"] == "scheduled");
    const std::string soon_id = soon_run["id"];
    json run;
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      run = body_of(c.Get(("/api/v1/runs/" + soon_id).c_str()));
      if (run["status"] != "scheduled" && run["status"] != "started") break;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    CHECK(run["status"] == "completed");
    // Not before its time (the server's clock is this machine's).
    CHECK(std::chrono::system_clock::now() >= asked + std::chrono::seconds(2));
  }
}

}  // namespace flowreg::servetest
