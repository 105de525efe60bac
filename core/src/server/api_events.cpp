// /api/v1/events: the EventHub's run and step changes as Server-Sent Events, resumable with
// Last-Event-ID, at most settings.max_event_streams at once.

#include <fmt/format.h>

#include <cstdint>
#include <memory>

#include "server/http_helpers.hpp"
#include "server/routes.hpp"

namespace flowreg::detail {

namespace {

void stream_events(ServerState& state, const http::Request& req, http::Response& res) {
  if (state.streams.fetch_add(1) >= state.options.settings.max_event_streams) {
    state.streams.fetch_sub(1);
    return http::problem(
        res, 503,
        fmt::format("too many event streams open (at most {}, server.max_event_streams)",
                    state.options.settings.max_event_streams));
  }
  const std::string run = req.get_param_value("run"), flow = req.get_param_value("flow");
  std::string last = req.get_header_value("Last-Event-ID");
  if (last.empty()) last = req.get_param_value("last_event_id");
  auto [after, resumed] = state.hub.resume_point(last);
  const bool reset = !last.empty() && !resumed;
  auto cursor = std::make_shared<std::uint64_t>(after);
  auto first = std::make_shared<bool>(true);
  auto quiet = std::make_shared<int>(0);  // seconds without a write
  res.set_header("Cache-Control", "no-store");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [&state, run, flow, cursor, first, quiet, reset](std::size_t, httplib::DataSink& sink) {
        std::string out;
        if (*first) {
          *first = false;
          out = "retry: 2000\n";
          if (reset)
            out +=
                "event: reset\ndata: {\"reason\":\"the events since Last-Event-ID cannot be "
                "resumed: reload the state\"}\n";
          out += "\n";
        }
        auto events = state.hub.wait_after(*cursor, Millis{1000});
        if (!events) {
          sink.done();
          return true;
        }
        // Events this stream had not sent yet left the hub's history while it was behind.
        if (!events->empty() && events->front().seq > *cursor + 1)
          out +=
              "event: reset\ndata: {\"reason\":\"events were dropped while this stream was "
              "behind: reload the state\"}\n\n";
        for (const auto& e : *events) {
          *cursor = e.seq;
          if ((!run.empty() && e.run_id != run) || (!flow.empty() && e.flow != flow)) continue;
          out += fmt::format("id: {}:{}\nevent: {}\ndata: {}\n\n", state.hub.epoch(), e.seq, e.type,
                             e.data);
        }
        if (out.empty()) {
          // Every 15 s of silence a comment: keeps proxies and the client's timers alive, and
          // finds a client that went away.
          if (++*quiet < 15) return true;
          out = ":\n\n";
        }
        *quiet = 0;
        return sink.write(out.data(), out.size());
      },
      [&state](bool) { state.streams.fetch_sub(1); });
}

}  // namespace

void register_event_routes(httplib::Server& h, ServerState& state) {
  h.Get("/api/v1/events", [&state](const http::Request& req, http::Response& res) {
    stream_events(state, req, res);
  });
}

}  // namespace flowreg::detail
