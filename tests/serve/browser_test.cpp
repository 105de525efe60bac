// The dashboard in a real browser: headless Chromium (Debian's `chromium`) driven over the DevTools
// protocol (--remote-debugging-pipe: JSON messages ended by NUL on fds 3 and 4) against a live
// `flowreg serve --worker` with runs in every state. Checks the rendered DOM for the flows, their
// DAG pictures, a completed and a failed run, and a status that changes while the page is open
// (through /events), and saves screenshots of the main pages under FLOWREG_ARTIFACT_DIR.
// Chromium missing is a failure, not a skip: scripts/bootstrap installs it.

#include <doctest/doctest.h>
#include <fcntl.h>
#include <openssl/evp.h>
#include <poll.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <string>

#include "serve/serve_scene.hpp"

namespace flowreg::servetest {

namespace {

constexpr const char* kChromium = "/usr/bin/chromium";

// One headless Chromium and one page of it, attached in flat mode. Killed by the destructor.
class Browser {
 public:
  explicit Browser(const fs::path& profile) {
    int to[2], from[2];
    REQUIRE(pipe(to) == 0);
    REQUIRE(pipe(from) == 0);
    pid_ = fork();
    REQUIRE(pid_ >= 0);
    if (pid_ == 0) {
      const int in = fcntl(to[0], F_DUPFD, 10), out = fcntl(from[1], F_DUPFD, 10);
      dup2(in, 3);
      dup2(out, 4);
      const int null = ::open("/dev/null", O_WRONLY);
      dup2(null, 1);
      dup2(null, 2);
      for (int fd = 5; fd < 1024; ++fd) close(fd);
      const std::string data = "--user-data-dir=" + profile.string();
      execl(kChromium, kChromium, "--headless", "--no-sandbox", "--disable-gpu",
            "--remote-debugging-pipe", "--no-first-run", "--hide-scrollbars", data.c_str(),
            "about:blank", static_cast<char*>(nullptr));
      _exit(127);
    }
    close(to[0]);
    close(from[1]);
    to_ = to[1];
    from_ = from[0];
    const json target = call("Target.createTarget", {{"url", "about:blank"}});
    const json attached =
        call("Target.attachToTarget", {{"targetId", target["targetId"]}, {"flatten", true}});
    session_ = attached["sessionId"];
    call("Page.enable", json::object(), session_);
    viewport(1280, 900, false);
  }
  ~Browser() {
    close(to_);
    close(from_);
    kill(pid_, SIGKILL);
    waitpid(pid_, nullptr, 0);
  }
  Browser(const Browser&) = delete;
  Browser& operator=(const Browser&) = delete;

  void viewport(int width, int height, bool mobile) {
    call("Emulation.setDeviceMetricsOverride",
         {{"width", width}, {"height", height}, {"deviceScaleFactor", 1}, {"mobile", mobile}},
         session_);
  }
  // Navigates and waits until the document has loaded (images included).
  void open(const std::string& url) {
    call("Page.navigate", {{"url", url}}, session_);
    REQUIRE(until("document.readyState === 'complete' && location.href === " + json(url).dump()));
  }
  json eval(const std::string& expression) {
    const json r =
        call("Runtime.evaluate", {{"expression", expression}, {"returnByValue", true}}, session_);
    return r["result"].value("value", json());
  }
  // Evaluates `condition` until it is true, at most 60 s; whether it became true. The page may
  // be navigating meanwhile (a click that reloads it): Chromium then answers "Inspected target
  // navigated or closed", which counts as not yet.
  bool until(const std::string& condition) {
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    while (std::chrono::steady_clock::now() < deadline) {
      const json r = call("Runtime.evaluate",
                          {{"expression", "!!(" + condition + ")"}, {"returnByValue", true}},
                          session_, /*error_is_an_answer=*/true);
      if (!r.contains("error") && r["result"].value("value", json()) == true) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }
  void screenshot(const fs::path& file) {
    const json r = call("Page.captureScreenshot", {{"format", "png"}}, session_);
    const std::string b64 = r["data"];
    std::string png(b64.size(), '\0');
    const int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(png.data()),
                                  reinterpret_cast<const unsigned char*>(b64.data()),
                                  static_cast<int>(b64.size()));
    REQUIRE(n > 0);
    std::size_t size = static_cast<std::size_t>(n);
    for (std::size_t i = b64.size(); i > 0 && b64[i - 1] == '='; --i) --size;  // padding
    png.resize(size);
    std::ofstream(file, std::ios::binary) << png;
  }

