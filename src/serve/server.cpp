#include "serve/server.h"

#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>

#include <chrono>
#include <cstdio>
#include <random>
#include <sstream>
#include <thread>

#include <httplib.h>

#include "serve/api.h"
#include "util/error.h"

namespace modlm::serve {

namespace {

int64_t unix_now() {
  return std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
}

std::string dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

void send_error(httplib::Response& res, int status, const std::string& msg, const std::string& type, const std::string& code,
                const std::string& param = "") {
  res.status = status;
  res.set_content(error_body(msg, type, code, param), "application/json");
}

std::string random_id(const char* prefix) {
  static std::mutex mu;
  static std::mt19937_64 rng(std::random_device{}());
  std::lock_guard<std::mutex> lk(mu);
  char buf[40];
  std::snprintf(buf, sizeof buf, "%s%016llx", prefix, (unsigned long long)rng());
  return buf;
}

uint64_t random_seed() {
  static std::mutex mu;
  static std::mt19937_64 rng(std::random_device{}());
  std::lock_guard<std::mutex> lk(mu);
  return rng() >> 2;
}

// What a handler builds its answer from.
struct Context {
  const ModelConfig& cfg;
  const io::Tokenizer& tok;
  const ServerOptions& opt;
  Scheduler& sched;
  std::mutex tok_mu;  // encode from several handler threads, one at a time
  std::atomic<int64_t> http_errors{0};
  // Generation responses admitted and not yet written out: shutdown waits for them, so a
  // request that finished in the grace period reaches its client whole.
  std::atomic<int> open_responses{0};
};

json usage_json(const Request& r, int64_t prompt_tokens) {
  int64_t completion = 0;
  for (const auto& s : r.seqs) completion += s.completion_tokens;
  return json{{"prompt_tokens", prompt_tokens}, {"completion_tokens", completion}, {"total_tokens", prompt_tokens + completion}};
}

void handle_generation(Context& C, const httplib::Request& req, httplib::Response& res, bool chat) {
  GenerationRequest g;
  Limits lim;
  lim.vocab_size = C.cfg.vocab_size;
  lim.max_context = C.sched.max_context();
  lim.max_sequences = std::max(1, C.opt.scheduler.max_batch + C.opt.scheduler.max_queue);
  lim.max_prompt_chars = C.opt.max_body;
  lim.bos = C.opt.bos;
  try {
    std::lock_guard<std::mutex> lk(C.tok_mu);
    g = parse_request(req.body, chat, C.tok, lim);
  } catch (const ApiError& e) {
    ++C.http_errors;
    return send_error(res, e.status, e.what(), e.type, e.code, e.param);
  }
  auto R = std::make_shared<Request>();
  int64_t prompt_tokens = 0;
  const uint64_t base = g.seed_given ? g.seed : random_seed();
  for (const auto& p : g.prompts) {
    prompt_tokens += (int64_t)p.size();
    for (int c = 0; c < g.n; ++c) {
      SeqJob s;
      s.prompt = p;
      s.params = g.params;
      s.seed = base + (uint64_t)R->seqs.size();  // sequence i: seed + i, as `modlm generate` seeds prompt i
      s.max_tokens = g.max_tokens;
      s.stop = g.stop;
      R->seqs.push_back(std::move(s));
    }
  }
  if (!C.sched.submit(R)) {
    ++C.http_errors;
    if (C.sched.shutting_down())
      return send_error(res, 503, "the server is shutting down", "server_error", "shutting_down");
    res.set_header("Retry-After", "1");
    return send_error(res, 429,
                      "the server is busy: its " + std::to_string(C.opt.scheduler.max_batch) + " slots and queue of " +
                          std::to_string(C.opt.scheduler.max_queue) + " sequences are full; retry later",
                      "server_error", "server_busy");
  }
  ++C.open_responses;
  std::atomic<int>* open = &C.open_responses;
  const std::string id = random_id(chat ? "chatcmpl-" : "cmpl-");
  const int64_t created = unix_now();
  const std::string model = C.opt.model_id;

  if (!g.stream) {
    std::unique_lock<std::mutex> lk(R->mu);
    R->cv.wait(lk, [&] { return R->all_done(); });
    json choices = json::array();
    for (size_t i = 0; i < R->seqs.size(); ++i) {
      const SeqJob& s = R->seqs[i];
      if (chat)
        choices.push_back({{"index", i}, {"message", {{"role", "assistant"}, {"content", s.text}}}, {"logprobs", nullptr},
                           {"finish_reason", s.finish_reason}});
      else
        choices.push_back({{"index", i}, {"text", s.text}, {"logprobs", nullptr}, {"finish_reason", s.finish_reason}});
    }
    json out{{"id", id},         {"object", chat ? "chat.completion" : "text_completion"},
             {"created", created}, {"model", model},
             {"choices", choices}, {"usage", usage_json(*R, prompt_tokens)}};
    // Through a provider, so that the end of the write is known (open_responses).
    auto body = std::make_shared<std::string>(dump(out));
    res.set_content_provider(
        body->size(), "application/json",
        [body](size_t offset, size_t length, httplib::DataSink& sink) { return sink.write(body->data() + offset, length); },
        [open](bool) { --*open; });
    return;
  }

  // Server-sent events: one "data: {chunk}\n\n" per piece of text, then "data: [DONE]".
  struct StreamState {
    std::vector<bool> opened, closed;
    bool finished = false;
  };
  auto st = std::make_shared<StreamState>();
  st->opened.assign(R->seqs.size(), false);
  st->closed.assign(R->seqs.size(), false);
  const bool include_usage = g.include_usage;
  auto chunk_of = [=](const json& choices) {
    return json{{"id", id}, {"object", chat ? "chat.completion.chunk" : "text_completion"}, {"created", created}, {"model", model},
                {"choices", choices}};
  };
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");
  res.set_chunked_content_provider(
      "text/event-stream",
      [R, st, chat, include_usage, chunk_of, prompt_tokens](size_t, httplib::DataSink& sink) {
        std::string out;
        {
          std::unique_lock<std::mutex> lk(R->mu);
          auto has_news = [&] {
            for (size_t i = 0; i < R->seqs.size(); ++i) {
              const SeqJob& s = R->seqs[i];
              if (s.taken < s.text.size() || (s.done && !st->closed[i])) return true;
            }
            return false;
          };
          R->cv.wait_for(lk, std::chrono::milliseconds(200), has_news);
          for (size_t i = 0; i < R->seqs.size(); ++i) {
            SeqJob& s = R->seqs[i];
            if (chat && !st->opened[i] && (s.taken < s.text.size() || s.done)) {
              st->opened[i] = true;
              out += "data: " +
                     dump(chunk_of(json::array({{{"index", i}, {"delta", {{"role", "assistant"}, {"content", ""}}}, {"logprobs", nullptr},
                                                 {"finish_reason", nullptr}}}))) +
                     "\n\n";
            }
            if (s.taken < s.text.size()) {
              const std::string piece = s.text.substr(s.taken);
              s.taken = s.text.size();
              json c = chat ? json{{"index", i}, {"delta", {{"content", piece}}}, {"logprobs", nullptr}, {"finish_reason", nullptr}}
                            : json{{"index", i}, {"text", piece}, {"logprobs", nullptr}, {"finish_reason", nullptr}};
              out += "data: " + dump(chunk_of(json::array({c}))) + "\n\n";
            }
            if (s.done && !st->closed[i]) {
              st->closed[i] = true;
              json c = chat ? json{{"index", i}, {"delta", json::object()}, {"logprobs", nullptr}, {"finish_reason", s.finish_reason}}
                            : json{{"index", i}, {"text", ""}, {"logprobs", nullptr}, {"finish_reason", s.finish_reason}};
              out += "data: " + dump(chunk_of(json::array({c}))) + "\n\n";
            }
          }
          if (R->all_done() && !st->finished) {
            st->finished = true;
            if (include_usage) {
              json u = chunk_of(json::array());
              u["usage"] = usage_json(*R, prompt_tokens);
              out += "data: " + dump(u) + "\n\n";
            }
            out += "data: [DONE]\n\n";
          }
        }
        if (!out.empty() && !sink.write(out.data(), out.size())) {
          R->cancelled = true;  // the client went away: its slots are freed at the next step
          return false;
        }
        if (!sink.is_writable()) {
          R->cancelled = true;
          return false;
        }
        if (st->finished) sink.done();
        return true;
      },
      [R, open](bool success) {
        if (!success) R->cancelled = true;
        --*open;
      });
}

std::string metrics_text(Context& C) {
  const SchedulerStats s = C.sched.stats();
  std::ostringstream o;
  auto metric = [&](const char* name, const char* type, const char* help, double v) {
    o << "# HELP " << name << ' ' << help << "\n# TYPE " << name << ' ' << type << '\n' << name << ' ' << v << '\n';
  };
  metric("modlm_requests_total", "counter", "Requests accepted for generation.", (double)s.requests);
  metric("modlm_requests_rejected_total", "counter", "Requests refused because the queue was full or the server stopping.",
         (double)s.rejected);
  metric("modlm_request_errors_total", "counter", "Requests answered with an error status.", (double)C.http_errors.load());
  metric("modlm_sequences_total", "counter", "Sequences (prompts x n) accepted.", (double)s.sequences);
  metric("modlm_sequences_cancelled_total", "counter", "Sequences cancelled (client gone, or shutdown).", (double)s.cancelled);
  metric("modlm_prompt_tokens_total", "counter", "Prompt tokens prefilled.", (double)s.prompt_tokens);
  metric("modlm_generated_tokens_total", "counter", "Tokens generated.", (double)s.generated_tokens);
  metric("modlm_generated_tokens_per_second", "gauge", "Tokens generated per second over the last 10 s.", s.tokens_per_second);
  metric("modlm_queue_length", "gauge", "Sequences waiting for a decoder slot.", (double)s.queued);
  metric("modlm_active_sequences", "gauge", "Sequences holding a decoder slot.", (double)s.active);
  metric("modlm_max_batch", "gauge", "Decoder slots.", (double)s.max_batch);
  metric("modlm_batch_occupancy", "gauge", "Mean sequences per decode step over max_batch, since start.",
         s.decode_steps ? (double)s.step_rows / ((double)s.decode_steps * s.max_batch) : 0.0);
  metric("modlm_decode_steps_total", "counter", "Decode steps run.", (double)s.decode_steps);
  metric("modlm_decode_seconds_total", "counter", "Seconds spent in decode steps.", s.step_seconds);
  metric("modlm_prefill_seconds_total", "counter", "Seconds spent in prefill chunks.", s.prefill_seconds);
  metric("modlm_kv_cache_bytes", "gauge", "Bytes of keys and values cached for the sequences in flight.", (double)s.kv_bytes);
  metric("modlm_weight_bytes_read_per_token", "gauge", "Weight bytes the decode steps read per generated token, since start.",
         s.step_rows ? s.step_weight_bytes / (double)s.step_rows : 0.0);
  o << "# HELP modlm_routed_layer_processed_fraction Fraction of decode rows a routed layer's block processed, since start.\n"
    << "# TYPE modlm_routed_layer_processed_fraction gauge\n";
  for (size_t j = 0; j < s.routed_layers.size(); ++j)
    o << "modlm_routed_layer_processed_fraction{layer=\"" << s.routed_layers[j] << "\"} "
      << (s.step_rows ? (double)s.routed_processed[j] / (double)s.step_rows : 0.0) << '\n';
  return o.str();
}

}  // namespace

struct HttpServer::Impl {
  Impl(std::shared_ptr<const infer::InferenceWeights> weights, const io::Tokenizer& tok, const ServerOptions& o)
      : opt(o), sched(weights, tok, opt.scheduler), C{weights->config(), tok, opt, sched, {}, {0}, {0}} {
    setup();
  }
  void setup();
  ServerOptions opt;
  Scheduler sched;
  Context C;
  httplib::Server svr;
  int port = 0;
  int listen_fd = -1;  // the listening socket, seen through set_socket_options
};

void HttpServer::Impl::setup() {
  // Handlers run on the server's threads while this Impl lives: they capture `this` only.
  const int threads = opt.scheduler.max_batch + opt.scheduler.max_queue + 8;
  svr.new_task_queue = [threads] { return new httplib::ThreadPool((size_t)threads); };
  svr.set_payload_max_length(opt.max_body);
  svr.set_read_timeout(30);
  svr.set_write_timeout(30);

  svr.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (!opt.api_key.empty() && req.path.rfind("/v1/", 0) == 0 && req.get_header_value("Authorization") != "Bearer " + opt.api_key) {
      ++C.http_errors;
      send_error(res, 401,
                 req.has_header("Authorization") ? "incorrect API key" : "no API key: send the header 'Authorization: Bearer KEY'",
                 "invalid_request_error", "invalid_api_key");
      return httplib::Server::HandlerResponse::Handled;
    }
    return httplib::Server::HandlerResponse::Unhandled;
  });
  svr.set_error_handler(httplib::Server::HandlerWithResponse([this](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
    ++C.http_errors;
    std::string msg = "HTTP " + std::to_string(res.status);
    std::string code;
    if (res.status == 404) msg = "no such endpoint: " + req.method + " " + req.path, code = "not_found";
    else if (res.status == 405) msg = "method not allowed", code = "method_not_allowed";
    else if (res.status == 413) msg = "the request body exceeds the server's limit of " + std::to_string(opt.max_body) + " bytes", code = "payload_too_large";
    else if (res.status == 400) msg = "malformed HTTP request", code = "bad_request";
    res.set_content(error_body(msg, res.status >= 500 ? "server_error" : "invalid_request_error", code), "application/json");
    return httplib::Server::HandlerResponse::Handled;
  }));
  svr.set_exception_handler([this](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    std::string what = "internal error";
    try {
      if (ep) std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      what = e.what();
    } catch (...) {
    }
    ++C.http_errors;
    send_error(res, 500, what, "server_error", "internal_error");
  });

  svr.Get("/", [](const httplib::Request&, httplib::Response& res) { res.set_content(kWebPage, "text/html; charset=utf-8"); });
  svr.Get("/health", [this](const httplib::Request&, httplib::Response& res) {
    if (sched.shutting_down()) {
      res.status = 503;
      res.set_content(R"({"status":"shutting_down"})", "application/json");
    } else {
      res.set_content(R"({"status":"ok"})", "application/json");
    }
  });
  const json model_obj{{"id", opt.model_id}, {"object", "model"}, {"created", unix_now()}, {"owned_by", "modlm"}};
  svr.Get("/v1/models", [this, model_obj](const httplib::Request&, httplib::Response& res) {
    res.set_content(dump(json{{"object", "list"}, {"data", json::array({model_obj})}}), "application/json");
  });
  svr.Get("/v1/models/(.+)", [this, model_obj](const httplib::Request& req, httplib::Response& res) {
    if (req.matches[1] != opt.model_id)
      return send_error(res, 404, "no model '" + std::string(req.matches[1]) + "' (this server serves '" + opt.model_id + "')",
                        "invalid_request_error", "model_not_found");
    res.set_content(dump(model_obj), "application/json");
  });
  svr.Post("/v1/completions", [this](const httplib::Request& req, httplib::Response& res) { handle_generation(C, req, res, false); });
  svr.Post("/v1/chat/completions", [this](const httplib::Request& req, httplib::Response& res) { handle_generation(C, req, res, true); });
  svr.Get("/metrics", [this](const httplib::Request&, httplib::Response& res) {
    res.set_content(metrics_text(C), "text/plain; version=0.0.4");
  });

}

