// `modlm demo`: model families (by default a dense model and its Mixture-of-Depths twin; also
// MoE, staged and integrated MoDE) trained on the same text with the same training-FLOP budget
// (iso-FLOP, as the paper compares them), evaluated, timed, sampled, and drawn: OUT/summary.json
// and OUT/report.html.
//
// OUT/
//   plan.json            the settings and the budget (a rerun with the same settings reuses it)
//   tokenizer/           the SentencePiece tokenizer, trained once
//   <family>/            one train() run folder per family (dense/, mod/, moe/, mode_staged/,
//                        mode_integrated/), reused when finished, resumed when interrupted
//   <family>/demo_eval.json   final evaluation, decode and sample (cached)
//   summary.json, report.html
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/families.h"

namespace modlm::demo {


struct DemoOptions {
  std::string out = "runs/demo";
  std::string data, val;  // empty: the shipped corpus (data/)
  double minutes = 10;     // whole-demo target; sets the budget by calibration
  double budget_flops = 0;  // > 0: this training-FLOP budget per model instead
  // The families to train (model/families.h); the first of them that is "dense" (else the first) is the baseline
  // the others are compared with.
  std::vector<std::string> families = {"dense", "mod"};
  // The dense baseline's shape; the other families add routing and/or experts to it.
  int d_model = 256, n_layers = 8, n_heads = 4, d_ff = 704, vocab_size = 4096;
  FamilySettings family_settings;
  // Training.
  int seq_len = 256, batch_size = 8;
  double lr = 2e-3, min_lr = 2e-4, warmup_fraction = 0.1;
  uint64_t seed = 1;
  int evals = 10;              // validation passes during each run
  int64_t eval_windows = 16;   // windows per validation pass during training
  int64_t final_windows = 96;  // windows of the final top-k / causal evaluations
  int calibration_steps = 3;
  // Decoding.
  int prompt_tokens = 48, new_tokens = 160;
  double temperature = 0.8;
  int top_k = 40;
  bool progress = true;
};

// Runs the demo; returns the exit code (0, or 130 when interrupted). Throws modlm::Error.
int run_demo(const DemoOptions& opt);

}  // namespace modlm::demo
