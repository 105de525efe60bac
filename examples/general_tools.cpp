// The general-purpose tools of flowreg's public API, which an application uses for its own
// components (the flow registry does not need them):
//   Registry<K,V>     a key -> (owner, value) table with RAII owners and subscriptions;
//   HandleRegistry    one shared handle per key, started once however many callers ask
//                     (get_or_start), stopped with the registry.
// Exits 1 when one of the promises shown here does not hold.
#include <atomic>
#include <cstdio>
#include <flowreg/tools/handle_registry.hpp>
#include <flowreg/tools/registry.hpp>
#include <memory>
#include <string>
#include <thread>
#include <vector>

namespace {

int failures = 0;

void expect(bool ok, const char* what) {
  std::printf("%s %s\n", ok ? "ok:  " : "FAIL:", what);
  if (!ok) ++failures;
}

// A handle: something expensive to start, shared by everyone who asks for the same key.
struct Connection {
  std::string url;
  std::atomic<bool> open{true};
  void stop() { open = false; }  // called when the registry lets it go
};

struct ConnectionOptions {
  int pool_size = 1;
  bool operator==(const ConnectionOptions&) const = default;
};

}  // namespace

int main() {
  // Registry with duplicate keys: topics and the components listening to them.
  flowreg::Registry<std::string, std::string> topics(flowreg::Keys::duplicate);
  int heard = 0;
  auto subscription = topics.subscribe([&](const auto&) { ++heard; });
  {
    auto mailer = topics.make_owner();
    auto audit = topics.make_owner();
    (void)topics.register_(mailer, "orders", "mailer");
    (void)topics.register_(audit, "orders", "audit");
    expect(topics.lookup("orders").size() == 2, "two components listen to 'orders'");
    std::vector<std::string> called;
    topics.dispatch("orders", [&](const auto& entries) {
      for (const auto& [owner, name] : entries) called.push_back(name);
    });
    expect(called == std::vector<std::string>{"mailer", "audit"},
           "dispatch calls them in registration order");
  }  // both owners go: their entries are removed before the destructors return
  expect(topics.lookup("orders").empty(), "an owner's entries die with it");
  expect(heard == 4, "the subscription heard two registrations and two removals");

  // HandleRegistry: eight threads ask for the same connection; one starts it.
  flowreg::HandleRegistry<std::string, Connection, ConnectionOptions> connections;
  if (!connections.start()) return 1;
  std::atomic<int> starts{0};
  std::vector<std::shared_ptr<Connection>> got(8);
  std::vector<std::thread> threads;
  for (std::size_t i = 0; i < got.size(); ++i)
    threads.emplace_back([&, i] {
      auto c = connections.get_or_start("postgres://db",
                                        [&](const std::string& url, const ConnectionOptions&) {
                                          ++starts;
                                          auto made = std::make_shared<Connection>();
                                          made->url = url;
                                          return flowreg::Result<std::shared_ptr<Connection>>(made);
                                        });
      if (c) got[i] = *c;
    });
  for (auto& t : threads) t.join();
  expect(starts == 1, "get_or_start from 8 threads started the connection once");
  bool same = true;
  for (const auto& c : got) same = same && c && c == got[0];
  expect(same, "every caller got the same handle");
  connections.stop_all();
  expect(got[0] && !got[0]->open, "stop_all() stopped it");

  std::printf("%s\n", failures == 0 ? "all promises held" : "a promise did not hold");
  return failures == 0 ? 0 : 1;
}
