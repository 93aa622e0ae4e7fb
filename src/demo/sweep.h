// `modlm sweep`: an iso-FLOP sweep. For every training-FLOP budget and model size, each family
// (model/families.h: by default a dense model and its MoD twin) trains with exactly that budget (steps = budget / (3 * batch * forward FLOPs));
// each finished run is evaluated once and appended to OUT/sweep.jsonl, and OUT/sweep.html draws
// final loss against parameters, one curve per budget and family (the paper's iso-FLOP analysis).
// A rerun skips runs already in sweep.jsonl and resumes interrupted ones.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "model/families.h"

namespace modlm::demo {

struct SweepSize {
  int d_model = 256, n_layers = 8, n_heads = 4, d_ff = 704;
};
// "DxL" (heads = max(1, D/64), d_ff = 2.75 D rounded to a multiple of 32) or "DxLxHxF".
SweepSize parse_sweep_size(const std::string& s);

struct SweepOptions {
  std::vector<double> budgets;
  std::vector<SweepSize> sizes;
  std::vector<std::string> families = {"dense", "mod"};
  std::string out = "runs/sweep";
  std::string data, val;  // empty: the shipped corpus
  int vocab_size = 4096, seq_len = 256, batch_size = 8;
  FamilySettings family_settings;  // how mod, moe, mode_staged and mode_integrated differ from dense
  double lr = 2e-3, min_lr = 2e-4, warmup_fraction = 0.1;
  uint64_t seed = 1;
  int64_t eval_windows = 64;  // final evaluation
  bool progress = true;
};

// Returns the exit code (0, or 130 when interrupted). Throws modlm::Error.
int run_sweep(const SweepOptions& opt);

}  // namespace modlm::demo
