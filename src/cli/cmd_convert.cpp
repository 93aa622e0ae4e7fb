// `modlm convert MODEL_DIR OUT_DIR --routing every_other --capacity 0.125 [--predictor]`: a dense
// model with routers and causal predictors added (model/convert.h has the initialisation).
#include <cstdio>
#include <filesystem>

#include "cli/commands.h"
#include "cli/data.h"
#include "cli/model_flags.h"
#include "infer/decoder.h"
#include "infer/sampler.h"
#include "io/model_dir.h"
#include "io/tokenizer.h"
#include "model/convert.h"
#include "util/error.h"
#include "util/fs.h"

namespace modlm::cli {

namespace {

// `n` sequences of `T` tokens: evenly spaced windows of the text, or, without text, sampled from
// the model itself (temperature 1, each from a random first token): the model's own distribution.
std::vector<int32_t> calibration_tokens(Model<float>& m, const std::string& dir, const std::string& data, int n, int T,
                                        uint64_t seed, std::string* source) {
  std::vector<int32_t> out((size_t)n * T);
  if (!data.empty()) {
    LoadedTokens lt = load_text_tokens(data, dir, m.config());
    if (lt.span.size < (size_t)T) throw bad_input(data + ": " + std::to_string(lt.span.size) + " tokens, fewer than --calib-len " + std::to_string(T));
    for (int i = 0; i < n; ++i) {
      const size_t start = n > 1 ? (lt.span.size - T) * (size_t)i / (n - 1) : 0;
      lt.span.copy(start, T, out.data() + (size_t)i * T);
    }
    *source = data;
    return out;
  }
  infer::Decoder dec(m, n, T);
  Rng r(seed);
  std::vector<std::vector<int32_t>> first(n);
  for (int i = 0; i < n; ++i) first[i] = {(int32_t)r.below(m.config().vocab_size)};
  dec.prefill(first);
  std::vector<infer::Sampler> samplers;
  for (int i = 0; i < n; ++i) samplers.emplace_back(infer::SamplingParams{}, seed * 7919 + i);
  std::vector<int> slots(n);
  for (int i = 0; i < n; ++i) slots[i] = i, out[(size_t)i * T] = first[i][0];
  for (int t = 1; t < T; ++t) {
    std::vector<int32_t> next(n);
    for (int i = 0; i < n; ++i) next[i] = out[(size_t)i * T + t] = samplers[i].sample(dec.logits(i), m.config().vocab_size);
    if (t + 1 < T) dec.step(slots, next);
  }
  *source = "sampled from the model";
  return out;
}

}  // namespace

Command add_convert(CLI::App& app) {
  struct Opts {
    std::string in, out, routing = "every_other", data;
    double capacity = 0.125;
    bool predictor = false, aux_loss = false, force = false, json_out = false, no_fit = false;
    int predictor_hidden = 128, calib_seqs = 8, calib_len = 0;
    uint64_t seed = 1;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand("convert", "Turn a dense model into an MoD model: routers and causal predictors added");
  sub->add_option("MODEL_DIR", o->in, "dense model folder")->required();
  sub->add_option("OUT_DIR", o->out, "MoD model folder to write (all or nothing)")->required();
  sub->add_option("--routing", o->routing, "routed layers: every_other, all, or a list like 1,3,5")->capture_default_str();
  sub->add_option("--capacity", o->capacity, "fraction of tokens a routed block processes, in (0, 1]")->capture_default_str();
  sub->add_flag("--predictor", o->predictor, "causal predictor for generation (the default)");
  sub->add_flag("--aux-loss", o->aux_loss, "no predictor: an auxiliary loss teaches the router itself to decide causally");
  sub->add_option("--predictor-hidden", o->predictor_hidden, "hidden size of the causal predictor")->capture_default_str();
  sub->add_option("--data", o->data, "calibration text (plain or .gz; default: text sampled from the model itself)");
  sub->add_option("--calib-seqs", o->calib_seqs, "calibration sequences")->capture_default_str();
  sub->add_option("--calib-len", o->calib_len, "tokens per calibration sequence (default: 256 or max_seq_len if smaller)");
  sub->add_option("--seed", o->seed, "seed of the new tensors' starting values and of sampled calibration")->capture_default_str();
  sub->add_flag("--no-fit", o->no_fit, "routers and predictors from the plain random initialisation (a baseline)");
  sub->add_flag("--force", o->force, "replace OUT_DIR if it holds something");
  sub->add_flag("--json", o->json_out, "print a JSON summary");
  sub->footer(
      "Each router is fitted (ridge regression on the dense model's residual stream) to rank first the tokens its\n"
      "block changes most, and scaled so routed tokens get gate >= 0.95; the predictor starts as 'router score\n"
      "above the capacity quantile' (docs/convert.md). Then fine-tune: modlm train --init OUT_DIR --data ...\n"
      "Example: modlm convert llama llama-mod --routing every_other --capacity 0.125 --data text.txt");
  return {sub, [o]() -> int {
            if (o->predictor && o->aux_loss) throw usage_error("--predictor and --aux-loss contradict each other");
            if (o->calib_seqs < 1 || o->calib_seqs > 4096) throw usage_error("--calib-seqs must be in [1, 4096]");
            Model<float> dense = io::load_model(o->in);
            const ModelConfig& dc = dense.config();
            if (o->calib_len == 0) o->calib_len = std::min(256, dc.max_seq_len);
            if (o->calib_len < 2 || o->calib_len > dc.max_seq_len)
              throw usage_error("--calib-len must be in [2, max_seq_len = " + std::to_string(dc.max_seq_len) + "]");
            if (dc.tokenizer != "bytes" && !file_exists(o->in + "/tokenizer.model") && !file_exists(o->in + "/tokenizer.json"))
              throw bad_input(o->in + ": no tokenizer.model or tokenizer.json (the converted folder needs one)");
            ConvertOptions co;
            co.capacity = o->capacity;
            co.predictor = !o->aux_loss;
            co.predictor_hidden = o->predictor_hidden;
            co.seed = o->seed;
            co.fit = !o->no_fit;
            co.layers = layer_set_flag(o->routing, "--routing");  // indices are checked with the config
            std::string source;
            const std::vector<int32_t> calib = calibration_tokens(dense, o->in, o->data, o->calib_seqs, o->calib_len, o->seed, &source);
            std::vector<ConvertLayerReport> rep;
            Model<float> mod = convert_to_mod(dense, co, calib, o->calib_seqs, o->calib_len, &rep);
            write_folder_atomically(o->out, o->force, [&](const std::string& tmp) {
              io::save_model(tmp, mod);
              if (dc.tokenizer != "bytes") io::copy_tokenizer_files(o->in, tmp);
              if (file_exists(o->in + "/hf")) {
                std::filesystem::copy(o->in + "/hf", tmp + "/hf", std::filesystem::copy_options::recursive);
              }
            });
            json layers = json::array();
            for (const auto& r : rep)
              layers.push_back({{"layer", r.layer}, {"fit_r2", r.fit_r2}, {"threshold", r.threshold}, {"scale", r.scale},
                                {"processed", r.processed}});
            if (o->json_out) {
              std::printf("%s\n", json{{"out", o->out}, {"calibration", source}, {"calibration_tokens", calib.size()},
                                       {"routed", layers}, {"config", mod.config().to_json()}}.dump().c_str());
            } else {
              std::printf("converted %s -> %s: %d routed layers at capacity %g (%s), calibration: %zu tokens %s\n", o->in.c_str(),
                          o->out.c_str(), mod.config().n_routed(), o->capacity, co.predictor ? "predictor" : "aux_loss",
                          calib.size(), source.c_str());
              for (const auto& r : rep)
                std::printf("  layer %2d: router fit R^2 %.3f, routed fraction on calibration %.3f\n", r.layer, r.fit_r2, r.processed);
              std::printf("next: modlm train --init %s --data TEXT --out RUN ... (fine-tune), modlm eval --mode both\n", o->out.c_str());
            }
            return 0;
          }};
}

}  // namespace modlm::cli