 private:
  // The reply's result; with `error_is_an_answer`, the reply's {"error": ...} when it has one.
  json call(const std::string& method, const json& params, const std::string& session = "",
            bool error_is_an_answer = false) {
    const int id = next_id_++;
    json message = {{"id", id}, {"method", method}, {"params", params}};
    if (!session.empty()) message["sessionId"] = session;
    std::string text = message.dump();
    text.push_back('\0');
    for (std::size_t done = 0; done < text.size();) {
      const ssize_t n = write(to_, text.data() + done, text.size() - done);
      REQUIRE(n > 0);
      done += static_cast<std::size_t>(n);
    }
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60);
    for (;;) {
      std::size_t end;
      while ((end = buffer_.find('\0')) != std::string::npos) {
        const json reply = json::parse(buffer_.substr(0, end));
        buffer_.erase(0, end + 1);
        if (reply.value("id", -1) != id) continue;  // an event, or another reply
        CAPTURE(method);
        CAPTURE(reply.dump());
        if (error_is_an_answer && reply.contains("error")) return {{"error", reply["error"]}};
        REQUIRE(!reply.contains("error"));
        return reply["result"];
      }
      pollfd p{from_, POLLIN, 0};
      REQUIRE_MESSAGE(std::chrono::steady_clock::now() < deadline, "chromium did not answer ",
                      method);
      if (poll(&p, 1, 1000) <= 0) continue;
      char chunk[65536];
      const ssize_t n = read(from_, chunk, sizeof chunk);
      REQUIRE_MESSAGE(n > 0, "chromium closed its DevTools pipe");
      buffer_.append(chunk, static_cast<std::size_t>(n));
    }
  }

  pid_t pid_ = -1;
  int to_ = -1, from_ = -1;
  int next_id_ = 1;
  std::string buffer_, session_;
};

std::string start(httplib::Client& c, const std::string& slug, const json& input) {
  auto r = c.Post(("/api/v1/flows/" + slug + "/runs").c_str(), input.dump(), "application/json");
  REQUIRE(r);
  REQUIRE(r->status == 201);
  return json::parse(r->body)["id"];
}

}  // namespace

