// `modlm init MODEL_DIR ...`: a freshly initialised model folder (SPEC §6).
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "cli/model_flags.h"
#include "io/model_dir.h"
#include "io/tokenizer.h"
#include "io/safetensors.h"
#include "util/error.h"
#include "util/fs.h"
#include "util/json_file.h"

namespace modlm::cli {

namespace fs = std::filesystem;

Command add_init(CLI::App& app) {
  struct Opts {
    std::string dir, config, tokenizer;
    uint64_t seed = 1;
    bool force = false, json_out = false;
    ModelFlags flags;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand("init", "Write a freshly initialised model folder (config.json + model.safetensors)");
  sub->add_option("MODEL_DIR", o->dir, "folder to create")->required();
  sub->add_option("--config", o->config, "start from this config.json (flags override its values)");
  sub->add_option("--tokenizer", o->tokenizer, "SentencePiece tokenizer.model to copy into the folder (sets --vocab)");
  sub->add_option("--seed", o->seed, "initialisation seed")->capture_default_str();
  sub->add_flag("--force", o->force, "replace an existing model in MODEL_DIR");
  sub->add_flag("--json", o->json_out, "print a JSON summary");
  o->flags.add_to(*sub);
  sub->footer(
      "Initialisation: matrices ~ N(0, 0.02^2); the residual outputs (attn.wo, mlp.w2) ~ N(0, (0.02/sqrt(2L))^2);\n"
      "norm weights 1; biases 0. Each tensor is seeded from (seed, tensor name).\n"
      "Example: modlm init m --d-model 512 --n-layers 8 --n-heads 8 --d-ff 1408 --vocab bytes --seed 1");
  return {sub, [o]() -> int {
            json base = json::object();
            if (!o->config.empty()) {
              base = parse_json_file(o->config);
            }
            if (!o->tokenizer.empty()) {
              if (o->flags.vocab && *o->flags.vocab == "bytes")
                throw usage_error("--tokenizer and --vocab bytes contradict each other");
              if (!file_exists(o->tokenizer)) throw io_error(o->tokenizer + ": no such tokenizer file");
            } else if (!o->flags.vocab && !base.contains("vocab_size")) {
              throw usage_error("give --vocab bytes, --vocab N with --tokenizer, or --tokenizer FILE");
            }
            int spm_vocab = 0;
            if (!o->tokenizer.empty()) {
              // The tokenizer decides the vocabulary unless --vocab says otherwise (then it must fit).
              spm_vocab = io::SentencePieceTokenizer(o->tokenizer).vocab_size();
              if (!o->flags.vocab) base["vocab_size"] = spm_vocab;
              base.erase("tokenizer");
            }
            ModelConfig cfg = o->flags.apply(base, o->config.empty() ? "flags" : o->config);
            if (cfg.vocab_size < spm_vocab)
              throw usage_error("--vocab " + std::to_string(cfg.vocab_size) + " is smaller than the tokenizer's " +
                                std::to_string(spm_vocab) + " ids");
            if (!o->tokenizer.empty()) cfg.tokenizer.clear();
            else if (cfg.tokenizer.empty())
              throw usage_error("a model without the byte tokenizer needs --tokenizer tokenizer.model");
            if (fs::exists(o->dir + "/model.safetensors") && !o->force)
              throw usage_error(o->dir + " already holds a model (use --force to replace it)");
            Model<float> model(cfg);
            model.init_weights(o->seed);
            io::save_model(o->dir, model);
            if (!o->tokenizer.empty()) {
              std::error_code ec;
              fs::copy_file(o->tokenizer, o->dir + "/tokenizer.model", fs::copy_options::overwrite_existing, ec);
              if (ec) throw io_error(o->dir + "/tokenizer.model: cannot copy: " + ec.message());
            }
            size_t n = 0;
            for (const auto& p : model.layout().params()) n += p.numel;
            if (o->json_out) {
              json j;
              j["model_dir"] = o->dir;
              j["parameters"] = n;
              j["config"] = cfg.to_json();
              std::printf("%s\n", j.dump().c_str());
            } else {
              std::printf("wrote %s: %zu parameters (%.2f M), %d layers (%d routed), d_model %d, vocab %d\n",
                          o->dir.c_str(), n, n / 1e6, cfg.n_layers, cfg.n_routed(), cfg.d_model, cfg.vocab_size);
            }
            return 0;
          }};
}

}  // namespace modlm::cli
