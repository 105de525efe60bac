#include "server/http_transport.hpp"

#include <fmt/format.h>
#include <spdlog/spdlog.h>
#include <sys/resource.h>

#include <atomic>
#include <boost/asio/dispatch.hpp>
#include <boost/asio/ip/tcp.hpp>
#include <boost/asio/post.hpp>
#include <boost/asio/ssl.hpp>
#include <boost/asio/steady_timer.hpp>
#include <boost/asio/strand.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/ssl.hpp>
#include <condition_variable>
#include <deque>
#include <future>
#include <list>
#include <optional>
#include <thread>
#include <type_traits>
#include <vector>

#include "flowreg/thread_annotations.hpp"

namespace flowreg::detail::http {

namespace {

namespace beast = boost::beast;
namespace bhttp = boost::beast::http;
namespace net = boost::asio;
namespace ssl = boost::asio::ssl;
using tcp = boost::asio::ip::tcp;
using Clock = std::chrono::steady_clock;

// Handler threads with a bounded queue: try_post refuses a job when `queue` are waiting already.
class HandlerPool {
 public:
  HandlerPool(std::size_t threads, std::size_t queue) : max_queued_(queue) {
    for (std::size_t i = 0; i < threads; ++i) threads_.emplace_back([this] { work(); });
  }
  HandlerPool(const HandlerPool&) = delete;
  HandlerPool& operator=(const HandlerPool&) = delete;
  ~HandlerPool() { shutdown(); }

  bool try_post(std::function<void()> job) {
    {
      MutexLock lock(mu_);
      if (shutdown_ || jobs_.size() >= max_queued_) return false;
      jobs_.push_back(std::move(job));
    }
    ready_.notify_one();
    return true;
  }
  // Runs the jobs running now to their end, drops the queued ones, joins the threads.
  void shutdown() {
    std::deque<std::function<void()>> dropped;
    {
      MutexLock lock(mu_);
      shutdown_ = true;
      dropped.swap(jobs_);
    }
    ready_.notify_all();
    for (auto& t : threads_)
      if (t.joinable()) t.join();
  }

 private:
  void work() {
    for (;;) {
      std::function<void()> job;
      {
        MutexLock lock(mu_);
        while (!shutdown_ && jobs_.empty()) ready_.wait(lock);
        if (shutdown_) return;
        job = std::move(jobs_.front());
        jobs_.pop_front();
      }
      job();
    }
  }

  const std::size_t max_queued_;
  AnnotatedMutex mu_;
  std::condition_variable_any ready_;
  std::deque<std::function<void()>> jobs_ FLOWREG_GUARDED_BY(mu_);
  bool shutdown_ FLOWREG_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

// Connection errors that are the client going away, not worth a response or a log line.
bool client_left(const beast::error_code& ec) {
  return ec == bhttp::error::end_of_stream || ec == net::error::eof ||
         ec == net::error::connection_reset || ec == net::error::broken_pipe ||
         ec == net::error::operation_aborted || ec == beast::error::timeout ||
         ec == ssl::error::stream_truncated;
}

}  // namespace

struct Transport::Impl {
  explicit Impl(TransportOptions o)
      : options(std::move(o)),
        pool(static_cast<std::size_t>(std::max(1, options.handler_threads)),
             static_cast<std::size_t>(std::max(1, options.handler_threads)) * 4) {}

  const TransportOptions options;
  std::atomic<int> open{0}, streams{0};
  std::atomic<std::size_t> bodies{0};  // body bytes reserved by requests read or handled now
  std::atomic<bool> stopping{false};
  HandlerPool pool;

  // Stream threads: running ones, and ended ones not joined yet (joined by the next start or by
  // stop()).
  AnnotatedMutex streams_mu;
  std::list<std::thread> stream_threads FLOWREG_GUARDED_BY(streams_mu);
  std::vector<std::list<std::thread>::iterator> ended_streams FLOWREG_GUARDED_BY(streams_mu);
  std::condition_variable_any streams_ended;

  std::optional<ssl::context> tls;
  // Destroyed before the members above: the sessions its pending handlers hold use them.
  net::io_context ioc;
  tcp::acceptor acceptor{ioc};
  net::steady_timer accept_pause{ioc};
  std::vector<std::thread> io_threads;
  int port = 0;

