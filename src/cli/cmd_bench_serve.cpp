// `modlm bench serve`: the server under 1..64 concurrent streaming clients, an MoD model against
// its dense twin, side by side in one run (random weights; docs/serving.md has the figures).
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <thread>

#include <httplib.h>

#include "cli/commands.h"
#include "cli/model_flags.h"
#include "infer/calibrate.h"
#include "infer/decoder.h"
#include "infer/sampler.h"
#include "model/flops.h"
#include "ops/gemm.h"
#include "serve/server.h"
#include "util/error.h"
#include "util/rng.h"

namespace modlm::cli {

namespace {

using clk = std::chrono::steady_clock;
double secs(clk::time_point a, clk::time_point b) { return std::chrono::duration<double>(b - a).count(); }

// Random-weight models have no real tokenizer: every id prints as one letter, so the streamed
// characters count the tokens.
class LetterTokenizer final : public io::Tokenizer {
 public:
  explicit LetterTokenizer(int v) : v_(v) {}
  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> ids;
    for (unsigned char c : text) ids.push_back(c % v_);
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (int32_t id : ids) s += char('a' + id % 26);
    return s;
  }
  int vocab_size() const override { return v_; }
  std::string id() const override { return "letters"; }

 private:
  int v_;
};

struct RequestTiming {
  double ttft = 0, tpot = 0;  // seconds to the first token; mean seconds per token after it
  int tokens = 0;
  bool ok = false;
};

double percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t i = std::min(v.size() - 1, (size_t)std::ceil(p * (double)v.size()) - (p > 0 ? 1 : 0));
  return v[i];
}

// Client i's prompts, one per request: the same at every level, so levels share their prompts.
std::vector<std::vector<int32_t>> client_prompts(int client, int requests, int prompt_len, int vocab) {
  return infer::random_prompts(requests, prompt_len, vocab, 1000 + (uint64_t)client);
}

RequestTiming stream_one(int port, const std::vector<int32_t>& prompt, int n_new) {
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(600);
  httplib::Request req;
  req.method = "POST";
  req.path = "/v1/completions";
  req.body = json{{"prompt", prompt}, {"max_tokens", n_new}, {"temperature", 0}, {"stream", true}}.dump();
  req.set_header("Content-Type", "application/json");
  RequestTiming t;
  std::string buf;
  clk::time_point first{}, last{};
  const auto t0 = clk::now();
  req.content_receiver = [&](const char* d, size_t n, uint64_t, uint64_t) {
    buf.append(d, n);
    size_t at;
    while ((at = buf.find("\n\n")) != std::string::npos) {
      const std::string ev = buf.substr(0, at);
      buf.erase(0, at + 2);
      if (ev.rfind("data: {", 0) != 0) continue;
      const json j = json::parse(ev.substr(6));
      for (const auto& ch : j["choices"]) {
        const int k = (int)ch["text"].get<std::string>().size();
        if (k == 0) continue;
        const auto now = clk::now();
        if (t.tokens == 0) first = now;
        last = now;
        t.tokens += k;
      }
    }
    return true;
  };
  auto res = c.send(req);
  t.ok = res && res->status == 200 && t.tokens == n_new;
  if (t.tokens > 0) t.ttft = secs(t0, first);
  if (t.tokens > 1) t.tpot = secs(first, last) / (t.tokens - 1);
  return t;
}

}  // namespace

