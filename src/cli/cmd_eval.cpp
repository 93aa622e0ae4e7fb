// `modlm eval MODEL_DIR --data FILE --seq-len T --max-windows N [--mode topk|causal|both] [--json]`
#include <cmath>
#include <cstdio>

#include "cli/commands.h"
#include "cli/data.h"
#include "io/model_dir.h"
#include "train/evaluate.h"
#include "util/error.h"

namespace modlm::cli {

static json eval_json(const EvalResult& r) {
  json j{{"loss", r.loss},
         {"perplexity", std::exp(r.loss)},
         {"tokens", r.tokens},
         {"windows", r.windows},
         {"seconds", r.seconds},
         {"tokens_per_second", r.seconds > 0 ? r.tokens / r.seconds : 0.0},
         {"flops_executed", r.flops_executed},
         {"flops_analytic", r.flops_analytic}};
  json layers = routed_summary_json(r.routed);
  j["routed_layers"] = layers;
  if (!r.moe.empty()) j["moe_layers"] = moe_stats_json(r.moe);
  return j;
}

static void print_eval(const char* mode, const EvalResult& r) {
  std::printf("%-6s loss %.4f nats  perplexity %.2f  (%lld windows, %lld tokens, %.1f tok/s)\n", mode, r.loss,
              std::exp(r.loss), (long long)r.windows, (long long)r.tokens, r.seconds > 0 ? r.tokens / r.seconds : 0.0);
  for (const auto& s : r.routed)
    std::printf("       layer %-3d processed %.4f  mean gate %.4f  decision accuracy %.4f\n", s.layer,
                s.processed_fraction, s.mean_gate, s.decision_accuracy);
  for (const auto& s : r.moe)
    std::printf("       layer %-3d MoE dropped %.4f  no-op %.4f  balance %.4f\n", s.layer,
                s.assignments ? (double)s.dropped / s.assignments : 0.0, s.assignments ? (double)s.noop / s.assignments : 0.0,
                s.balance);
  std::printf("       forward FLOPs executed %lld, analytic (top-k) %lld\n", (long long)r.flops_executed,
              (long long)r.flops_analytic);
}

Command add_eval(CLI::App& app) {
  struct Opts {
    std::string dir, data, mode = "topk";
    int seq_len = 256, batch = 8;
    int64_t max_windows = 0;
    bool json_out = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand("eval", "Mean next-token loss and perplexity of a model on a text file");
  sub->add_option("MODEL_DIR", o->dir, "model folder")->required();
  sub->add_option("--data", o->data, "text file (plain or .gz) to evaluate on")->required();
  sub->add_option("--seq-len", o->seq_len, "tokens per window T")->capture_default_str();
  sub->add_option("--max-windows", o->max_windows, "use the first N complete windows (0 = all)")->capture_default_str();
  sub->add_option("--mode", o->mode, "routing: topk (training-time), causal (as generation decides), or both")
      ->check(CLI::IsMember({"topk", "causal", "both"}))
      ->capture_default_str();
  sub->add_option("--batch", o->batch, "windows per forward pass")->capture_default_str();
  sub->add_flag("--json", o->json_out, "print one JSON object");
  return {sub, [o]() -> int {
            if (o->max_windows < 0) throw usage_error("--max-windows must be >= 0");
            if (o->batch < 1) throw usage_error("--batch must be >= 1");
            Model<float> model = io::load_model(o->dir);
            if (o->seq_len < 1 || o->seq_len > model.config().max_seq_len)
              throw usage_error("--seq-len must be in [1, max_seq_len = " + std::to_string(model.config().max_seq_len) + "]");
            LoadedTokens data = load_text_tokens(o->data, o->dir, model.config());
            int64_t W = count_windows(data.span.size, o->seq_len);
            if (o->max_windows > 0) W = std::min(W, o->max_windows);
            // Causal differs from top-k with routed layers, or with an MoE capacity (none at generation).
            const bool routed = model.config().n_routed() > 0 ||
                                (model.config().n_moe() > 0 && model.config().moe.capacity_factor > 0);
            std::vector<std::pair<std::string, RouteMode>> modes;
            if (o->mode != "causal") modes.push_back({"topk", RouteMode::TopK});
            if (o->mode != "topk" && routed) modes.push_back({"causal", RouteMode::Causal});
            if (o->mode == "causal" && !routed) modes.push_back({"causal", RouteMode::Causal});  // dense: same as topk
            json out = json::object();
            std::vector<EvalResult> results;
            for (auto& [name, mode] : modes) {
              Progress bar("eval " + name, W, "win", !o->json_out);
              EvalResult r = evaluate(model, data.span, o->seq_len, o->max_windows, mode, o->batch, &bar);
              bar.finish();
              results.push_back(r);
              out[name] = eval_json(r);
            }
            if (o->json_out) {
              json j = eval_json(results[0]);  // the requested (or first) mode at top level
              j["mode"] = modes[0].first;
              if (results.size() > 1) {
                j["topk"] = out["topk"];
                j["causal"] = out["causal"];
                j["causal_minus_topk"] = results[1].loss - results[0].loss;
              }
              std::printf("%s\n", j.dump().c_str());
            } else {
              for (size_t i = 0; i < results.size(); ++i) print_eval(modes[i].first.c_str(), results[i]);
              if (results.size() > 1)
                std::printf("gap    causal - topk = %+.4f nats\n", results[1].loss - results[0].loss);
            }
            return 0;
          }};
}

}  // namespace modlm::cli