HttpServer::HttpServer(std::shared_ptr<const infer::InferenceWeights> weights, const io::Tokenizer& tok, const ServerOptions& opt)
    : impl_(std::make_unique<Impl>(std::move(weights), tok, opt)) {}
HttpServer::~HttpServer() { stop(std::chrono::milliseconds(0)); }
Scheduler& HttpServer::scheduler() { return impl_->sched; }

int HttpServer::bind() {
  const ServerOptions& opt = impl_->opt;
  httplib::Server& svr = impl_->svr;
  int port = opt.port;
  // cpp-httplib listens with a backlog of 5: a burst of clients connecting at once overflows it
  // and some connections are reset. Calling listen() again on the bound socket raises it (Linux).
  int& fd = impl_->listen_fd;
  svr.set_socket_options([&fd](socket_t sock) {
    int yes = 1;
    setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof yes);
    fd = sock;
  });
  if (port == 0) {
    port = svr.bind_to_any_port(opt.host);
    if (port <= 0) throw io_error("cannot listen on " + opt.host + " (any port)");
  } else if (!svr.bind_to_port(opt.host, port)) {
    throw io_error("cannot listen on " + opt.host + ":" + std::to_string(port) + " (in use, or not an address of this machine)");
  }

  if (fd >= 0) ::listen(fd, SOMAXCONN);
  impl_->port = port;
  return port;
}

