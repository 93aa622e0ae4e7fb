// `modlm train --config CONFIG.json --data TRAIN.txt --val VAL.txt --out RUN_DIR` and
// `modlm train --resume RUN_DIR`.
#include <cstdio>
#include <optional>

#include "cli/commands.h"
#include "io/model_dir.h"
#include "train/distributed.h"
#include "cli/model_flags.h"
#include "train/trainer.h"
#include "util/error.h"
#include "util/fs.h"
#include "util/json_file.h"

namespace modlm::cli {

namespace {

// Flags for every key of the "train" section.
struct TrainFlags {
  std::optional<int64_t> steps, warmup_steps, log_every, eval_every, eval_windows, ckpt_every, freeze_backbone_steps;
  std::optional<int> batch_size, seq_len, grad_accum, keep_checkpoints;
  std::optional<double> lr, min_lr, weight_decay, beta1, beta2, eps, grad_clip;
  std::optional<uint64_t> seed;
  std::optional<std::string> tokenizer, init;
  void add_to(CLI::App& a) {
    a.add_option("--init", init, "start from this model folder's weights (fine-tuning; the shape is the folder's)");
    a.add_option("--freeze-backbone-steps", freeze_backbone_steps,
                 "train only routers and predictors for the first N steps (after modlm convert)");
    a.add_option("--steps", steps, "optimizer steps");
    a.add_option("--batch-size", batch_size, "sequences per micro-batch");
    a.add_option("--seq-len", seq_len, "tokens per sequence");
    a.add_option("--grad-accum", grad_accum, "micro-batches per optimizer step");
    a.add_option("--lr", lr, "peak learning rate");
    a.add_option("--min-lr", min_lr, "learning rate at the end of the cosine decay");
    a.add_option("--warmup-steps", warmup_steps, "linear warm-up steps");
    a.add_option("--weight-decay", weight_decay, "AdamW decoupled weight decay (not on norms/biases)");
    a.add_option("--beta1", beta1, "AdamW beta1");
    a.add_option("--beta2", beta2, "AdamW beta2");
    a.add_option("--eps", eps, "AdamW epsilon");
    a.add_option("--grad-clip", grad_clip, "global gradient-norm clip (0 = off)");
    a.add_option("--seed", seed, "seed of the initialisation and the data order");
    a.add_option("--log-every", log_every, "steps between JSONL log lines");
    a.add_option("--eval-every", eval_every, "steps between validation passes (0 = end only)");
    a.add_option("--eval-windows", eval_windows, "validation windows per pass");
    a.add_option("--ckpt-every", ckpt_every, "steps between checkpoints (0 = end only)");
    a.add_option("--keep-checkpoints", keep_checkpoints, "checkpoints to keep");
    a.add_option("--tokenizer", tokenizer, "SentencePiece tokenizer.model (default: bytes, or train one)");
  }
  void apply(json& t) const {
    auto set = [&](const char* k, const auto& v) {
      if (v) t[k] = *v;
    };
    set("steps", steps), set("batch_size", batch_size), set("seq_len", seq_len), set("grad_accum", grad_accum);
    set("lr", lr), set("min_lr", min_lr), set("warmup_steps", warmup_steps), set("weight_decay", weight_decay);
    set("beta1", beta1), set("beta2", beta2), set("eps", eps), set("grad_clip", grad_clip), set("seed", seed);
    set("log_every", log_every), set("eval_every", eval_every), set("eval_windows", eval_windows);
    set("ckpt_every", ckpt_every), set("keep_checkpoints", keep_checkpoints), set("tokenizer", tokenizer);
    set("init", init), set("freeze_backbone_steps", freeze_backbone_steps);
  }
};

}  // namespace

Command add_train(CLI::App& app) {
  struct Opts {
    std::string config, data, val, out, resume;
    int64_t stop_at = 0;
    bool no_progress = false, json_out = false, echo_log = false;
    ModelFlags model;
    TrainFlags train;
  };
  auto o = std::make_shared<Opts>();
  CLI::App* sub = app.add_subcommand("train", "Train a model (dense or MoD) on a text file");
  sub->add_option("--config", o->config, "run config: {\"model\": {...}, \"train\": {...}}");
  sub->add_option("--data", o->data, "training text (plain or .gz)");
  sub->add_option("--val", o->val, "validation text (plain or .gz)");
  sub->add_option("--out", o->out, "run folder to create (log.jsonl, checkpoints)");
  sub->add_option("--resume", o->resume, "continue the run in this folder from its latest checkpoint");
  sub->add_option("--stop-at", o->stop_at, "stop after this step with a checkpoint (the schedule still spans --steps)");
  sub->add_flag("--no-progress", o->no_progress, "no progress bar");
  sub->add_flag("--log-stdout", o->echo_log, "also print each JSONL log line to stdout");
  sub->add_flag("--json", o->json_out, "print a JSON summary at the end");
  o->model.add_to(*sub);
  o->train.add_to(*sub);
  sub->footer(
      "Every config value can be set by flag; flags override --config. Ctrl-C saves a checkpoint and exits.\n"
      "Data parallel: mpirun -np N modlm train ... splits each batch of --batch-size sequences over N ranks\n"
      "(--batch-size must be a multiple of N; the global batch, data order and schedule do not change), sums the\n"
      "gradients over the ranks (MPI all-reduce) and lets rank 0 alone write the log, progress and checkpoints.\n"
      "--resume works with any N that divides the batch (docs/distributed.md).");
  return {sub, [o]() -> int {
            TrainOptions t;
            json cfg = json::object();
            if (!o->resume.empty()) {
              if (!o->out.empty() && o->out != o->resume) throw usage_error("--resume and --out name different folders");
              const std::string run_json = o->resume + "/run.json";
              if (!file_exists(run_json)) throw bad_input(o->resume + ": not a training run folder (no run.json)");
              json saved = parse_json_file(run_json);
              t.out_dir = o->resume;
              t.data_path = o->data.empty() ? saved.value("data", "") : o->data;
              t.val_path = o->val.empty() ? saved.value("val", "") : o->val;
              saved.erase("data");
              saved.erase("val");
              RunConfig run = RunConfig::from_json(saved, run_json);
              // Anything given on the command line must agree with the saved run.
              json want = saved;
              if (!o->config.empty()) want = parse_json_file(o->config);
              json tj = want.contains("train") ? want["train"] : json::object();
              o->train.apply(tj);
              want["train"] = tj;
              want["model"] = o->model.apply(want.contains("model") ? want["model"] : json::object(), "flags").to_json();
              RunConfig wanted = RunConfig::from_json(want, "command line");
              if (wanted.to_json() != run.to_json())
                throw bad_input(o->resume + ": the run was made with a different config than the one given now; "
                                "resume without config flags, or start a new run with --out");
              t.run = run;
              t.resume = true;
            } else {
              if (o->out.empty()) throw usage_error("give --out RUN_DIR (or --resume RUN_DIR)");
              if (o->data.empty()) throw usage_error("give --data TRAIN.txt");
              if (!o->config.empty()) cfg = parse_json_file(o->config);
              if (!cfg.is_object()) throw bad_input(o->config + ": must be a JSON object");
              json tj = cfg.contains("train") ? cfg["train"] : json::object();
              o->train.apply(tj);
              cfg["train"] = tj;
              json mj = cfg.contains("model") ? cfg["model"] : json::object();
              if (!mj.is_object()) throw bad_input(o->config + ": \"model\" must be an object");
              if (tj.contains("init") && tj["init"].is_string()) {
                // Fine-tuning: the model is the folder's; its tokenizer comes along.
                const std::string init = tj["init"].get<std::string>();
                const json own = io::load_model_config(init).to_json();
                if (o->model.apply(own, init).to_json() != own || (cfg.contains("model") && cfg["model"] != own))
                  throw usage_error("--init " + init + " takes the model's shape from the folder: drop the model flags / \"model\"");
                mj = own;
                if (!own.contains("tokenizer") && !tj.contains("tokenizer"))
                  tj["tokenizer"] = init + (!file_exists(init + "/tokenizer.model") && file_exists(init + "/tokenizer.json") ? "/tokenizer.json"
                                                                                                                           : "/tokenizer.model");
                cfg["train"] = tj;
              }
              if (!o->model.vocab && !mj.contains("vocab_size") && !mj.contains("tokenizer")) mj["tokenizer"] = "bytes", mj["vocab_size"] = 256;
              cfg["model"] = o->model.apply(mj, o->config.empty() ? "flags" : o->config).to_json();
              t.run = RunConfig::from_json(cfg, o->config.empty() ? "flags" : o->config);
              t.out_dir = o->out;
              t.data_path = o->data;
              t.val_path = o->val;
            }
            t.stop_at = o->stop_at;
            t.progress_bar = !o->no_progress && !o->json_out;
            t.echo_log = o->echo_log;
            install_stop_signal_handlers();
            TrainSummary s = train(t);
            if (!dist::is_root()) {
              // The other ranks of an mpirun job: rank 0 reports.
            } else if (o->json_out) {
              json j{{"steps", s.steps},           {"train_loss", s.train_loss},  {"tokens", s.progress.tokens},
                     {"flops", s.progress.flops},  {"flops_executed", s.progress.flops_executed},
                     {"seconds", s.progress.seconds}, {"interrupted", s.interrupted}, {"checkpoint", s.checkpoint}};
              if (s.val_loss >= 0) j["val_loss"] = s.val_loss;
              std::printf("%s\n", j.dump().c_str());
            } else {
              std::printf("%s after %lld steps: train loss %.4f%s, %.1f s; model: %s\n",
                          s.interrupted ? "interrupted" : "done", (long long)s.steps, s.train_loss,
                          s.val_loss >= 0 ? (", val loss " + std::to_string(s.val_loss)).c_str() : "", s.progress.seconds,
                          s.checkpoint.c_str());
            }
            return s.interrupted ? kExitInterrupted : 0;
          }};
}

}  // namespace modlm::cli