TEST_SUITE("serve_browser") {
  TEST_CASE("the dashboard in headless Chromium: flows, DAGs, runs in every state, a live change") {
    REQUIRE_MESSAGE(fs::exists(kChromium),
                    "chromium is not installed (scripts/bootstrap installs it)");
    const fs::path artifacts = FLOWREG_ARTIFACT_DIR;
    fs::create_directories(artifacts);
    ServeScene scene;
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto c = scene.client();
    const std::string base = "http://127.0.0.1:" + std::to_string(scene.port);

    // Runs in every state: completed, failed (its error holds markup), cancelled, started.
    const std::string completed = start(c, "marked", {{"order_id", "A"}});
    const std::string failed =
        start(c, "marked", {{"order_id", "B"}, {"items", {{{"sku", kScript}}}}});
    const std::string gate_c = (scene.scratch.dir / "gate-c").string();
    const std::string log = (scene.scratch.dir / "wprobe.log").string();
    const std::string cancelled = start(c, "wprobe_chain", {{"log", log}, {"gate", gate_c}});
    REQUIRE(c.Post(("/api/v1/runs/" + cancelled + "/cancel").c_str())->status == 200);
    std::ofstream(gate_c) << "open\n";
    REQUIRE(scene.wait_run(completed)["status"] == "completed");
    REQUIRE(scene.wait_run(failed)["status"] == "failed");
    const std::string gate = (scene.scratch.dir / "gate").string();
    const std::string live = start(c, "wprobe_chain", {{"log", log}, {"gate", gate}});

    Browser browser(scene.scratch.dir / "chromium-profile");

    browser.open(base + "/");
    CHECK(browser.eval("document.querySelector('[data-flow=\"marked\"] h2').textContent") ==
          "marked");
    CHECK(browser.eval("!!document.querySelector('[data-flow=\"wprobe_chain\"]')") == true);
    // Every DAG picture (one per flow: the scene's two, the plugin's) loaded and has a size: the
    // SVG rendered.
    CHECK(browser.eval("Array.from(document.querySelectorAll('img.dag')).length") == 4);
    CHECK(
        browser.until("Array.from(document.querySelectorAll('img.dag')).every(i => i.complete && "
                      "i.naturalWidth > 0)"));
    // The description's markup is text, not an element.
    CHECK(browser.eval("document.querySelectorAll('script').length") == 1);
    CHECK(browser.eval("document.querySelector('[data-flow=\"marked\"] p').textContent")
              .get<std::string>()
              .find(kScript) != std::string::npos);
    browser.screenshot(artifacts / "flows.png");

    browser.open(base + "/runs");
    const auto status_of = [&](const std::string& id) {
      return browser.eval("(document.querySelector('[data-run-status=\"" + id +
                          "\"]') || {}).textContent");
    };
    CHECK(status_of(completed) == "completed");
    CHECK(status_of(failed) == "failed");
    CHECK(status_of(cancelled) == "cancelled");
    CHECK(status_of(live) == "started");
    // Once the page follows /events, the run completes: its status changes in place.
    REQUIRE(browser.until("document.getElementById('live').textContent === 'live'"));
    std::ofstream(gate) << "open\n";
    CHECK(browser.until("(() => { const e = document.querySelector('[data-run-status=\"" + live +
                        "\"]'); return e.textContent === 'completed' && "
                        "e.getAttribute('data-live') === 'updated'; })()"));
    browser.screenshot(artifacts / "runs.png");

    browser.open(base + "/runs/" + failed);
    CHECK(browser.eval("document.querySelector('dd.error').textContent")
              .get<std::string>()
              .find(kScript) != std::string::npos);
    CHECK(browser.eval("document.querySelectorAll('script').length") == 1);
    // The attempt that failed is listed, with its outcome.
    CHECK(browser.eval("Array.from(document.querySelectorAll('[data-attempt-outcome]'))"
                       ".some(e => e.textContent === 'failed')") == true);
    browser.screenshot(artifacts / "run-failed.png");
    // Its "Retry from the failed step" button starts a new run, whose page the browser opens.
    browser.eval(
        "Array.from(document.querySelectorAll('button[data-action]')).find(b => b.textContent === "
        "'Retry from the failed step').click(); true");
    REQUIRE(
        browser.until("/^\\/runs\\/[0-9a-f-]{36}$/.test(location.pathname) && "
                      "location.pathname !== '/runs/" +
                      failed + "' && document.readyState === 'complete'"));
    const std::string resumed = browser.eval("location.pathname.slice(6)");
    CHECK(json::parse(c.Get(("/api/v1/runs/" + resumed).c_str())->body)["retry_of"] == failed);
    browser.screenshot(artifacts / "run-retried-from-failed.png");
    browser.open(base + "/runs/" + live);
    CHECK(browser.eval("document.querySelectorAll('[data-step-status]').length") == 3);
    browser.screenshot(artifacts / "run-completed.png");
    browser.open(base + "/flows/wprobe_chain");
    CHECK(browser.until("document.querySelector('img.dag').naturalWidth > 0"));
    browser.screenshot(artifacts / "flow.png");
    browser.open(base + "/workers");
    CHECK(browser.eval("document.querySelectorAll('tbody tr').length") >= 1);
    browser.screenshot(artifacts / "workers.png");
    browser.open(base + "/plugins");
    CHECK(browser.eval("document.querySelectorAll('tbody tr').length") == 2);
    browser.screenshot(artifacts / "plugins.png");
    // The schedules: one whose input holds markup, shown as text; its Pause button is a form the
    // browser POSTs (with this server's Origin), answered back to the list with a notice.
    auto made = c.Post("/api/v1/schedules",
                       json({{"name", "nightly"},
                             {"flow", "marked"},
                             {"cron", "0 3 1 1 *"},
                             {"input", {{"order_id", kScript}}}})
                           .dump(),
                       "application/json");
    REQUIRE(made);
    REQUIRE(made->status == 201);
    browser.open(base + "/schedules");
    CHECK(browser.eval("document.querySelectorAll('script').length") == 1);
    CHECK(browser.eval("document.querySelector('tr[data-schedule=\"nightly\"]').textContent")
              .get<std::string>()
              .find(kScript) != std::string::npos);
    CHECK(browser.eval("document.querySelector('[data-schedule-status]').textContent") ==
          "scheduled");
    browser.eval("document.querySelector('[data-schedule-action=\"pause\"]').click(); true");
    REQUIRE(
        browser.until("!!document.querySelector('[data-notice]') && "
                      "document.readyState === 'complete'"));
    CHECK(browser.eval("document.querySelector('[data-schedule-status]').textContent") == "paused");
    CHECK(json::parse(c.Get("/api/v1/schedules/nightly")->body)["paused"] == true);
    browser.screenshot(artifacts / "schedules.png");
    // A run waiting for a signal (its flow stored here, its next step served by no worker): its
    // page says what it waits for; its form sends the signal, and the page shows the step ended.
    auto store = scene_store(scene);
    FlowDef approval;
    approval.slug = "approval";
    approval.module = "browsertest";
    StepDef approve{"approve", StepKind::wait, {}, "", {}};
    approve.wait = Wait{};
    approve.wait->signal = "approve";
    approve.wait->timeout = Millis(86'400'000);
    // Shipped only when the answer says approved (docs/flows.md#conditional-steps): this one
    // does not, so the step is skipped and the run completes.
    StepDef ship{"ship", StepKind::single, {"approve"}, "nobody.ship", {}};
    ship.when = detail::Json{{"at", "/approve/approved"}, {"equals", true}};
    approval.steps = {approve, ship};
    REQUIRE(store.upsert_flow(approval, "v1"));
    auto waiting = store.start_run("approval", "v1", detail::Json{{"order_id", "o-43"}});
    REQUIRE_MESSAGE(waiting, testing::failure_text(waiting));
    browser.open(base + "/runs/" + *waiting);
    CHECK(browser.eval("document.querySelector('[data-step-wait=\"approve\"]').textContent")
              .get<std::string>()
              .starts_with("waiting for signal 'approve', times out at "));
    browser.eval(
        "document.querySelector('form[data-step-signal=\"approve\"] textarea').value = "
        "'{\"by\": \"ana\"}'; true");
    browser.screenshot(artifacts / "run-waiting.png");
    browser.eval(
        "document.querySelector('form[data-step-signal=\"approve\"] button').click(); true");
    REQUIRE(
        browser.until("!document.querySelector('form[data-step-signal]') && "
                      "document.readyState === 'complete'"));
    CHECK(browser.eval("document.querySelector('[data-step-status=\"approve\"]').textContent") ==
          "completed");
    CHECK(browser.eval("document.querySelector('[data-step-status=\"ship\"]').textContent") ==
          "skipped");
    browser.screenshot(artifacts / "run-signalled.png");
    CHECK(json::parse(c.Get(("/api/v1/runs/" + *waiting).c_str())->body)["steps"][0]["output"] ==
          json{{"by", "ana"}});
    // A run whose flow step started a child run (docs/flows.md#child-flows), which waits for its
    // signal: the parent's page links its child, the child's its parent.
    FlowDef family;
    family.slug = "family";
    family.module = "browsertest";
    StepDef fulfil{"fulfil", StepKind::flow, {}, "", {}};
    fulfil.child = Child{"approval", false};
    family.steps = {fulfil};
    REQUIRE(store.upsert_flow(family, "v1"));
    auto parent = store.start_run("family", "v1", detail::Json{{"order_id", "o-45"}});
    REQUIRE_MESSAGE(parent, testing::failure_text(parent));
    browser.open(base + "/runs/" + *parent);
    const std::string child =
        browser.eval("(document.querySelector('[data-run-child]') || {}).textContent || ''");
    CHECK(child.size() == 36);
    CHECK(browser.eval("document.querySelector('[data-step-status=\"fulfil\"]').textContent") ==
          "started");
    browser.screenshot(artifacts / "run-parent.png");
    browser.eval("document.querySelector('[data-run-child]').click(); true");
    REQUIRE(browser.until("location.pathname === '/runs/" + child +
                          "' && document.readyState === 'complete'"));
    CHECK(browser.eval("document.querySelector('[data-run-parent]').textContent") == *parent);
    browser.screenshot(artifacts / "run-child.png");
    // A phone's width.
    browser.viewport(390, 844, true);
    browser.open(base + "/runs");
    CHECK(browser.eval("document.documentElement.scrollWidth <= 390") == true);
    browser.screenshot(artifacts / "runs-phone.png");
    MESSAGE("screenshots in ", artifacts.string());
  }
}

