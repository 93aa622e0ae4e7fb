// `modlm flops CONFIG_OR_MODEL --seq-len T`: SPEC §5 analytic forward FLOPs, with the dense twin.
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "model/flops.h"
#include "util/error.h"

namespace modlm::cli {

static json breakdown_json(const FlopBreakdown& f) {
  return json{{"projections", f.projections}, {"mlp", f.mlp},   {"attention", f.attention},
              {"router", f.router},           {"head", f.head}, {"moe_gate", f.moe_gate},
              {"total", f.total()}};
}

Command add_flops(CLI::App& app) {
  struct Opts {
    std::string path;
    int seq_len = 0;
    bool json_out = false;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand("flops", "Analytic forward FLOPs per sequence (SPEC §5), against the dense twin");
  sub->add_option("CONFIG_OR_MODEL", o->path, "a config.json or a model folder")->required();
  sub->add_option("--seq-len", o->seq_len, "tokens per sequence T")->required();
  sub->add_flag("--json", o->json_out, "print JSON");
  return {sub, [o]() -> int {
            std::string path = o->path;
            if (std::filesystem::is_directory(path)) path += "/config.json";
            ModelConfig cfg = ModelConfig::load(path);
            if (o->seq_len < 1 || o->seq_len > cfg.max_seq_len)
              throw usage_error("--seq-len must be in [1, max_seq_len = " + std::to_string(cfg.max_seq_len) + "]");
            FlopBreakdown m = analytic_forward_flops(cfg, o->seq_len);
            FlopBreakdown d = analytic_forward_flops(dense_twin(cfg), o->seq_len);
            double ratio = (double)m.total() / d.total();
            if (o->json_out) {
              json j{{"seq_len", o->seq_len},
                     {"model", breakdown_json(m)},
                     {"dense_twin", breakdown_json(d)},
                     {"ratio", ratio},
                     {"train_step_flops_per_sequence", 3 * m.total()}};
              std::printf("%s\n", j.dump().c_str());
              return 0;
            }
            std::printf("forward FLOPs per sequence of %d tokens (2 per multiply-add; training step = 3x)\n", o->seq_len);
            std::printf("%-12s %16s %16s %8s\n", "part", "this model", "dense twin", "ratio");
            auto row = [](const char* name, int64_t a, int64_t b) {
              std::printf("%-12s %16lld %16lld %8s\n", name, (long long)a, (long long)b,
                          b ? (std::to_string((double)a / b).substr(0, 6)).c_str() : "-");
            };
            row("projections", m.projections, d.projections);
            row("mlp", m.mlp, d.mlp);
            row("attention", m.attention, d.attention);
            row("router", m.router, d.router);
            row("head", m.head, d.head);
            if (m.moe_gate) row("moe gate", m.moe_gate, d.moe_gate);
            row("total", m.total(), d.total());
            return 0;
          }};
}

}  // namespace modlm::cli