  void accept();
  void refuse_over_capacity(tcp::socket socket);
  void spawn_stream(std::function<void()> body);
  // Reserves `n` body bytes from the budget; false when they do not fit.
  bool reserve(std::size_t n) {
    std::size_t now = bodies.load();
    do {
      if (now + n > options.body_budget) return false;
    } while (!bodies.compare_exchange_weak(now, now + n));
    return true;
  }
};

namespace {

// One connection: reads a request, has a handler thread run its route, writes the response, and
// reads the next (keep-alive, pipelined requests included) until either side closes, a deadline
// passes or an error answers. Socket: beast::tcp_stream or beast::ssl_stream<beast::tcp_stream>.
template <class Socket>
class Session final : public std::enable_shared_from_this<Session<Socket>> {
 public:
  static constexpr bool kTls = !std::is_same_v<Socket, beast::tcp_stream>;

  template <class... Args>
  Session(Transport::Impl* t, std::string remote, Args&&... args)
      : t_(t), socket_(std::forward<Args>(args)...), remote_(std::move(remote)) {
    ++t_->open;
  }
  ~Session() {
    release_body();
    --t_->open;
  }

  void start() {
    if constexpr (kTls) {
      tcp().expires_after(t_->options.timeout);
      socket_.async_handshake(ssl::stream_base::server,
                              [self = this->shared_from_this()](beast::error_code ec) {
                                if (!ec) self->read();
                              });
    } else {
      read();
    }
  }

 private:
  beast::tcp_stream& tcp() { return beast::get_lowest_layer(socket_); }

  void read() {
    if (t_->stopping) return close();
    parser_.emplace();
    parser_->header_limit(static_cast<std::uint32_t>(t_->options.max_header_bytes));
    parser_->body_limit(t_->options.max_body_bytes);
    // One deadline for the wait and the whole request, header and body: a client sending a
    // byte at a time cannot stretch it.
    tcp().expires_after(t_->options.timeout);
    bhttp::async_read_header(socket_, buffer_, *parser_,
                             [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
                               self->on_header(ec);
                             });
  }

  void on_header(beast::error_code ec) {
    started_ = Clock::now();
    if (ec) return fail(ec);
    auto& msg = parser_->get();
    method_ = std::string(msg.method_string());
    target_ = std::string(msg.target());
    std::size_t want = 0;
    if (parser_->chunked()) {
      want = t_->options.max_body_bytes;  // unknown until read: the most it may be
    } else if (const auto n = parser_->content_length()) {
      want = static_cast<std::size_t>(*n);
    }
    if (want > 0 && !parser_->is_done()) {
      if (!t_->reserve(want))
        return answer_error(503,
                            "the server is reading too many request bodies at once; "
                            "try again");
      reserved_ = want;
      if (beast::iequals(msg[bhttp::field::expect], "100-continue")) {
        auto cont = std::make_shared<bhttp::response<bhttp::empty_body>>(bhttp::status::continue_,
                                                                         msg.version());
        bhttp::async_write(
            socket_, *cont,
            [self = this->shared_from_this(), cont](beast::error_code wec, std::size_t) {
              if (wec) return self->close();
              self->read_body();
            });
        return;
      }
      return read_body();
    }
    dispatch();
  }

  void read_body() {
    bhttp::async_read(socket_, buffer_, *parser_,
                      [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
                        if (ec) return self->fail(ec);
                        self->dispatch();
                      });
  }

  void fail(const beast::error_code& ec) {
    if (ec == bhttp::error::header_limit)
      return answer_error(431, fmt::format("the request line and header fields are larger than {} "
                                           "bytes",
                                           t_->options.max_header_bytes));
    if (ec == bhttp::error::body_limit)
      return answer_error(413, fmt::format("the request body is larger than {} bytes (the limit "
                                           "of run --input)",
                                           t_->options.max_body_bytes));
    if (ec == bhttp::error::bad_content_length)
      return answer_error(400,
                          "the request has a bad Content-Length header (not a number, or "
                          "several that disagree)");
    if (client_left(ec) || ec.category() == net::error::get_system_category() ||
        ec.category() == net::error::get_ssl_category())
      return close();
    answer_error(400, fmt::format("malformed request: {}", ec.message()));
  }

  // An error of the transport: answered, then the connection closed (the rest of the request
  // may still be unread).
  void answer_error(int status, std::string detail) {
    if (method_.empty() && parser_) method_ = std::string(parser_->get().method_string());
    auto res = std::make_shared<Response>();
    t_->options.error(*res, status, detail);
    keep_alive_ = false;
    route_ = {};
    write(std::move(res));
  }