bool HttpServer::run() { return impl_->svr.listen_after_bind(); }

void HttpServer::stop(std::chrono::milliseconds grace) {
  impl_->sched.shutdown(grace);
  // The sequences are over; let their responses finish writing (bounded: a client that stopped
  // reading cannot hold the server) before the sockets close.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (impl_->C.open_responses.load() > 0 && std::chrono::steady_clock::now() < deadline)
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  impl_->svr.stop();
}

int run_server(std::shared_ptr<const infer::InferenceWeights> weights, const io::Tokenizer& tok, const ServerOptions& opt) {
  // SIGTERM/SIGINT go to one waiting thread (sigwait), not to whichever thread runs: block them
  // before any thread exists so every thread inherits the mask.
  sigset_t sigs;
  sigemptyset(&sigs);
  sigaddset(&sigs, SIGTERM);
  sigaddset(&sigs, SIGINT);
  sigaddset(&sigs, SIGUSR1);
  pthread_sigmask(SIG_BLOCK, &sigs, nullptr);
  signal(SIGPIPE, SIG_IGN);  // a client that hangs up must not kill the server

  HttpServer server(std::move(weights), tok, opt);
  const int port = server.bind();
  Scheduler& sched = server.scheduler();
  std::thread signals([&] {
    int sig = 0;
    sigwait(&sigs, &sig);
    if (sig == SIGUSR1) return;  // the server ended on its own
    std::fprintf(stderr, "modlm serve: %s: finishing in-flight requests (up to %.0f s), then exiting\n",
                 sig == SIGTERM ? "SIGTERM" : "SIGINT", opt.shutdown_grace_s);
    server.stop(std::chrono::milliseconds((int64_t)(opt.shutdown_grace_s * 1000)));
  });
  std::printf("modlm serve: listening on http://%s:%d (model %s, %d slots of %d tokens)\n", opt.host.c_str(), port,
              opt.model_id.c_str(), opt.scheduler.max_batch, sched.max_context());
  std::fflush(stdout);
  const bool ok = server.run();
  pthread_kill(signals.native_handle(), SIGUSR1);
  signals.join();
  sched.shutdown(std::chrono::milliseconds(0));
  if (!ok && !sched.shutting_down()) throw io_error("the server stopped listening");
  std::fprintf(stderr, "modlm serve: stopped\n");
  return 0;
}

}  // namespace modlm::serve