Command add_bench_serve(CLI::App& app) {
  struct Opts {
    std::string clients = "1,4,16,64", weights = "f32";
    int prompt_len = 32, n_new = 64, requests = 2, rounds = 3;
    double processed_fraction = 0.125;
    bool json_out = false, no_dense = false;
    ModelFlags flags;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* bench = app.get_subcommand("bench");
  CLI::App* sub = bench->add_subcommand("serve", "The HTTP server under concurrent streaming clients: MoD vs its dense twin (random weights)");
  sub->add_option("--clients", o->clients, "comma list of concurrent client counts (each a level)")->capture_default_str();
  sub->add_option("--requests", o->requests, "streaming requests each client sends, one after another, per level")->capture_default_str();
  sub->add_option("--prompt-len", o->prompt_len, "prompt tokens per request (random ids)")->capture_default_str();
  sub->add_option("--new", o->n_new, "tokens generated per request (greedy)")->capture_default_str();
  sub->add_option("--processed-fraction", o->processed_fraction,
                  "force each routed layer's processed fraction (predictor bias moved on a calibration text), as "
                  "`bench generate --processed-fraction` does; negative = leave the random predictor (~0.5)")
      ->capture_default_str();
  sub->add_option("--weights", o->weights, "f32, bf16, f16 or q8")->check(CLI::IsMember({"f32", "bf16", "f16", "q8"}))->capture_default_str();
  CLI::Option* rounds_opt = sub->add_option("--rounds", o->rounds,
                  "times each level runs both models, alternating which goes first; the ratio is the median of the rounds' "
                  "ratios (the machine's speed drifts between runs: one MoD run against one dense run swung 1.19-1.67x at 16 "
                  "clients on a 2-core machine; more rounds, a steadier ratio). Without a dense twin: 1 unless given")
      ->capture_default_str();
  sub->add_flag("--no-dense", o->no_dense, "do not run the dense twin");
  sub->add_flag("--json", o->json_out, "print JSON");
  o->flags.add_to(*sub);
  sub->footer(
      "Default shape: D=1024 L=16 H=16 F=2816 V=32000, MoD every other layer at capacity 0.125 (--routing none: dense only).\n"
      "Each level starts N clients at once; each streams --requests completions of --new tokens from a --prompt-len prompt.\n"
      "Aggregate tok/s = all generated tokens / the level's wall time; TTFT = request sent -> first token; TPOT = mean\n"
      "time between tokens after the first; weight bytes per token from the scheduler's decode steps.\n"
      "Example: modlm bench serve --clients 1,16 --d-model 512 --n-layers 8 --n-heads 8 --d-ff 1408 --vocab 8192");
  return {sub, [o, rounds_opt]() -> int {
            json base{{"vocab_size", 32000}, {"d_model", 1024}, {"n_layers", 16}, {"n_heads", 16}, {"d_ff", 2816},
                      {"routing", {{"layers", "every_other"}, {"capacity", 0.125}, {"causal", "predictor"}}}};
            ModelConfig cfg = o->flags.apply(base, "flags");
            const std::vector<int> levels = parse_int_list(o->clients, "--clients");
            if (o->prompt_len < 1 || o->n_new < 1 || o->requests < 1 || o->rounds < 1)
              throw usage_error("--prompt-len, --new, --requests and --rounds must be >= 1");
            if (o->prompt_len + o->n_new > cfg.max_seq_len) throw usage_error("--prompt-len + --new exceeds max_seq_len");
            const int max_clients = *std::max_element(levels.begin(), levels.end());
            const infer::MatFormat fmt = infer::parse_format(o->weights, "--weights");

            std::vector<std::pair<std::string, ModelConfig>> cfgs = {{model_kind(cfg), cfg}};
            if (cfg.n_routed() && !o->no_dense) cfgs.push_back({"dense", dense_twin(cfg)});
            struct Served {
              std::string name;
              std::unique_ptr<Model<float>> model;
              std::unique_ptr<LetterTokenizer> tok;
              std::unique_ptr<serve::HttpServer> server;
              std::thread thread;
              int port = 0;
            };
            std::vector<Served> served;
            json out{{"weights", o->weights}, {"prompt_len", o->prompt_len}, {"new", o->n_new}, {"requests_per_client", o->requests},
                     {"threads", omp_get_max_threads()}, {"blas", ops::blas_kernels()}, {"config", cfg.to_json()}};
            for (auto& [name, c] : cfgs) {
              Served s;
              s.name = name;
              s.model = std::make_unique<Model<float>>(c);
              s.model->init_weights(1);
              infer::round_weights_to(*s.model, fmt);
              if (c.n_routed() && o->processed_fraction >= 0) {
                if (c.routing.causal != "predictor") throw usage_error("--processed-fraction needs --causal predictor");
                const double f = std::min(1.0, o->processed_fraction);
                // Calibrated on the served prompts' greedy continuations (those of the first 16
                // clients: every level up to 16 clients serves a subset), counting the decode-step
                // tokens; infer/calibrate.h says why not on other sequences.
                std::vector<std::vector<int32_t>> prompts;
                for (int i = 0; i < std::min(max_clients, 16); ++i)
                  for (auto& p : client_prompts(i, o->requests, o->prompt_len, c.vocab_size)) prompts.push_back(std::move(p));
                infer::force_processed_fraction_on_continuations(*s.model, f, prompts, o->n_new, 2);
              }
              s.tok = std::make_unique<LetterTokenizer>(c.vocab_size);
              serve::ServerOptions so;
              so.port = 0;
              so.model_id = name;
              so.scheduler.max_batch = max_clients;
              so.scheduler.max_queue = max_clients;
              so.scheduler.max_context = o->prompt_len + o->n_new;
              s.server = std::make_unique<serve::HttpServer>(infer::InferenceWeights::from_model(*s.model, fmt), *s.tok, so);
              s.port = s.server->bind();
              serve::HttpServer* srv = s.server.get();
              s.thread = std::thread([srv] { srv->run(); });
              served.push_back(std::move(s));
            }
            if (!o->json_out)
              std::printf("bench serve: D=%d L=%d H=%d F=%d V=%d, %d routed layers (capacity %.3f, processed fraction forced to %.3f), "
                          "%d threads, prompt %d + %d new tokens, %d requests per client; prefill GEMMs: %s\n",
                          cfg.d_model, cfg.n_layers, cfg.n_heads, cfg.d_ff, cfg.vocab_size, cfg.n_routed(), cfg.routing.capacity,
                          o->processed_fraction, omp_get_max_threads(), o->prompt_len, o->n_new, o->requests, out["blas"].get<std::string>().c_str());
            // One model at one level: N clients, each streaming --requests completions; prints its line.
            auto run_level = [&](Served& s, int N) -> json {
              const serve::SchedulerStats before = s.server->scheduler().stats();
              std::vector<RequestTiming> timings((size_t)N * o->requests);
              std::vector<std::thread> th;
              const auto t0 = clk::now();
              for (int i = 0; i < N; ++i)
                th.emplace_back([&, i] {
                  const auto prompts = client_prompts(i, o->requests, o->prompt_len, s.model->config().vocab_size);
                  for (int q = 0; q < o->requests; ++q) timings[(size_t)i * o->requests + q] = stream_one(s.port, prompts[q], o->n_new);
                });
              for (auto& t : th) t.join();
              const double wall = secs(t0, clk::now());
              const serve::SchedulerStats after = s.server->scheduler().stats();
              int64_t tokens = 0;
              int failed = 0;
              std::vector<double> ttft, tpot;
              for (const auto& t : timings) {
                tokens += t.tokens;
                failed += !t.ok;
                ttft.push_back(t.ttft);
                tpot.push_back(t.tpot);
              }
              const double rows = (double)(after.step_rows - before.step_rows);
              const double wbpt = rows > 0 ? (after.step_weight_bytes - before.step_weight_bytes) / rows : 0;
              json pf = json::array();
              for (size_t j = 0; j < after.routed_layers.size(); ++j)
                pf.push_back(rows > 0 ? (double)(after.routed_processed[j] - before.routed_processed[j]) / rows : 0.0);
              const double steps = (double)(after.decode_steps - before.decode_steps);
              json m{{"tokens_per_second", tokens / wall},
                     {"tokens", tokens},
                     {"wall_s", wall},
                     {"failed_requests", failed},
                     {"ttft_p50_ms", percentile(ttft, 0.5) * 1e3},
                     {"ttft_p99_ms", percentile(ttft, 0.99) * 1e3},
                     {"tpot_p50_ms", percentile(tpot, 0.5) * 1e3},
                     {"tpot_p99_ms", percentile(tpot, 0.99) * 1e3},
                     {"mean_batch", steps > 0 ? rows / steps : 0.0},
                     {"decode_step_ms", steps > 0 ? (after.step_seconds - before.step_seconds) / steps * 1e3 : 0.0},
                     {"prefill_s", after.prefill_seconds - before.prefill_seconds},
                     {"decode_s", after.step_seconds - before.step_seconds},
                     {"weight_bytes_per_token", wbpt},
                     {"processed_fraction", pf}};
              if (!o->json_out) {
                double mean_pf = 0;
                for (const auto& p : pf) mean_pf += p.get<double>() / std::max<size_t>(1, pf.size());
                std::printf("  %3d clients  %-5s %8.1f tok/s | TTFT p50 %7.1f p99 %7.1f ms | TPOT p50 %6.1f p99 %6.1f ms | batch %5.1f | "
                            "%6.1f MB weights/token | step %5.1f ms, decode %4.1f s + prefill %4.1f s of %4.1f%s",
                            N, s.name.c_str(), tokens / wall, percentile(ttft, 0.5) * 1e3, percentile(ttft, 0.99) * 1e3,
                            percentile(tpot, 0.5) * 1e3, percentile(tpot, 0.99) * 1e3, steps > 0 ? rows / steps : 0.0, wbpt / 1e6,
                            m["decode_step_ms"].get<double>(), m["decode_s"].get<double>(), m["prefill_s"].get<double>(), wall,
                            failed ? " | FAILED REQUESTS" : "");
                if (!pf.empty()) std::printf(" | processed %.3f", mean_pf);
                std::printf("\n");
                std::fflush(stdout);
              }
              return m;
            };
            // Without a twin there is no ratio to steady: one round unless asked for more.
            const int n_rounds = served.size() < 2 && rounds_opt->count() == 0 ? 1 : o->rounds;
            json levels_out = json::array();
            for (int N : levels) {
              json lv{{"clients", N}};
              std::vector<double> ratios;
              json rounds = json::array();
              for (int r = 0; r < n_rounds; ++r) {
                // Odd rounds run the dense twin first, so a drift of the machine's speed within a
                // round favours neither model over the rounds.
                json round = json::object();
                for (size_t i = 0; i < served.size(); ++i) {
                  Served& s = served[r % 2 && served.size() == 2 ? 1 - i : i];
                  round[s.name] = run_level(s, N);
                }
                if (served.size() == 2) {
                  const double d = round["dense"]["tokens_per_second"].get<double>();
                  const double ratio = d > 0 ? round[served[0].name]["tokens_per_second"].get<double>() / d : 0.0;
                  round["speedup"] = ratio;
                  ratios.push_back(ratio);
                  if (!o->json_out && n_rounds > 1)
                    std::printf("  %3d clients  round %d: %s / dense %.2fx\n", N, r + 1, served[0].name.c_str(), ratio);
                }
                rounds.push_back(round);
              }
              // The round whose ratio is the median stands for the level (the last round without a twin).
              size_t pick = rounds.size() - 1;
              if (!ratios.empty()) {
                std::vector<size_t> idx(ratios.size());
                for (size_t i = 0; i < idx.size(); ++i) idx[i] = i;
                std::sort(idx.begin(), idx.end(), [&](size_t a, size_t b) { return ratios[a] < ratios[b]; });
                pick = idx[(idx.size() - 1) / 2];
              }
              for (const Served& s : served) lv[s.name] = rounds[pick][s.name];
              if (n_rounds > 1) lv["rounds"] = rounds;
              if (served.size() == 2) {
                const double lo = *std::min_element(ratios.begin(), ratios.end()), hi = *std::max_element(ratios.begin(), ratios.end());
                lv["speedup"] = ratios[pick];
                lv["weight_bytes_ratio"] = lv[served[0].name]["weight_bytes_per_token"].get<double>() /
                                           std::max(1.0, lv["dense"]["weight_bytes_per_token"].get<double>());
                if (!o->json_out) {
                  std::printf("  %3d clients  %s / dense: %.2fx tokens/s, %.3f weight bytes per token", N, served[0].name.c_str(),
                              ratios[pick], lv["weight_bytes_ratio"].get<double>());
                  if (n_rounds > 1) std::printf(" (median of %d rounds, %.2f-%.2fx)", n_rounds, lo, hi);
                  std::printf("\n");
                }
              }
              levels_out.push_back(lv);
            }
            out["levels"] = levels_out;
            for (auto& s : served) {
              s.server->stop(std::chrono::milliseconds(0));
              s.thread.join();
            }
            if (o->json_out) std::printf("%s\n", out.dump(2).c_str());
            return 0;
          }};
}

}  // namespace modlm::cli
