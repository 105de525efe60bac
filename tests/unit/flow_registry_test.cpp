#include "flowreg/flow_registry.hpp"

#include <doctest/doctest.h>

#include <atomic>
#include <future>
#include <latch>
#include <thread>

#include "flowreg/sync_point.hpp"

using namespace flowreg;
using namespace std::chrono_literals;
using detail::SyncPoints;

namespace {

FlowDef flow(std::string slug, std::vector<std::string> steps = {"a"}) {
  FlowDef f;
  f.slug = std::move(slug);
  std::string previous;
  for (auto& s : steps) {
    StepDef step;
    step.slug = s;
    step.handler = "mod." + s;
    if (!previous.empty()) step.depends_on = {previous};
    previous = s;
    f.steps.push_back(std::move(step));
  }
  return f;
}

Module module(std::string name, std::vector<FlowDef> flows, std::string source = {},
              std::shared_ptr<const void> code = nullptr) {
  return Module{std::move(name), std::move(source), std::move(flows), std::move(code)};
}

// A stand-in for a loaded plugin: tells when its last reference is gone.
std::shared_ptr<const void> tracked_code(std::shared_ptr<std::atomic<bool>> released) {
  return std::shared_ptr<const int>(new int(0), [released](const int* p) {
    released->store(true);
    delete p;
  });
}

struct Recorder {
  std::mutex mutex;
  std::vector<ModuleEvent> events;
  FlowRegistry::Listener listener() {
    return [this](const ModuleEvent& e) {
      std::lock_guard lock(mutex);
      events.push_back(e);
    };
  }
};

// Every test leaves the process-wide sync points as it found them.
struct SyncGuard {
  ~SyncGuard() { SyncPoints::instance().reset(); }
};

}  // namespace

