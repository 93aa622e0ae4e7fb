// A training run's settings: {"model": {...config.json keys...}, "train": {...}}. Unknown keys
// are errors here (a typo must not silently train the wrong thing).
#pragma once
#include <string>

#include "model/config.h"
#include "train/optimizer.h"

namespace modlm {

struct TrainConfig {
  int64_t steps = 1000;
  int batch_size = 8;
  int seq_len = 256;
  int grad_accum = 1;
  AdamWConfig opt;  // lr, min_lr, warmup_steps, weight_decay, beta1, beta2, eps (total_steps = steps)
  double grad_clip = 1.0;  // 0 = off
  uint64_t seed = 1;
  int64_t log_every = 10;
  int64_t eval_every = 100;   // 0 = only at the end
  int64_t eval_windows = 32;  // validation windows per evaluation
  int64_t ckpt_every = 200;   // 0 = only at the end
  int keep_checkpoints = 2;
  std::string tokenizer;  // path of a tokenizer.model; empty: byte model, or train one on the data
  std::string init;       // model folder whose weights the run starts from (fine-tuning); empty: init_weights
  int64_t freeze_backbone_steps = 0;  // steps at the start that update only routers and predictors

  json to_json() const;
  static TrainConfig from_json(const json& j, const std::string& source);
  void validate(const ModelConfig& model, const std::string& source) const;
  int64_t tokens_per_step() const { return (int64_t)batch_size * seq_len * grad_accum; }
};

struct RunConfig {
  ModelConfig model;
  TrainConfig train;
  json to_json() const { return json{{"model", model.to_json()}, {"train", train.to_json()}}; }
  // Strict: unknown keys at the top level, in "model" or in "train" are errors.
  static RunConfig from_json(const json& j, const std::string& source);
};

}  // namespace modlm
