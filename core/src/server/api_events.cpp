// /api/v1/events: the EventHub's run and step changes as Server-Sent Events, resumable with
// Last-Event-ID, at most settings.max_event_streams at once.

#include <fmt/format.h>

#include <cstdint>
#include <memory>
#include <optional>
#include <string>

#include "server/http_helpers.hpp"
#include "server/routes.hpp"

namespace flowreg::detail {

namespace {

// One client's stream: the hub's events after its cursor, filtered by run or flow. Holds one of
// the max_event_streams slots until the transport drops it (the stream ended, the client went
// away, or the server stops).
class EventStream final : public http::Stream {
 public:
  EventStream(ServerState& state, std::string run, std::string flow, std::uint64_t after,
              bool reset)
      : state_(state),
        run_(std::move(run)),
        flow_(std::move(flow)),
        cursor_(after),
        reset_(reset) {}
  EventStream(const EventStream&) = delete;
  EventStream& operator=(const EventStream&) = delete;
  ~EventStream() override { state_.streams.fetch_sub(1); }

  std::optional<std::string> next() override {
    std::string out;
    if (first_) {
      first_ = false;
      out = "retry: 2000\n";
      if (reset_)
        out +=
            "event: reset\ndata: {\"reason\":\"the events since Last-Event-ID cannot be "
            "resumed: reload the state\"}\n";
      out += "\n";
    }
    auto events = state_.hub.wait_after(cursor_, Millis{1000});
    if (!events) return std::nullopt;
    // Events this stream had not sent yet left the hub's history while it was behind.
    if (!events->empty() && events->front().seq > cursor_ + 1)
      out +=
          "event: reset\ndata: {\"reason\":\"events were dropped while this stream was "
          "behind: reload the state\"}\n\n";
    for (const auto& e : *events) {
      cursor_ = e.seq;
      if ((!run_.empty() && e.run_id != run_) || (!flow_.empty() && e.flow != flow_)) continue;
      out += fmt::format("id: {}:{}\nevent: {}\ndata: {}\n\n", state_.hub.epoch(), e.seq, e.type,
                         e.data);
    }
    if (out.empty()) {
      // Every 15 s of silence a comment: keeps proxies and the client's timers alive.
      if (++quiet_ < 15) return std::string();
      out = ":\n\n";
    }
    quiet_ = 0;
    return out;
  }

 private:
  ServerState& state_;
  const std::string run_, flow_;
  std::uint64_t cursor_;
  const bool reset_;
  bool first_ = true;
  int quiet_ = 0;  // seconds without a write
};

void stream_events(ServerState& state, const http::Request& req, http::Response& res) {
  if (state.streams.fetch_add(1) >= state.options.settings.max_event_streams) {
    state.streams.fetch_sub(1);
    return http::problem(
        res, 503,
        fmt::format("too many event streams open (at most {}, server.max_event_streams)",
                    state.options.settings.max_event_streams));
  }
  std::string last = req.get_header_value("Last-Event-ID");
  if (last.empty()) last = req.get_param_value("last_event_id");
  auto [after, resumed] = state.hub.resume_point(last);
  const bool reset = !last.empty() && !resumed;
  res.set_header("Content-Type", "text/event-stream");
  res.set_header("Cache-Control", "no-store");
  res.set_header("X-Accel-Buffering", "no");
  res.stream = std::make_shared<EventStream>(state, req.get_param_value("run"),
                                             req.get_param_value("flow"), after, reset);
}

}  // namespace

void register_event_routes(http::Router& h, ServerState& state) {
  h.Get("/api/v1/events", [&state](const http::Request& req, http::Response& res) {
    stream_events(state, req, res);
  });
}

}  // namespace flowreg::detail