TEST_SUITE("flow_registry") {
  TEST_CASE("registers a module and finds its flows by slug and by module") {
    FlowRegistry registry;
    REQUIRE(registry.register_module(
        module("billing", {flow("invoice"), flow("charge")}, "billing.so")));
    const RegisteredFlow* f = registry.find("charge");
    REQUIRE(f);
    CHECK(f->def.slug == "charge");
    CHECK(f->module == "billing");
    CHECK(f->def.module == "billing");
    CHECK(f->source == "billing.so");
    CHECK(f->version == flow_version(f->def));
    CHECK(registry.find("nope") == nullptr);
    auto flows = registry.module_flows("billing");
    REQUIRE(flows.size() == 2);
    CHECK(flows[0]->def.slug == "invoice");  // declaration order
    CHECK(flows[1]->def.slug == "charge");
    auto all = registry.list();
    REQUIRE(all.size() == 2);
    CHECK(all[0]->def.slug == "charge");  // sorted by slug
    CHECK(registry.modules() == std::vector<std::string>{"billing"});
    CHECK(registry.size() == 2);
    CHECK(registry.module_flows("other").empty());
  }

  TEST_CASE("a module with one invalid flow registers nothing and reports every problem") {
    FlowRegistry registry;
    FlowDef bad = flow("bad", {"a", "b"});
    bad.steps[0].depends_on = {"b"};  // a <-> b cycle
    FlowDef also_bad = flow("Worse");
    auto result =
        registry.register_module(module("billing", {flow("good"), bad, also_bad}, "b.so"));
    REQUIRE_FALSE(result);
    CHECK(result.error().code == Errc::invalid_definition);
    CHECK(result.error().message == "module 'billing' (b.so) is invalid: 2 problems");
    REQUIRE(result.error().details.size() == 2);
    CHECK(result.error().details[0].format() == "b.so: flow 'bad': dependency cycle a -> b -> a");
    CHECK(registry.find("good") == nullptr);
    CHECK(registry.size() == 0);
  }

  TEST_CASE("an invalid module name or a slug defined twice in one module is refused") {
    FlowRegistry registry;
    auto bad_name = registry.register_module(module("Bad-Name", {flow("x")}));
    REQUIRE_FALSE(bad_name);
    CHECK(bad_name.error().details[0].message.find("module name 'Bad-Name'") != std::string::npos);
    auto twice = registry.register_module(module("m", {flow("x"), flow("x")}));
    REQUIRE_FALSE(twice);
    CHECK(twice.error().details[0].message == "flow slug 'x' is defined twice in module 'm'");
  }

  TEST_CASE("a second module of the same name is refused and the first stays") {
    FlowRegistry registry;
    REQUIRE(registry.register_module(module("billing", {flow("invoice")}, "/p/a.so")));
    auto again = registry.register_module(module("billing", {flow("other")}, "/p/b.so"));
    REQUIRE_FALSE(again);
    CHECK(again.error().code == Errc::duplicate_module);
    CHECK(
        again.error().message ==
        "module 'billing' (/p/b.so): a module named 'billing' is already registered from /p/a.so");
    CHECK(registry.find("invoice"));
    CHECK_FALSE(registry.find("other"));
  }

  TEST_CASE("rejects a second module that registers an existing slug, naming both modules") {
    FlowRegistry registry;
    REQUIRE(registry.register_module(module("billing", {flow("invoice")}, "/p/billing.so")));
    auto clash =
        registry.register_module(module("shop", {flow("cart"), flow("invoice")}, "/p/shop.so"));
    REQUIRE_FALSE(clash);
    CHECK(clash.error().code == Errc::duplicate_slug);
    CHECK(clash.error().message ==
          "flow slug 'invoice' of module 'shop' (/p/shop.so) is already registered by module "
          "'billing' (/p/billing.so)");
    CHECK(registry.find("invoice")->module == "billing");
    CHECK_FALSE(registry.find("cart"));  // all or nothing
    CHECK(registry.modules() == std::vector<std::string>{"billing"});
  }

  TEST_CASE("unregistering removes all of a module's flows; an unknown module is not_found") {
    FlowRegistry registry;
    REQUIRE(registry.register_module(module("billing", {flow("invoice"), flow("charge")})));
    REQUIRE(registry.register_module(module("shop", {flow("cart")})));
    REQUIRE(registry.unregister_module("billing"));
    CHECK_FALSE(registry.find("invoice"));
    CHECK_FALSE(registry.find("charge"));
    CHECK(registry.find("cart"));
    auto missing = registry.unregister_module("billing");
    REQUIRE_FALSE(missing);
    CHECK(missing.error().code == Errc::not_found);
    // The slugs are free again.
    CHECK(registry.register_module(module("other", {flow("invoice")})));
  }

  TEST_CASE("replacing a module swaps its flows at once and checks slugs against other modules") {
    FlowRegistry registry;
    REQUIRE(registry.register_module(module("billing", {flow("invoice"), flow("charge")})));
    REQUIRE(registry.register_module(module("shop", {flow("cart")})));
    REQUIRE(
        registry.replace_module(module("billing", {flow("invoice", {"a", "b"}), flow("refund")})));
    CHECK(registry.find("invoice")->def.steps.size() == 2);
    CHECK(registry.find("refund"));
    CHECK_FALSE(registry.find("charge"));
    auto clash = registry.replace_module(module("billing", {flow("cart")}));
    REQUIRE_FALSE(clash);
    CHECK(clash.error().code == Errc::duplicate_slug);
    CHECK(registry.find("refund"));                                      // unchanged
    CHECK(registry.replace_module(module("fresh", {flow("new_one")})));  // absent: registers
  }

  TEST_CASE(
      "a FlowRef keeps the module's code alive after unregistering; the last one releases it") {
    FlowRegistry registry;
    auto released = std::make_shared<std::atomic<bool>>(false);
    REQUIRE(
        registry.register_module(module("plugin", {flow("job")}, "p.so", tracked_code(released))));
    FlowRef running = registry.get("job");
    REQUIRE(running);
    REQUIRE(registry.unregister_module("plugin", "file removed"));
    CHECK_FALSE(registry.find("job"));
    CHECK_FALSE(registry.get("job"));
    CHECK_FALSE(released->load());  // a handler of it still runs
    CHECK(running->def.slug == "job");
    running = FlowRef{};
    CHECK(released->load());
  }

  TEST_CASE("a reader thread's cached snapshot does not keep unregistered code loaded") {
    FlowRegistry registry;
    auto released = std::make_shared<std::atomic<bool>>(false);
    REQUIRE(
        registry.register_module(module("plugin", {flow("job")}, "p.so", tracked_code(released))));
    std::latch looked_up(1), unregistered(1);
    bool found_before = false, found_after = true;
    std::thread reader([&] {
      found_before = registry.find("job") != nullptr;  // caches the snapshot in this thread
      looked_up.count_down();
      unregistered.wait();  // idle, still holding its cache
      found_after = registry.find("job") != nullptr;
    });
    looked_up.wait();
    REQUIRE(registry.unregister_module("plugin"));
    CHECK(released->load());  // released although the idle reader's cache holds the old snapshot
    unregistered.count_down();
    reader.join();
    CHECK(found_before);
    CHECK_FALSE(found_after);
  }

  TEST_CASE("listeners hear registered, replaced and unregistered with flows and reason") {
    FlowRegistry registry;
    Recorder recorder;
    auto subscription = registry.subscribe(recorder.listener());
    REQUIRE(registry.register_module(module("billing", {flow("invoice")}, "b.so"), "loaded"));
    REQUIRE(registry.replace_module(module("billing", {flow("invoice"), flow("refund")}, "b.so"),
                                    "file changed"));
    REQUIRE(registry.unregister_module("billing", "file removed"));
    REQUIRE_FALSE(registry.register_module(module("Bad", {flow("x")})));  // failures are silent
    REQUIRE(recorder.events.size() == 3);
    CHECK(recorder.events[0].kind == ModuleEvent::Kind::registered);
    CHECK(recorder.events[0].module == "billing");
    CHECK(recorder.events[0].source == "b.so");
    CHECK(recorder.events[0].flows == std::vector<std::string>{"invoice"});
    CHECK(recorder.events[0].reason == "loaded");
    CHECK(recorder.events[1].kind == ModuleEvent::Kind::replaced);
    CHECK(recorder.events[1].flows == std::vector<std::string>{"invoice", "refund"});
    CHECK(recorder.events[1].old_flows == std::vector<std::string>{"invoice"});
    CHECK(recorder.events[1].reason == "file changed");
    CHECK(recorder.events[2].kind == ModuleEvent::Kind::unregistered);
    CHECK(recorder.events[2].flows == std::vector<std::string>{"invoice", "refund"});
    CHECK(recorder.events[2].reason == "file removed");
  }

  TEST_CASE("a listener sees the change already visible to readers") {
    FlowRegistry registry;
    bool visible = false;
    auto subscription =
        registry.subscribe([&](const ModuleEvent&) { visible = registry.find("x") != nullptr; });
    REQUIRE(registry.register_module(module("m", {flow("x")})));
    CHECK(visible);
  }

  TEST_CASE("a reset subscription hears nothing and may outlive the registry") {
    Subscription outliving;
    Recorder recorder;
    {
      FlowRegistry registry;
      auto subscription = registry.subscribe(recorder.listener());
      subscription.reset();
      REQUIRE(registry.register_module(module("m", {flow("x")})));
      outliving = registry.subscribe(recorder.listener());
    }
    CHECK(recorder.events.empty());
    outliving.reset();  // the registry is gone: no crash, no effect
  }

  TEST_CASE("a listener may change the registry; its change is heard after the current event") {
    FlowRegistry registry;
    std::vector<std::string> heard;
    auto subscription = registry.subscribe([&](const ModuleEvent& e) {
      heard.push_back(std::string(to_string(e.kind)) + " " + e.module);
      // The listener follows "a" with "b": a change made from inside a listener.
      if (e.kind == ModuleEvent::Kind::registered && e.module == "a")
        REQUIRE(registry.register_module(module("b", {flow("y")}), "follows a"));
    });
    REQUIRE(registry.register_module(module("a", {flow("x")})));
    CHECK(registry.find("y") != nullptr);  // delivered before register_module("a") returned
    CHECK(heard == std::vector<std::string>{"registered a", "registered b"});
  }

  TEST_CASE("reset() of a subscription returns only after its running listener has finished") {
    FlowRegistry registry;
    std::latch entered(1);
    std::atomic<bool> finished{false};
    auto subscription = registry.subscribe([&](const ModuleEvent&) {
      entered.count_down();
      std::this_thread::sleep_for(100ms);  // still running when reset() is called
      finished = true;
    });
    std::thread writer([&] { REQUIRE(registry.register_module(module("m", {flow("x")}))); });
    entered.wait();
    subscription.reset();
    CHECK(finished.load());
    writer.join();
  }

  TEST_CASE("readers are not blocked by a writer holding the writer lock") {
    SyncGuard guard;
    FlowRegistry registry;
    REQUIRE(registry.register_module(module("base", {flow("stable")})));
    SyncPoints::instance().arm("flow_registry.writer_locked");
    std::thread writer(
        [&] { REQUIRE(registry.register_module(module("late", {flow("late_flow")}))); });
    REQUIRE(SyncPoints::instance().wait_parked("flow_registry.writer_locked", 1));
    // The writer is parked holding the lock. A reader that needed it would never return.
    auto reader = std::async(std::launch::async, [&] {
      FlowRegistry::Reader r(registry);
      return r.find("stable") != nullptr && registry.find("stable") != nullptr &&
             registry.get("stable") && registry.find("late_flow") == nullptr;
    });
    const bool returned = reader.wait_for(10s) == std::future_status::ready;
    SyncPoints::instance().release("flow_registry.writer_locked");
    writer.join();
    REQUIRE(returned);
    CHECK(reader.get());
    CHECK(registry.find("late_flow"));
  }

  TEST_CASE("a reader refreshing while a writer publishes never keeps a stale snapshot") {
    // Regression guard for the publish order: the reader records the version it read before
    // loading the snapshot, and the writer stores the snapshot before bumping the version. Here
    // the writer publishes between the reader's two loads.
    SyncGuard guard;
    FlowRegistry registry;
    REQUIRE(registry.register_module(module("base", {flow("stable")})));
    SyncPoints::instance().arm("flow_registry.reader_refresh");
    bool first = false, second = false;
    std::thread reader([&] {
      first = registry.find("stable") != nullptr;  // parks between version and snapshot loads
      second = registry.find("late_flow") != nullptr;
    });
    REQUIRE(SyncPoints::instance().wait_parked("flow_registry.reader_refresh", 1));
    SyncPoints::instance().release("flow_registry.reader_refresh");
    // Re-arm is not needed: the second find sees a new version and refreshes without parking.
    reader.join();
    CHECK(first);
    CHECK_FALSE(second);
    REQUIRE(registry.register_module(module("late", {flow("late_flow")})));
    SyncPoints::instance().arm("flow_registry.reader_refresh");
    bool third = false;
    std::thread reader2([&] {
      (void)registry.find("stable");  // new thread: refreshes, parks after reading the version
      second = registry.find("late_flow") != nullptr;
      // Published while this thread was parked: its next lookups must see it.
      third = registry.find("later_flow") != nullptr;
    });
    REQUIRE(SyncPoints::instance().wait_parked("flow_registry.reader_refresh", 1));
    REQUIRE(
        registry.register_module(module("later", {flow("later_flow")})));  // publishes meanwhile
    SyncPoints::instance().release("flow_registry.reader_refresh");
    reader2.join();
    CHECK(second);
    CHECK(third);
  }

  TEST_CASE("two modules racing for one slug: exactly one wins") {
    SyncGuard guard;
    FlowRegistry registry;
    SyncPoints::instance().arm("flow_registry.writer_locked");
    Result<void> a, b;
    std::thread first([&] { a = registry.register_module(module("first", {flow("shared")})); });
    REQUIRE(SyncPoints::instance().wait_parked("flow_registry.writer_locked", 1));
    // The second writer has validated its module too and now waits for the lock.
    std::thread second([&] { b = registry.register_module(module("second", {flow("shared")})); });
    SyncPoints::instance().release("flow_registry.writer_locked");
    first.join();
    second.join();
    CHECK(a.has_value() != b.has_value());
    const Result<void>& loser = a ? b : a;
    CHECK(loser.error().code == Errc::duplicate_slug);
    CHECK(registry.find("shared")->module == (a ? "first" : "second"));
  }

  TEST_CASE("register and unregister storms while readers look up") {
    FlowRegistry registry;
    REQUIRE(registry.register_module(module("stable", {flow("stable_a"), flow("stable_b")})));
    std::atomic<bool> stop{false};
    std::atomic<long> misses{0}, torn{0}, lookups{0};
    auto read_loop = [&](bool use_reader) {
      FlowRegistry::Reader reader(registry);
      while (!stop.load(std::memory_order_relaxed)) {
        auto find = [&](std::string_view s) {
          return use_reader ? reader.find(s) : registry.find(s);
        };
        if (!find("stable_a") || !find("stable_b")) ++misses;
        const RegisteredFlow* churn = find("churn_x");
        if (churn && (churn->module != "churn" || churn->version != flow_version(churn->def)))
          ++torn;
        if (auto ref = registry.get("churn_x"); ref && !ref.code()) ++torn;
        ++lookups;
      }
    };
    std::thread r1(read_loop, false), r2(read_loop, true);
    // The storm must overlap the reads: it starts once readers are looking up, and lasts at least
    // 300 rounds and until they have made 2000 lookups during it (a deadlock guard bounds it).
    const auto deadline = std::chrono::steady_clock::now() + 60s;
    while (lookups.load() == 0 && std::chrono::steady_clock::now() < deadline)
      std::this_thread::yield();
    const long before = lookups.load();
    for (int i = 0;
         i < 300 || (lookups.load() - before < 2000 && std::chrono::steady_clock::now() < deadline);
         ++i) {
      REQUIRE(registry.register_module(module("churn", {flow("churn_x"), flow("churn_y")})));
      REQUIRE(registry.replace_module(
          module("churn", {flow("churn_x", {"a", "b"}), flow("churn_y", {"a", "b"})})));
      REQUIRE(registry.unregister_module("churn"));
    }
    const long during = lookups.load() - before;
    stop = true;
    r1.join();
    r2.join();
    CHECK(misses.load() == 0);
    CHECK(torn.load() == 0);
    CHECK(during >= 2000);
    CHECK(registry.size() == 2);
  }
}
