// What `modlm demo` and `modlm sweep` share: the default corpus, a cached tokenizer, training
// runs that are reused when finished and resumed when interrupted, their logs, calibration,
// and a clean stop on Ctrl-C.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "io/token_file.h"
#include "io/tokenizer.h"
#include "model/config.h"
#include "train/evaluate.h"
#include "train/trainer.h"

namespace modlm::demo {

// The shipped corpus (data/train.txt.gz, data/valid.txt.gz): $MODLM_DATA_DIR, ./data, or data/
// next to (or above) the binary, or share/modlm/data beside its bin/. usage_error if none.
struct Corpus {
  std::string train, val;
};
Corpus default_corpus();

// SIGINT / SIGTERM set a flag and ask a running train() to checkpoint and return.
void install_stop_handlers();
bool stop_requested();
// Throws Error(kExitInterrupted) when a stop was requested.
void check_stop();

// A SentencePiece tokenizer trained on `train_text` with `vocab_size` ids, cached as
// dir/tokenizer.model (with dir/tokenizer.json naming the text and size it was made from).
// Returns the path of tokenizer.model.
std::string prepare_tokenizer(const std::string& dir, const std::string& train_text, int vocab_size);

// Tokens of a text under a tokenizer (the token cache next to the text).
struct Tokens {
  std::shared_ptr<io::TokenFile> file;
  TokenSpan span;
};
Tokens load_tokens(const std::string& text, const io::Tokenizer& tok);

// Where a run folder stands.
struct RunStatus {
  bool exists = false;    // run.json present
  bool finished = false;  // its latest checkpoint is at the last step
  int64_t step = 0;       // step of the latest checkpoint (0 if none)
  std::string checkpoint;  // latest checkpoint folder ("" if none)
  TrainProgress progress;  // of the latest checkpoint
};
RunStatus run_status(const std::string& run_dir);

struct RunOutcome {
  std::string checkpoint;
  TrainProgress progress;
  bool reused = false;       // finished before: nothing trained now
  bool resumed = false;      // continued from a checkpoint
  bool interrupted = false;  // stopped by Ctrl-C (checkpointed)
};
// Trains `run` in run_dir, resumes it from its latest checkpoint, or reuses it when finished.
// A run folder made with another config or other data is an error naming it.
RunOutcome train_or_resume(const std::string& run_dir, const RunConfig& run, const std::string& data,
                           const std::string& val, bool progress_bar);

// The lines of a run's log.jsonl (torn or empty lines skipped).
std::vector<json> read_log(const std::string& run_dir);

// Parameter count (every tensor once; tied embeddings once).
int64_t count_params(const ModelConfig& cfg);

// Seconds per training step (forward + backward + AdamW) of a model of this config on batches of
// real windows; the fastest of `reps` steps after one warm-up step.
double time_train_step(const ModelConfig& cfg, int batch, int seq_len, const TokenSpan& data, int reps, bool progress_bar);

// Number formatting for names: 1e13 -> "1e13", 2.5e12 -> "2.5e12".
std::string short_number(double v);

// Writes text to path atomically.
void write_text(const std::string& path, const std::string& text);

}  // namespace modlm::demo