  void dispatch() {
    auto req = std::make_shared<Request>();
    {
      auto msg = parser_->release();
      parser_.reset();
      keep_alive_ = msg.keep_alive();
      version_ = msg.version();
      req->method = method_;
      req->target = target_;
      const std::string_view target(target_);
      const auto q = target.find('?');
      req->path = percent_decode(target.substr(0, q), false);
      if (q != std::string_view::npos) req->params = parse_query(target.substr(q + 1));
      for (const auto& field : msg)
        req->headers.emplace(std::string(field.name_string()), std::string(field.value()));
      req->body = std::move(msg.body());
      req->remote = remote_;
      req->tls = kTls;
    }
    head_ = req->method == "HEAD";
    if (t_->options.quick && t_->options.quick(*req)) {  // here, on this I/O thread
      auto res = std::make_shared<Response>();
      route_ = t_->options.handle(*req, *res);
      req.reset();
      release_body();
      return write(std::move(res));
    }
    auto self = this->shared_from_this();
    const bool queued = t_->pool.try_post([self, req] {
      auto res = std::make_shared<Response>();
      const std::string_view route = self->t_->options.handle(*req, *res);
      req->body.clear();
      req->body.shrink_to_fit();
      self->release_body();
      net::dispatch(self->socket_.get_executor(), [self, res, route] {
        self->route_ = route;
        self->write(res);
      });
    });
    if (!queued)
      answer_error(503,
                   "the server is handling as many requests as it can (server.max_connections "
                   "at once, as many waiting); try again");
  }

  void release_body() {
    if (reserved_ == 0) return;
    t_->bodies -= reserved_;
    reserved_ = 0;
  }

  void write(std::shared_ptr<Response> res) {
    if (res->stream && res->status == 200) return start_stream(std::move(res));
    auto msg = std::make_shared<bhttp::response<bhttp::string_body>>(
        static_cast<bhttp::status>(res->status), version_ ? version_ : 11);
    fill_headers(*msg, *res);
    msg->keep_alive(keep_alive_ && !t_->stopping);
    bytes_ = res->body.size();
    if (head_) {
      msg->content_length(res->body.size());
    } else {
      msg->body() = std::move(res->body);
      msg->prepare_payload();
    }
    status_ = res->status;
    tcp().expires_after(t_->options.timeout);
    bhttp::async_write(socket_, *msg,
                       [self = this->shared_from_this(), msg](beast::error_code ec, std::size_t) {
                         self->report();
                         if (ec) return self->close();
                         if (msg->need_eof() || !self->keep_alive_) return self->linger();
                         self->read();
                       });
  }

  template <class Message>
  void fill_headers(Message& msg, const Response& res) {
    for (const auto& [name, value] : res.headers) msg.insert(name, value);
    for (const auto& [name, value] : t_->options.default_headers)
      if (!res.has_header(name)) msg.set(name, value);
  }

  void report() {
    if (!t_->options.on_exchange) return;
    Exchange e;
    e.method = method_;
    e.target = target_;
    e.route = route_;
    e.remote = remote_;
    e.status = status_;
    e.bytes = bytes_;
    e.took = Clock::now() - started_;
    t_->options.on_exchange(e);
    method_.clear();
    target_.clear();
    route_ = {};
  }

  // A stream: the header now, then each piece as a chunk, written by a thread of the stream's own;
  // a read pending meanwhile finds the client gone.
  void start_stream(std::shared_ptr<Response> res) {
    auto msg = std::make_shared<bhttp::response<bhttp::empty_body>>(bhttp::status::ok, version_);
    fill_headers(*msg, *res);
    msg->keep_alive(false);
    msg->chunked(true);
    status_ = 200;
    auto sr = std::make_shared<bhttp::response_serializer<bhttp::empty_body>>(*msg);
    tcp().expires_after(t_->options.timeout);
    bhttp::async_write_header(socket_, *sr,
                              [self = this->shared_from_this(), msg, sr, stream = res->stream](
                                  beast::error_code ec, std::size_t) {
                                if (ec) {
                                  self->report();
                                  return self->close();
                                }
                                self->tcp().expires_never();
                                self->watch_close();
                                self->t_->spawn_stream([self, stream] { self->pump(*stream); });
                              });
  }

  void watch_close() {
    socket_.async_read_some(net::buffer(sink_),
                            [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
                              if (ec) {
                                self->gone_ = true;
                                return;
                              }
                              self->watch_close();  // whatever it sends is ignored
                            });
  }

