// `modlm generate MODEL_DIR --prompt TEXT ...`: text generation with a KV cache, streamed to
// stdout as it is produced; MoD models decide causally (SPEC §2), layer by layer, token by token.
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <iostream>
#include <iterator>
#include <sstream>

#include "cli/commands.h"
#include "infer/decoder.h"
#include "infer/sampler.h"
#include "infer/text_stream.h"
#include "io/hf_llama.h"
#include "io/model_dir.h"
#include "io/tokenizer.h"
#include "util/error.h"
#include "util/fs.h"

namespace modlm::cli {

namespace {

using clk = std::chrono::steady_clock;
double seconds_since(clk::time_point t) { return std::chrono::duration<double>(clk::now() - t).count(); }

// A prompt is at most this many bytes: no tokenizer here makes fewer tokens than bytes / 64, so
// anything larger is far beyond every model's context; it is refused before it is read whole.
constexpr size_t kMaxPromptBytes = 16u << 20;
constexpr size_t kMaxPromptsFileBytes = 256u << 20;

std::string read_stdin() {
  std::string s;
  char buf[1 << 16];
  while (std::cin.read(buf, sizeof buf) || std::cin.gcount() > 0) {
    s.append(buf, (size_t)std::cin.gcount());
    if (s.size() > kMaxPromptBytes)
      throw bad_input("the prompt on stdin exceeds the limit of " + std::to_string(kMaxPromptBytes) + " bytes");
  }
  if (std::cin.bad()) throw io_error("cannot read the prompt from stdin");
  return s;
}

std::string dump(const json& j, int indent = -1) { return j.dump(indent, ' ', false, json::error_handler_t::replace); }

struct SeqResult {
  std::string prompt;
  std::vector<int32_t> prompt_ids, ids;
  std::string text;
  std::string stop_reason;
  std::vector<std::vector<infer::RouteRecord>> routes;  // per token (prompt, then generated) x routed layer
};

}  // namespace

Command add_generate(CLI::App& app) {
  struct Opts {
    std::string dir, prompt, prompt_file, prompts_file, trace, weights, kv = "f32", bos = "auto";
    int64_t max_new = 128;
    double temperature = 1.0, top_p = 1.0;
    int top_k = 0, batch = 8;
    uint64_t seed = 0;
    bool greedy = false, json_out = false;
    CLI::Option* prompt_opt = nullptr;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand("generate", "Generate text with a KV cache (streams to stdout)");
  sub->add_option("MODEL_DIR", o->dir, "model folder")->required();
  o->prompt_opt = sub->add_option("--prompt", o->prompt, "prompt text; \"-\" reads it from stdin");
  sub->add_option("--prompt-file", o->prompt_file, "read the prompt from this file (verbatim)");
  sub->add_option("--prompts-file", o->prompts_file, "one prompt per line, decoded as a batch (empty lines are skipped)");
  sub->add_option("--max-new", o->max_new, "tokens to generate per prompt, 0..1000000")->capture_default_str();
  sub->add_option("--temperature", o->temperature, "sampling temperature >= 0; 0 = greedy")->capture_default_str();
  sub->add_option("--top-k", o->top_k, "sample among the K most likely tokens; 0 = off, 1 = greedy")->capture_default_str();
  sub->add_option("--top-p", o->top_p, "nucleus sampling: smallest set of tokens with probability >= P, in (0, 1]; 1 = off")
      ->capture_default_str();
  sub->add_option("--seed", o->seed, "sampling seed (prompt i of a batch uses seed + i)")->capture_default_str();
  sub->add_flag("--greedy", o->greedy, "always take the most likely token (argmax)");
  sub->add_option("--batch", o->batch, "with --prompts-file: sequences decoded together, 1..256")->capture_default_str();
  sub->add_option("--trace", o->trace, "write a JSON trace: every token and, per routed layer, its routing decision");
  sub->add_option("--weights", o->weights,
                  "f32, bf16, f16 or q8: the matrices' format for decoding (default: as the folder stores them; a float "
                  "folder is converted in memory, a quantized one decodes as stored)");
  sub->add_option("--bos", o->bos,
                  "auto, on or off: put the model's beginning-of-sequence token before each prompt (auto: an imported "
                  "HF model's bos_token_id unless its tokenizer_config.json says add_bos_token false)")
      ->capture_default_str();
  sub->add_option("--kv", o->kv,
                  "f32, or bf16: keys and values cached in bfloat16, half the bytes per past token (long contexts)")
      ->check(CLI::IsMember({"f32", "bf16"}))
      ->capture_default_str();
  sub->add_flag("--json", o->json_out, "print one JSON object (ids, text, rates, KV cache, routing) instead of streaming");
  sub->footer(
      "The prompt comes from --prompt, --prompt-file, --prompts-file, or stdin (--prompt - , or no prompt flag\n"
      "with stdin not a terminal). An empty prompt is an error (exit 2): these tokenizers have no BOS token, so\n"
      "there is nothing to condition the first token on. Prompts are used verbatim (a trailing newline counts).\n"
      "Sampling: --greedy = argmax (ties go to the lower token id); --temperature 0 and --top-k 1 are greedy too;\n"
      "otherwise p ~ exp(logit / T), restricted to the top-k logits, then to the smallest prefix (by logit) whose\n"
      "probability reaches top-p (at least one token is kept). Same seed, same output.\n"
      "A sequence (prompt + generated) never exceeds the model's max_seq_len: generation stops there with a\n"
      "message; a longer prompt is an error (exit 3), and so is a prompt file or stdin over 16 MiB. Routed (MoD) layers process a token iff its decision\n"
      "probability (the predictor's, or sigmoid of the router logit) is > 0.5, and cache only those tokens.\n"
      "Human output: the continuation on stdout (a batch: each after a \"--- [i] ---\" line), rates on stderr.\n"
      "Examples: modlm generate m --prompt 'Once upon a time' --max-new 200 --temperature 0.8 --top-p 0.95\n"
      "          modlm generate m --prompts-file prompts.txt --greedy --json");
  return {sub, [o]() -> int {
            // Flags first: every usage error before any file is read.
            infer::SamplingParams sp;
            sp.greedy = o->greedy;
            sp.temperature = o->temperature;
            sp.top_k = o->top_k;
            sp.top_p = o->top_p;
            infer::validate(sp);
            if (o->max_new < 0 || o->max_new > 1000000) throw usage_error("--max-new must be in [0, 1000000], got " + std::to_string(o->max_new));
            if (o->batch < 1 || o->batch > 256) throw usage_error("--batch must be in [1, 256], got " + std::to_string(o->batch));
            const bool has_prompt = o->prompt_opt->count() > 0;
            const int sources = (int)has_prompt + (int)!o->prompt_file.empty() + (int)!o->prompts_file.empty();
            if (sources > 1) throw usage_error("give only one of --prompt, --prompt-file, --prompts-file");

            std::vector<std::string> prompts;
            if (!o->prompts_file.empty()) {
              std::istringstream in(read_text_file(o->prompts_file, kMaxPromptsFileBytes));
              for (std::string line; std::getline(in, line);) {
                if (!line.empty() && line.back() == '\r') line.pop_back();
                if (!line.empty()) prompts.push_back(line);
              }
              if (prompts.empty()) throw usage_error(o->prompts_file + ": no prompts (one per line, empty lines are skipped)");
            } else if (!o->prompt_file.empty()) {
              prompts.push_back(read_text_file(o->prompt_file, kMaxPromptBytes));
            } else if (has_prompt && o->prompt != "-") {
              prompts.push_back(o->prompt);
            } else if (has_prompt || !isatty(0)) {
              prompts.push_back(read_stdin());
            } else {
              throw usage_error("no prompt: give --prompt TEXT, --prompt-file FILE, --prompts-file FILE, or pipe it on stdin");
            }
            for (const auto& p : prompts)
              if (p.empty())
                throw usage_error("the prompt is empty: the tokenizer has no beginning-of-text token, so give at least one character");

            auto weights = infer::InferenceWeights::for_decoding(o->dir, o->weights, "--weights");
            const ModelConfig& cfg = weights->config();
            auto tok = io::load_tokenizer(o->dir, cfg.tokenizer == "bytes");
            const int32_t bos = io::bos_to_prepend(o->dir, cfg, o->bos);
            if (tok->vocab_size() > cfg.vocab_size)
              throw bad_input(o->dir + ": the tokenizer has " + std::to_string(tok->vocab_size()) +
                              " ids but the model's vocab_size is " + std::to_string(cfg.vocab_size));
            const int P = (int)prompts.size(), V = cfg.vocab_size, D = cfg.d_model;
            std::vector<SeqResult> seqs(P);
            int max_prompt = 0;
            for (int i = 0; i < P; ++i) {
              seqs[i].prompt = prompts[i];
              seqs[i].prompt_ids = tok->encode(prompts[i]);
              if (bos >= 0) seqs[i].prompt_ids.insert(seqs[i].prompt_ids.begin(), bos);
              const int n = (int)seqs[i].prompt_ids.size();
              if (n == 0) throw usage_error("the prompt encodes to no tokens");
              if (n > cfg.max_seq_len)
                throw bad_input((P > 1 ? "prompt " + std::to_string(i) + " has " : std::string("the prompt has ")) + std::to_string(n) +
                                " tokens, more than the model's max_seq_len " + std::to_string(cfg.max_seq_len));
              max_prompt = std::max(max_prompt, n);
            }
            const int max_len = (int)std::min<int64_t>(cfg.max_seq_len, max_prompt + o->max_new);
            const int B = std::min(P, o->batch);
            const double kv_elem = o->kv == "bf16" ? 2.0 : 4.0;
            const double cache_bytes = 2.0 * kv_elem * cfg.n_layers * B * (double)max_len * cfg.kv_dim();
            const double phys = (double)sysconf(_SC_PHYS_PAGES) * (double)sysconf(_SC_PAGE_SIZE);
            if (phys > 0 && cache_bytes > 0.5 * phys)
              throw usage_error("the KV cache would need " + std::to_string((int64_t)(cache_bytes / (1 << 20))) +
                                " MiB (more than half the memory): lower --batch or --max-new");

            infer::Decoder dec(weights, B, max_len, o->kv == "bf16" ? infer::KvFormat::BF16 : infer::KvFormat::F32);
            const std::vector<int>& routed = dec.routed_layers();
            const int R = (int)routed.size();
            const bool stream = !o->json_out && P == 1;
            const bool want_trace = !o->trace.empty();
            double prefill_s = 0, decode_s = 0;
            int64_t prompt_tokens = 0, generated_tokens = 0, steps = 0;
            std::vector<int64_t> kv_layer_bytes(cfg.n_layers, 0), kv_layer_tokens(cfg.n_layers, 0);
            std::vector<int64_t> proc_prompt(R, 0), proc_gen(R, 0);
            bool hit_limit = false;

            for (int c0 = 0; c0 < P; c0 += B) {
              const int nb = std::min(B, P - c0);
              std::vector<std::vector<int32_t>> batch_prompts;
              for (int i = 0; i < nb; ++i) batch_prompts.push_back(seqs[c0 + i].prompt_ids);
              auto t0 = clk::now();
              dec.prefill(batch_prompts);
              prefill_s += seconds_since(t0);
              for (int i = 0, row = 0; i < nb; ++i) {
                SeqResult& s = seqs[c0 + i];
                prompt_tokens += (int64_t)s.prompt_ids.size();
                for (size_t t = 0; t < s.prompt_ids.size(); ++t, ++row) {
                  std::vector<infer::RouteRecord> rr(R);
                  for (int j = 0; j < R; ++j) {
                    rr[j] = dec.route(row, j);
                    proc_prompt[j] += rr[j].processed;
                  }
                  if (want_trace) s.routes.push_back(std::move(rr));
                }
              }
              std::vector<infer::Sampler> samplers;
              std::vector<infer::TextStream> streams;
              std::vector<int> active, row_of(nb, -1);
              for (int i = 0; i < nb; ++i) {
                samplers.emplace_back(sp, o->seed + (uint64_t)(c0 + i));
                streams.emplace_back(*tok);
                row_of[i] = i;
                if (o->max_new == 0) seqs[c0 + i].stop_reason = "max_new";
                else if (dec.length(i) >= max_len) seqs[c0 + i].stop_reason = "max_seq_len";
                else active.push_back(i);
              }
              auto td = clk::now();
              std::vector<int32_t> toks;
              while (!active.empty()) {
                toks.clear();
                for (int i : active) {
                  const int32_t t = samplers[i].sample(dec.logits(row_of[i]), V);
                  toks.push_back(t);
                  seqs[c0 + i].ids.push_back(t);
                  if (stream) {
                    std::string piece = streams[i].push(t);
                    if (!piece.empty()) {
                      std::fwrite(piece.data(), 1, piece.size(), stdout);
                      std::fflush(stdout);
                    }
                  }
                }
                // Every generated token is fed, so its routing is known and the cache ends holding the
                // whole sequence.
                dec.step(active, toks);
                ++steps;
                generated_tokens += (int64_t)active.size();
                std::vector<int> next;
                for (size_t r = 0; r < active.size(); ++r) {
                  const int i = active[r];
                  SeqResult& s = seqs[c0 + i];
                  std::vector<infer::RouteRecord> rr(R);
                  for (int j = 0; j < R; ++j) {
                    rr[j] = dec.route((int)r, j);
                    proc_gen[j] += rr[j].processed;
                  }
                  if (want_trace) s.routes.push_back(std::move(rr));
                  row_of[i] = (int)r;
                  if ((int64_t)s.ids.size() >= o->max_new) s.stop_reason = "max_new";
                  else if (dec.length(i) >= max_len) s.stop_reason = "max_seq_len", hit_limit = true;
                  else next.push_back(i);
                }
                active.swap(next);
              }
              decode_s += seconds_since(td);
              for (int i = 0; i < nb; ++i) {
                seqs[c0 + i].text = tok->decode(seqs[c0 + i].ids);
                if (seqs[c0 + i].stop_reason == "max_seq_len" && o->max_new > 0) hit_limit = true;
                if (stream) {
                  std::string rest = streams[i].finish();
                  std::fwrite(rest.data(), 1, rest.size(), stdout);
                  if (isatty(1)) std::fputc('\n', stdout);
                  std::fflush(stdout);
                }
              }
              for (int l = 0; l < cfg.n_layers; ++l) {
                kv_layer_bytes[l] += (int64_t)dec.cache().bytes_used(l);
                for (int i = 0; i < nb; ++i) kv_layer_tokens[l] += dec.cache().count(l, i);
              }
            }

            const double prefill_rate = prefill_s > 0 ? prompt_tokens / prefill_s : 0;
            const double decode_rate = decode_s > 0 ? generated_tokens / decode_s : 0;
            if (hit_limit)
              std::fprintf(stderr, "modlm: generation stopped at the model's max_seq_len (%d tokens per sequence)\n", cfg.max_seq_len);
            int64_t kv_total = 0, seq_tokens = prompt_tokens + generated_tokens;
            for (auto b : kv_layer_bytes) kv_total += b;
            const int64_t dense_layer_bytes = seq_tokens * 2 * (int64_t)D * (int64_t)dec.cache().element_bytes();

            if (want_trace) {
              json t{{"model", o->dir}, {"routed_layers", routed},
                     {"decision", cfg.routing.causal == "predictor" ? "predictor" : "router"}};
              json js = json::array();
              for (int i = 0; i < P; ++i) {
                const SeqResult& s = seqs[i];
                json toks = json::array();
                const size_t np = s.prompt_ids.size();
                for (size_t k = 0; k < np + s.ids.size(); ++k) {
                  const int32_t id = k < np ? s.prompt_ids[k] : s.ids[k - np];
                  json e{{"position", k}, {"id", id}, {"piece", tok->decode({id})}, {"generated", k >= np}};
                  if (R > 0) {
                    json rl = json::array();
                    for (int j = 0; j < R && k < s.routes.size(); ++j) {
                      const auto& rr = s.routes[k][j];
                      rl.push_back({{"layer", routed[j]}, {"processed", rr.processed}, {"router_logit", rr.router_logit},
                                    {"gate", rr.gate}, {"decision_prob", rr.decision_prob()}});
                    }
                    e["routing"] = rl;
                  }
                  toks.push_back(e);
                }
                js.push_back({{"index", i}, {"prompt_tokens", np}, {"generated_tokens", s.ids.size()}, {"tokens", toks}});
              }
              t["sequences"] = js;
              atomic_write_file(o->trace, [&](std::FILE* f) {
                std::string body = dump(t) + "\n";
                fwrite_checked(f, body.data(), body.size(), o->trace);
              });
            }

            if (o->json_out) {
              json j{{"prompts", P},
                     {"batch", B},
                     {"weights", infer::format_name(weights->format())},
                     {"kv", o->kv},
                     {"prompt_tokens", prompt_tokens},
                     {"generated_tokens", generated_tokens},
                     {"prefill_seconds", prefill_s},
                     {"decode_seconds", decode_s},
                     {"prompt_tokens_per_second", prefill_rate},
                     {"generated_tokens_per_second", decode_rate},
                     {"decode_steps", steps}};
              if (P == 1) {
                j["ids"] = seqs[0].ids;
                j["text"] = seqs[0].text;
                j["stop_reason"] = seqs[0].stop_reason;
              }
              json sj = json::array();
              for (const auto& s : seqs)
                sj.push_back({{"prompt", s.prompt}, {"prompt_tokens", s.prompt_ids.size()}, {"ids", s.ids}, {"text", s.text},
                              {"stop_reason", s.stop_reason}});
              j["sequences"] = sj;
              json layers = json::array();
              for (int l = 0; l < cfg.n_layers; ++l)
                layers.push_back({{"layer", l}, {"routed", cfg.routed(l)}, {"tokens", kv_layer_tokens[l]}, {"bytes", kv_layer_bytes[l]}});
              j["kv_cache"] = {{"bytes", kv_total},
                               {"dense_bytes", dense_layer_bytes * cfg.n_layers},
                               {"fraction_of_dense", dense_layer_bytes > 0 ? (double)kv_total / (dense_layer_bytes * cfg.n_layers) : 0.0},
                               {"layers", layers}};
              json rl = json::array();
              for (int k = 0; k < R; ++k)
                rl.push_back({{"layer", routed[k]},
                              {"processed_fraction", generated_tokens ? (double)proc_gen[k] / generated_tokens : 0.0},
                              {"processed_fraction_prompt", prompt_tokens ? (double)proc_prompt[k] / prompt_tokens : 0.0}});
              j["routed_layers"] = rl;
              std::printf("%s\n", dump(j).c_str());
            } else {
              if (!stream) {
                for (int i = 0; i < P; ++i) std::printf("--- [%d] ---\n%s\n", i, seqs[i].text.c_str());
                std::fflush(stdout);
              }
              std::fprintf(stderr, "prompt: %lld tokens, %.1f tok/s | generated: %lld tokens, %.1f tok/s", (long long)prompt_tokens,
                           prefill_rate, (long long)generated_tokens, decode_rate);
              if (P > 1) std::fprintf(stderr, " (%d prompts, batch %d)", P, B);
              std::fprintf(stderr, "\n");
              if (R > 0) {
                std::fprintf(stderr, "KV cache: %.1f KiB (dense would hold %.1f KiB); processed fraction of generated tokens:",
                             kv_total / 1024.0, dense_layer_bytes * cfg.n_layers / 1024.0);
                for (int k = 0; k < R; ++k)
                  std::fprintf(stderr, " L%d %.3f", routed[k], generated_tokens ? (double)proc_gen[k] / generated_tokens : 0.0);
                std::fprintf(stderr, "\n");
              }
            }
            return 0;
          }};
}

}  // namespace modlm::cli
