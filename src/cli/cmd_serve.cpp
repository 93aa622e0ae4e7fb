// `modlm serve`: the OpenAI-compatible server (serve/server.h, docs/serving.md).
#include <unistd.h>

#include <cstdlib>
#include <filesystem>

#include "cli/commands.h"
#include "io/hf_llama.h"
#include "infer/decoder.h"
#include "io/model_dir.h"
#include "io/tokenizer.h"
#include "serve/server.h"
#include "util/error.h"

namespace modlm::cli {

Command add_serve(CLI::App& app) {
  struct Opts {
    std::string dir, host = "127.0.0.1", weights, kv = "f32", api_key, model_id, bos = "auto";
    int port = 8080, max_batch = 8, max_context = 0, max_queue = 64, prefill_chunk = 256;
    int64_t max_body = 1 << 20;
    double grace = 5.0;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand("serve", "Serve a model over HTTP: OpenAI-compatible completions and chat, continuous batching");
  sub->add_option("MODEL_DIR", o->dir, "model folder")->required();
  sub->add_option("--host", o->host, "address to listen on")->capture_default_str();
  sub->add_option("--port", o->port, "port to listen on, 0 = any free port (printed)")->capture_default_str();
  sub->add_option("--max-batch", o->max_batch, "sequences decoded together (decoder slots), 1..256")->capture_default_str();
  sub->add_option("--max-context", o->max_context, "tokens per sequence, prompt + completion; 0 = the model's max_seq_len")
      ->capture_default_str();
  sub->add_option("--max-queue", o->max_queue, "sequences that may wait for a slot; beyond, requests get 429, 0..4096")
      ->capture_default_str();
  sub->add_option("--prefill-chunk", o->prefill_chunk, "prompt tokens prefilled between two decode steps, 1..65536")
      ->capture_default_str();
  sub->add_option("--weights", o->weights,
                  "f32, bf16, f16 or q8: the matrices' format for decoding (default: as the folder stores them; a float "
                  "folder is converted in memory)");
  sub->add_option("--kv", o->kv, "f32, or bf16: keys and values cached in bfloat16")->check(CLI::IsMember({"f32", "bf16"}))->capture_default_str();
  sub->add_option("--bos", o->bos, "auto, on or off: the model's beginning-of-sequence token before each text prompt (as generate)")
      ->capture_default_str();
  sub->add_option("--api-key", o->api_key, "require 'Authorization: Bearer KEY' on /v1/* (default: $MODLM_API_KEY, if set)");
  sub->add_option("--model-id", o->model_id, "the model name /v1/models lists (default: the folder's name)");
  sub->add_option("--max-body", o->max_body, "largest request body in bytes (413 beyond), 1 KiB..64 MiB")->capture_default_str();
  sub->add_option("--shutdown-grace", o->grace, "on SIGTERM, seconds in-flight requests get to finish, 0..600")->capture_default_str();
  sub->footer(
      "Endpoints: POST /v1/completions, POST /v1/chat/completions (stream: true for server-sent events),\n"
      "GET /v1/models, GET /health, GET /metrics (Prometheus), GET / (a page to try prompts).\n"
      "Sequences join and leave the running batch between decode steps; long prompts prefill in chunks.\n"
      "Same prompt, seed and settings give the same tokens as `modlm generate` (sequence i of a request uses\n"
      "seed + i). SIGTERM or Ctrl-C: stop accepting, let in-flight requests finish (--shutdown-grace), exit 0.\n"
      "Example: modlm serve runs/demo/mod --port 8080 --max-batch 16\n"
      "         curl localhost:8080/v1/completions -d '{\"prompt\": \"Once upon\", \"max_tokens\": 20}'");
  return {sub, [o]() -> int {
            if (o->port < 0 || o->port > 65535) throw usage_error("--port must be in [0, 65535], got " + std::to_string(o->port));
            if (o->max_batch < 1 || o->max_batch > 256) throw usage_error("--max-batch must be in [1, 256], got " + std::to_string(o->max_batch));
            if (o->max_queue < 0 || o->max_queue > 4096) throw usage_error("--max-queue must be in [0, 4096], got " + std::to_string(o->max_queue));
            if (o->prefill_chunk < 1 || o->prefill_chunk > 65536)
              throw usage_error("--prefill-chunk must be in [1, 65536], got " + std::to_string(o->prefill_chunk));
            if (o->max_context < 0) throw usage_error("--max-context must be >= 0, got " + std::to_string(o->max_context));
            if (o->max_body < 1024 || o->max_body > (64 << 20)) throw usage_error("--max-body must be in [1024, 67108864], got " + std::to_string(o->max_body));
            if (!(o->grace >= 0 && o->grace <= 600)) throw usage_error("--shutdown-grace must be in [0, 600]");
            if (o->api_key.empty())
              if (const char* k = std::getenv("MODLM_API_KEY")) o->api_key = k;
            auto weights = infer::InferenceWeights::for_decoding(o->dir, o->weights, "--weights");
            const ModelConfig& cfg = weights->config();
            if (o->max_context > cfg.max_seq_len)
              throw usage_error("--max-context " + std::to_string(o->max_context) + " exceeds the model's max_seq_len " +
                                std::to_string(cfg.max_seq_len));
            auto tok = io::load_tokenizer(o->dir, cfg.tokenizer == "bytes");
            if (tok->vocab_size() > cfg.vocab_size)
              throw bad_input(o->dir + ": the tokenizer has " + std::to_string(tok->vocab_size()) + " ids but the model's vocab_size is " +
                              std::to_string(cfg.vocab_size));
            const int ctx = o->max_context > 0 ? o->max_context : cfg.max_seq_len;
            const double cache_bytes = 2.0 * (o->kv == "bf16" ? 2.0 : 4.0) * cfg.n_layers * o->max_batch * (double)ctx * cfg.kv_dim();
            const double phys = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGE_SIZE);
            if (phys > 0 && cache_bytes > 0.5 * phys)
              throw usage_error("the KV cache would need " + std::to_string((int64_t)(cache_bytes / (1 << 20))) +
                                " MiB (more than half the memory): lower --max-batch or --max-context");
            serve::ServerOptions so;
            so.host = o->host;
            so.bos = io::bos_to_prepend(o->dir, cfg, o->bos);
            so.port = o->port;
            so.api_key = o->api_key;
            so.model_id = o->model_id.empty() ? std::filesystem::path(o->dir).lexically_normal().filename().string() : o->model_id;
            if (so.model_id.empty()) so.model_id = std::filesystem::absolute(o->dir).lexically_normal().parent_path().filename().string();
            so.max_body = (size_t)o->max_body;
            so.shutdown_grace_s = o->grace;
            so.scheduler.max_batch = o->max_batch;
            so.scheduler.max_context = ctx;
            so.scheduler.max_queue = o->max_queue;
            so.scheduler.prefill_chunk = o->prefill_chunk;
            so.scheduler.kv = o->kv == "bf16" ? infer::KvFormat::BF16 : infer::KvFormat::F32;
            return serve::run_server(weights, *tok, so);
          }};
}

}  // namespace modlm::cli