  // On the stream's thread: pieces until the stream ends, the client goes away or the server
  // stops; each write waited for at most `timeout`.
  void pump(Stream& stream) {
    while (!gone_ && !t_->stopping) {
      auto piece = stream.next();
      if (!piece || gone_) break;
      if (piece->empty()) continue;
      auto data = std::make_shared<std::string>(std::move(*piece));
      auto done = std::make_shared<std::promise<beast::error_code>>();
      auto written = done->get_future();
      net::post(socket_.get_executor(), [self = this->shared_from_this(), data, done] {
        net::async_write(self->socket_, bhttp::make_chunk(net::buffer(*data)),
                         [self, data, done](beast::error_code ec, std::size_t) {
                           self->bytes_ += data->size();
                           done->set_value(ec);
                         });
      });
      if (written.wait_for(t_->options.timeout) != std::future_status::ready || written.get())
        break;
    }
    net::post(socket_.get_executor(), [self = this->shared_from_this()] {
      self->report();
      self->close();
    });
  }

  // After a response that ends the connection: no more is sent, and what the client still sends
  // (the rest of a refused body) is read and dropped for up to 2 s, so that the client reads the
  // response instead of a reset.
  void linger() {
    beast::error_code ignored;
    tcp().socket().shutdown(tcp::socket::shutdown_send, ignored);
    tcp().expires_after(std::chrono::seconds(2));
    drain();
  }
  void drain() {
    tcp().async_read_some(net::buffer(sink_),
                          [self = this->shared_from_this()](beast::error_code ec, std::size_t) {
                            if (ec) return self->close();
                            self->drain();
                          });
  }

  void close() {
    beast::error_code ignored;
    tcp().socket().shutdown(tcp::socket::shutdown_both, ignored);
    tcp().close();
  }

