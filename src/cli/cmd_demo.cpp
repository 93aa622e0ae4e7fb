// `modlm demo [--minutes M] [--budget-flops F] [--out DIR] [--data TRAIN --val VAL]`: a dense model
// and its Mixture-of-Depths twin, trained with the same FLOPs, compared and drawn (report.html).
#include "cli/commands.h"
#include "cli/model_flags.h"
#include "demo/demo.h"
#include "model/families.h"
#include "util/error.h"

namespace modlm::cli {

Command add_demo(CLI::App& app) {
  auto o = std::make_shared<demo::DemoOptions>();
  auto no_progress = std::make_shared<bool>(false);
  auto families = std::make_shared<std::string>("dense,mod");
  CLI::App* sub = app.add_subcommand(
      "demo", "Train a dense model and its MoD twin (or MoE / MoDE families) with the same FLOPs, compare them, and draw report.html");
  CLI::Option* minutes = sub->add_option("--minutes", o->minutes, "about how long the whole demo should take; sets the FLOP budget by timing a few steps")
                             ->capture_default_str();
  CLI::Option* budget = sub->add_option("--budget-flops", o->budget_flops, "training FLOPs per model (instead of --minutes), e.g. 2e13");
  sub->add_option("--out", o->out, "folder for the runs, summary.json and report.html (a rerun reuses what is finished)")->capture_default_str();
  sub->add_option("--data", o->data, "training text (plain or .gz; default: the shipped data/train.txt.gz)");
  sub->add_option("--val", o->val, "validation text (plain or .gz; default: data/valid.txt.gz)");
  sub->add_option("--family", *families,
                  "comma list of model families to train and compare: dense, mod, moe, mode_staged, mode_integrated "
                  "(the first that is dense, else the first, is the baseline)")
      ->capture_default_str();
  sub->add_flag("--no-progress", *no_progress, "no progress bars");
  // Advanced (hidden) knobs: model shape, batch, schedule, evaluation sizes.
  const std::string adv = "";
  sub->add_option("--d-model", o->d_model)->group(adv);
  sub->add_option("--n-layers", o->n_layers)->group(adv);
  sub->add_option("--n-heads", o->n_heads)->group(adv);
  sub->add_option("--d-ff", o->d_ff)->group(adv);
  sub->add_option("--vocab-size", o->vocab_size)->group(adv);
  add_family_flags(*sub, o->family_settings, adv);
  sub->add_option("--seq-len", o->seq_len)->group(adv);
  sub->add_option("--batch-size", o->batch_size)->group(adv);
  sub->add_option("--lr", o->lr)->group(adv);
  sub->add_option("--min-lr", o->min_lr)->group(adv);
  sub->add_option("--seed", o->seed)->group(adv);
  sub->add_option("--evals", o->evals)->group(adv);
  sub->add_option("--eval-windows", o->eval_windows)->group(adv);
  sub->add_option("--final-windows", o->final_windows)->group(adv);
  sub->add_option("--calibration-steps", o->calibration_steps)->group(adv);
  sub->add_option("--prompt-tokens", o->prompt_tokens)->group(adv);
  sub->add_option("--new-tokens", o->new_tokens)->group(adv);
  sub->footer(
      "Trains (or reuses, under OUT/tokenizer) a SentencePiece tokenizer, then a dense model and its MoD twin (every other\n"
      "layer routed, capacity 0.125, causal predictor) on the same text with the same training-FLOP budget: the MoD model\n"
      "takes more, cheaper steps. Evaluates both (top-k and causal routing), times training and one-stream decoding,\n"
      "samples a continuation from each, and writes OUT/summary.json and OUT/report.html (one self-contained page).\n"
      "--family adds Mixture-of-Experts families at the same budget: moe (every MLP -> 4 experts of width d_ff, top-1,\n"
      "capacity factor 1.25), mode_staged (MoD routing, each routed layer's MLP an MoE), mode_integrated (MoE with as many\n"
      "no-op experts as real ones: a token sent to a no-op skips the MLP). E.g. --family dense,mod,moe,mode_staged,mode_integrated\n"
      "Ctrl-C checkpoints and exits 130; the same command continues where it stopped, and a finished demo is reused.\n"
      "Advanced flags: --d-model --n-layers --n-heads --d-ff --vocab-size --capacity --routed-layers --seq-len\n"
      "--batch-size --lr --min-lr --seed --evals --eval-windows --final-windows --calibration-steps --prompt-tokens --new-tokens\n"
      "--n-experts --d-expert (0 = d_ff) --moe-top-k --capacity-factor --n-noop (0 = n_experts) --moe-balance-weight.");
  return {sub, [o, no_progress, minutes, budget, families]() -> int {
            o->families = parse_families(*families, "--family");
            if (minutes->count() > 0 && budget->count() > 0) throw usage_error("give --minutes or --budget-flops, not both");
            if (budget->count() > 0 && !(o->budget_flops > 0)) throw usage_error("--budget-flops must be > 0");
            if (o->seq_len < 2 || o->batch_size < 1) throw usage_error("--seq-len must be >= 2 and --batch-size >= 1");
            if (o->evals < 1 || o->eval_windows < 1 || o->final_windows < 1 || o->calibration_steps < 1 || o->prompt_tokens < 1 ||
                o->new_tokens < 1)
              throw usage_error("--evals, --eval-windows, --final-windows, --calibration-steps, --prompt-tokens and --new-tokens must be >= 1");
            o->progress = !*no_progress;
            return demo::run_demo(*o);
          }};
}

}  // namespace modlm::cli