TEST_SUITE("serve_browser") {
  TEST_CASE(
      "signed in to a server with a token, a run is started from its flow's page and followed") {
    REQUIRE_MESSAGE(fs::exists(kChromium),
                    "chromium is not installed (scripts/bootstrap installs it)");
    const fs::path artifacts = FLOWREG_ARTIFACT_DIR;
    fs::create_directories(artifacts);
    ServeScene scene(kToken);
    REQUIRE_MESSAGE(scene.port > 0, scene.log());
    auto c = scene.client(kToken);
    const std::string base = "http://127.0.0.1:" + std::to_string(scene.port);
    Browser browser(scene.scratch.dir / "chromium-profile-token");

    // Signing in with the sign-in page's own form (regression: under the server's former
    // Referrer-Policy no-referrer, the form's POST carried 'Origin: null', refused as
    // cross-site), which goes on to `next`.
    browser.open(base + "/signin?next=%2Fflows%2Fmarked");
    browser.eval("document.querySelector('input[name=token]').value = " + json(kToken).dump() +
                 "; document.querySelector('form').submit(); true");
    REQUIRE_MESSAGE(browser.until("location.pathname === '/flows/marked' && "
                                  "document.readyState === 'complete'"),
                    browser.eval("location.href + ' ' + document.body.innerText").dump());
    browser.open(base + "/flows/marked");
    const bool signed_in = browser.until(
        "location.pathname === '/flows/marked' && document.readyState === 'complete' && "
        "!!document.getElementById('start-run')");
    REQUIRE_MESSAGE(signed_in,
                    browser.eval("location.href + ' ' + document.body.innerText").dump());
    // The script enabled the button; the input is prefilled from the schema.
    REQUIRE(browser.until("!document.getElementById('start-button').disabled"));
    CHECK(browser.eval("JSON.parse(document.getElementById('start-input').value)") ==
          json({{"order_id", nullptr}}));
    browser.screenshot(artifacts / "token-flow-form-1280.png");

    // A refused input: the problem's detail and each error, as text next to the editor.
    browser.eval(
        "document.getElementById('start-input').value = '{}'; "
        "document.getElementById('start-button').click(); true");
    REQUIRE(browser.until("!document.getElementById('start-problem').hidden"));
    CHECK(browser.eval("document.getElementById('start-detail').textContent.length > 0") == true);
    CHECK(browser.eval("document.getElementById('start-errors').textContent")
              .get<std::string>()
              .find("order_id") != std::string::npos);
    CHECK(browser.eval("location.pathname") == "/flows/marked");
    // Malformed JSON with markup in it: 400, its detail shown as text, no element made of it.
    browser.eval(
        "document.getElementById('start-input').value = '{\"<b>x</b>\": '; "
        "document.getElementById('start-button').click(); true");
    REQUIRE(
        browser.until("!document.getElementById('start-button').disabled && "
                      "!document.getElementById('start-problem').hidden && "
                      "document.getElementById('start-errors').children.length === 0"));
    CHECK(browser.eval("document.querySelectorAll('#start-problem b').length") == 0);
    browser.screenshot(artifacts / "token-flow-form-problem-1280.png");

    // A run started from the form, with an idempotency key: the browser goes to its page.
    browser.eval(
        "document.getElementById('start-input').value = '{\"order_id\": \"from-the-form\"}'; "
        "document.getElementById('start-key').value = 'browser-key-1'; "
        "document.getElementById('start-button').click(); true");
    REQUIRE(
        browser.until("/^\\/runs\\/[0-9a-f-]{36}$/.test(location.pathname) && "
                      "document.readyState === 'complete'"));
    const std::string id = browser.eval("location.pathname.slice(6)");
    const json found = json::parse(c.Get("/api/v1/runs?key=browser-key-1")->body);
    REQUIRE(found["runs"].size() == 1);
    CHECK(found["runs"][0]["id"] == id);
    // The run page follows /events with the session cookie alone (no bearer token). (The run
    // may end before the stream opens: its final state is read from the page opened again.)
    REQUIRE(browser.until("document.getElementById('live').textContent === 'live'"));
    CHECK(scene.wait_run(id, kToken)["status"] == "completed");
    browser.open(base + "/runs/" + id);
    CHECK(browser.eval("document.querySelector('[data-step-status=\"fetch\"]').textContent") ==
          "completed");
    CHECK(browser.eval("document.querySelector('[data-step-attempts=\"fetch\"]').textContent") ==
          "1");
    // Its attempts, one row each: fetch's only one, completed.
    CHECK(browser.eval("document.querySelectorAll('[data-attempt]').length") == 1);
    CHECK(browser.eval("document.querySelector('[data-attempt=\"fetch/0/1\"] "
                       "[data-attempt-outcome]').textContent") == "completed");
    browser.screenshot(artifacts / "token-run-1280.png");

    // The runs list shows it, and finds it by its key.
    browser.open(base + "/runs");
    CHECK(browser.eval("(document.querySelector('[data-run-status=\"" + id +
                       "\"]') || {}).textContent") == "completed");
    CHECK(browser.eval("!!document.querySelector('[data-runs-total]')") == true);
    // A run started elsewhere while the list is open is announced live, then shown.
    REQUIRE(browser.until("document.getElementById('live').textContent === 'live'"));
    auto elsewhere =
        c.Post("/api/v1/flows/marked/runs", "{\"order_id\": \"elsewhere\"}", "application/json");
    REQUIRE(elsewhere);
    REQUIRE(elsewhere->status == 201);
    const std::string fresh = json::parse(elsewhere->body)["id"];
    CHECK(browser.until("!document.getElementById('new-runs').hidden"));
    CHECK(browser.eval("document.getElementById('new-runs-count').textContent") ==
          "1 new run since this page loaded");
    browser.screenshot(artifacts / "token-runs-1280.png");
    browser.eval("document.getElementById('new-runs-show').click(); true");
    CHECK(browser.until("!!document.querySelector('[data-run-status=\"" + fresh + "\"]')"));
    browser.open(base + "/runs?key=browser-key-1");
    CHECK(browser.eval("document.querySelector('[data-runs-total]').textContent") == "1 run found");

    // A phone's width: the same pages, none wider than the screen.
    browser.viewport(390, 844, true);
    for (const auto& [path, file] :
         std::vector<std::pair<std::string, std::string>>{{"/flows/marked", "token-flow-form-390"},
                                                          {"/runs", "token-runs-390"},
                                                          {"/runs/" + id, "token-run-390"}}) {
      CAPTURE(path);
      browser.open(base + path);
      CHECK(browser.eval("document.documentElement.scrollWidth <= 390") == true);
      browser.screenshot(artifacts / (file + ".png"));
    }
    MESSAGE("screenshots in ", artifacts.string());
  }
}

}  // namespace flowreg::servetest