  Transport::Impl* const t_;  // outlives every session (its io_context holds them)
  Socket socket_;
  const std::string remote_;
  beast::flat_buffer buffer_;
  std::optional<bhttp::request_parser<bhttp::string_body>> parser_;
  std::size_t reserved_ = 0;
  bool keep_alive_ = false, head_ = false;
  unsigned version_ = 11;
  // The exchange being served, for on_exchange.
  std::string method_, target_;
  std::string_view route_;
  int status_ = 0;
  std::size_t bytes_ = 0;
  Clock::time_point started_ = Clock::now();
  std::atomic<bool> gone_{false};
  char sink_[512];
};

}  // namespace

void Transport::Impl::accept() {
  acceptor.async_accept(net::make_strand(ioc), [self = this](beast::error_code ec,
                                                             tcp::socket socket) {
    if (ec == net::error::operation_aborted || self->stopping) return;
    if (ec) {
      // Out of file descriptors (or another passing failure): pause, so as not to spin.
      spdlog::warn("serve: accepting a connection failed: {}", ec.message());
      self->accept_pause.expires_after(std::chrono::milliseconds(100));
      self->accept_pause.async_wait([self](beast::error_code wec) {
        if (!wec) self->accept();
      });
      return;
    }
    if (self->open.load() >= self->options.max_open_connections) {
      self->refuse_over_capacity(std::move(socket));
    } else {
      beast::error_code ignored;
      socket.set_option(tcp::no_delay(true), ignored);
      const auto peer = socket.remote_endpoint(ignored);
      std::string remote = ignored ? std::string("?")
                                   : fmt::format("{}:{}", peer.address().to_string(), peer.port());
      if (self->tls) {
        std::make_shared<Session<beast::ssl_stream<beast::tcp_stream>>>(
            self, std::move(remote), std::move(socket), *self->tls)
            ->start();
      } else {
        std::make_shared<Session<beast::tcp_stream>>(self, std::move(remote), std::move(socket))
            ->start();
      }
    }
    self->accept();
  });
}

// Past max_open_connections: a short 503, written without waiting, then closed.
void Transport::Impl::refuse_over_capacity(tcp::socket socket) {
  static constexpr std::string_view kBusy =
      "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nRetry-After: 1\r\n"
      "Connection: close\r\nContent-Length: 56\r\n\r\ntoo many connections open "
      "(server.max_open_connections)\n";
  beast::error_code ignored;
  socket.non_blocking(true, ignored);
  socket.write_some(net::buffer(kBusy.data(), kBusy.size()), ignored);
  socket.shutdown(tcp::socket::shutdown_both, ignored);
  socket.close(ignored);
}

void Transport::Impl::spawn_stream(std::function<void()> body) {
  MutexLock lock(streams_mu);
  for (auto it : ended_streams) {
    it->join();
    stream_threads.erase(it);
  }
  ended_streams.clear();
  ++streams;
  stream_threads.emplace_front();
  const auto it = stream_threads.begin();
  *it = std::thread([self = this, body = std::move(body), it]() mutable {
    body();
    body = nullptr;  // the session and its Stream die here, on this thread (the slot frees)
    MutexLock done(self->streams_mu);
    self->ended_streams.push_back(it);
    --self->streams;
    self->streams_ended.notify_all();
  });
}

Transport::Transport(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Transport::~Transport() { stop(); }

Result<std::unique_ptr<Transport>> Transport::start(TransportOptions options) {
  auto impl = std::make_unique<Impl>(std::move(options));
  const TransportOptions& o = impl->options;
  if (!o.tls_cert.empty() || !o.tls_key.empty()) {
    if (o.tls_cert.empty() || o.tls_key.empty())
      return make_error(Errc::invalid_argument,
                        "server.tls_cert and server.tls_key go together: set both or neither");
    impl->tls.emplace(ssl::context::tls_server);
    auto& ctx = *impl->tls;
    ctx.set_options(ssl::context::default_workarounds | ssl::context::no_sslv2 |
                    ssl::context::no_sslv3 | ssl::context::no_tlsv1 | ssl::context::no_tlsv1_1 |
                    ssl::context::single_dh_use);
    beast::error_code ec;
    ctx.use_certificate_chain_file(o.tls_cert, ec);
    if (ec)
      return make_error(Errc::io, fmt::format("server.tls_cert {}: {}", o.tls_cert, ec.message()));
    ctx.use_private_key_file(o.tls_key, ssl::context::pem, ec);
    if (ec)
      return make_error(Errc::io, fmt::format("server.tls_key {}: {}", o.tls_key, ec.message()));
  }
  // Each open connection is a file descriptor: the soft limit (often 1024) goes up to the hard one.
  if (rlimit nofile{};
      getrlimit(RLIMIT_NOFILE, &nofile) == 0 && nofile.rlim_cur < nofile.rlim_max) {
    nofile.rlim_cur = nofile.rlim_max;
    setrlimit(RLIMIT_NOFILE, &nofile);
  }
  beast::error_code ec;
  const auto address = net::ip::make_address(o.host == "localhost" ? "127.0.0.1" : o.host, ec);
  if (ec) return make_error(Errc::io, fmt::format("cannot listen on {}: not an address", o.host));
  const tcp::endpoint endpoint(address, static_cast<unsigned short>(o.port));
  auto& acceptor = impl->acceptor;
  acceptor.open(endpoint.protocol(), ec);
  if (!ec) acceptor.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) acceptor.bind(endpoint, ec);
  if (!ec) acceptor.listen(net::socket_base::max_listen_connections, ec);
  if (ec)
    return make_error(Errc::io,
                      fmt::format("cannot listen on {}:{} ({})", o.host, o.port, ec.message()));
  impl->port = acceptor.local_endpoint().port();
  impl->accept();
  for (int i = 0; i < 2; ++i)
    impl->io_threads.emplace_back([impl = impl.get()] { impl->ioc.run(); });
  return std::unique_ptr<Transport>(new Transport(std::move(impl)));
}

int Transport::port() const noexcept { return impl_->port; }
int Transport::open_connections() const noexcept { return impl_->open.load(); }
int Transport::open_streams() const noexcept { return impl_->streams.load(); }

void Transport::stop() {
  if (!impl_ || impl_->stopping.exchange(true)) return;
  Impl& t = *impl_;
  net::post(t.ioc, [&t] {
    beast::error_code ignored;
    t.acceptor.close(ignored);
    t.accept_pause.cancel();
  });
  t.pool.shutdown();
  {
    MutexLock lock(t.streams_mu);
    while (t.streams.load() > 0) t.streams_ended.wait(lock);
    for (auto it : t.ended_streams) {
      it->join();
      t.stream_threads.erase(it);
    }
    t.ended_streams.clear();
  }
  t.ioc.stop();
  for (auto& th : t.io_threads)
    if (th.joinable()) th.join();
}

}  // namespace flowreg::detail::http
