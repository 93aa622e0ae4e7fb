// The training loop: data, AdamW, schedule, clipping, accumulation, validation, JSONL log,
// checkpoints and exact resume. The CLI's `train` and `demo` both call train().
#pragma once
#include <string>

#include "train/checkpoint.h"
#include "train/train_config.h"

namespace modlm {

struct TrainOptions {
  std::string out_dir;
  std::string data_path, val_path;  // text files (plain or .gz); val may be empty
  RunConfig run;
  bool resume = false;   // continue RUN_DIR from its latest checkpoint (run config from run.json)
  int64_t stop_at = 0;   // stop after this step with a checkpoint (schedule unchanged); 0 = to the end
  bool progress_bar = true;
  bool echo_log = false;  // also print each JSONL line to stdout
};

struct TrainSummary {
  int64_t steps = 0;
  double train_loss = 0;  // LM loss of the last step
  double val_loss = -1;   // last validation loss (-1 if none)
  TrainProgress progress;
  bool interrupted = false;
  std::string checkpoint;  // folder of the final checkpoint: a complete model folder
};

// Throws modlm::Error: bad input before any work starts; a non-finite loss stops the run with
// kExitFailure naming the step (the last good checkpoint stays "latest").
TrainSummary train(const TrainOptions& opt);

// Asks a running train() to checkpoint and return at the end of the current step (signal safe).
void request_training_stop();
void install_stop_signal_handlers();

}  // namespace modlm
