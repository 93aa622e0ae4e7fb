// `modlm sweep --budgets F1,F2,... --sizes DxL,... --out DIR`: iso-FLOP curves of dense and MoD
// (or MoE / MoDE) models (sweep.jsonl, sweep.html); finished runs are skipped on a rerun.
#include "cli/commands.h"
#include "cli/model_flags.h"
#include "demo/sweep.h"
#include "model/families.h"
#include "util/error.h"

namespace modlm::cli {

Command add_sweep(CLI::App& app) {
  auto o = std::make_shared<demo::SweepOptions>();
  auto budgets = std::make_shared<std::vector<double>>();
  auto sizes = std::make_shared<std::vector<std::string>>();
  auto no_progress = std::make_shared<bool>(false);
  auto families = std::make_shared<std::string>("dense,mod");
  CLI::App* sub = app.add_subcommand("sweep", "Iso-FLOP sweep: dense and MoD at several sizes and FLOP budgets (sweep.html)");
  sub->add_option("--budgets", *budgets, "training FLOPs per run, comma separated, e.g. 3e12,1e13")->delimiter(',')->required();
  sub->add_option("--sizes", *sizes, "model sizes DxL or DxLxHxF, comma separated, e.g. 128x4,192x6,256x8")->delimiter(',')->required();
  sub->add_option("--families", *families, "comma list of dense, mod, moe, mode_staged, mode_integrated")->capture_default_str();
  sub->add_option("--out", o->out, "folder for the runs, sweep.jsonl and sweep.html")->capture_default_str();
  sub->add_option("--data", o->data, "training text (default: the shipped data/train.txt.gz)");
  sub->add_option("--val", o->val, "validation text (default: data/valid.txt.gz)");
  sub->add_option("--vocab-size", o->vocab_size, "SentencePiece vocabulary")->capture_default_str();
  sub->add_option("--seq-len", o->seq_len, "tokens per sequence")->capture_default_str();
  sub->add_option("--batch-size", o->batch_size, "sequences per step")->capture_default_str();
  add_family_flags(*sub, o->family_settings, "Family options");
  sub->add_option("--lr", o->lr, "peak learning rate")->capture_default_str();
  sub->add_option("--eval-windows", o->eval_windows, "validation windows of the final evaluation")->capture_default_str();
  sub->add_flag("--no-progress", *no_progress, "no progress bars");
  sub->footer(
      "Each (budget, size, family) run trains for floor(budget / (3 * batch * forward FLOPs)) steps in OUT/runs/NAME,\n"
      "is evaluated on the validation text, and becomes a line of OUT/sweep.jsonl. A rerun skips the runs already there and\n"
      "resumes an interrupted one (Ctrl-C checkpoints and exits 130). sweep.html draws final loss against parameters, one\n"
      "curve per budget and family, from every line of sweep.jsonl.");
  return {sub, [o, budgets, sizes, no_progress, families]() -> int {
            o->families = parse_families(*families, "--families");
            o->budgets = *budgets;
            o->sizes.clear();
            for (const auto& s : *sizes) o->sizes.push_back(demo::parse_sweep_size(s));
            if (o->seq_len < 2 || o->batch_size < 1 || o->eval_windows < 1) throw usage_error("--seq-len >= 2, --batch-size >= 1, --eval-windows >= 1");
            o->progress = !*no_progress;
            return demo::run_sweep(*o);
          }};
}

}  // namespace modlm::cli
