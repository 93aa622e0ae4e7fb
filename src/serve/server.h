// `modlm serve`: the HTTP side (cpp-httplib) of the OpenAI-compatible server. Requests are
// parsed by serve/api.h and handed to the Scheduler (serve/scheduler.h), whose one thread owns
// the decoder; handler threads only wait for text and write it out. docs/serving.md has the API.
#pragma once
#include <chrono>
#include <memory>
#include <string>

#include "io/tokenizer.h"
#include "infer/weights.h"
#include "model/model.h"
#include "serve/scheduler.h"

namespace modlm::serve {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8080;                 // 0: any free port (the one taken is printed)
  std::string api_key;             // non-empty: /v1/* needs "Authorization: Bearer KEY"
  std::string model_id;            // the name /v1/models lists
  size_t max_body = 1 << 20;       // request bodies beyond this get 413
  double shutdown_grace_s = 5.0;   // on SIGTERM: seconds in-flight requests get to finish
  int32_t bos = -1;                // >= 0: prepended to text prompts (io::bos_to_prepend)
  SchedulerOptions scheduler;
};

// The server without signal handling (run_server adds it; benchmarks embed this).
class HttpServer {
 public:
  HttpServer(std::shared_ptr<const infer::InferenceWeights> weights, const io::Tokenizer& tok, const ServerOptions& opt);
  ~HttpServer();
  int bind();  // binds opt.host:opt.port (0 = any free port) and returns the port; io_error if it cannot
  bool run();  // serves until stop(); false if listening failed
  // Stops admitting, gives in-flight sequences `grace`, then stops listening (run() returns).
  void stop(std::chrono::milliseconds grace);
  Scheduler& scheduler();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Serves until SIGTERM or SIGINT, then finishes or cancels what is in flight and returns 0.
// Prints "modlm serve: listening on http://HOST:PORT" (stdout, flushed) once it accepts.
int run_server(std::shared_ptr<const infer::InferenceWeights> weights, const io::Tokenizer& tok, const ServerOptions& opt);

// The page GET / serves (serve/web_page.cpp): a prompt box that streams tokens as they come.
extern const char* const kWebPage;

}  // namespace modlm::serve
