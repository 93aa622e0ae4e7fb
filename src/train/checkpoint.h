// Training checkpoints (SPEC §6): a model folder plus train_state.safetensors (AdamW moments)
// and train_state.json (step, counters). Written to a temporary folder and renamed into place,
// then RUN_DIR/latest is replaced atomically: a crash at any moment leaves the previous good
// checkpoint as "latest".
#pragma once
#include <optional>
#include <string>

#include "model/model.h"
#include "train/optimizer.h"

namespace modlm {

struct TrainProgress {
  int64_t step = 0;            // optimizer steps done
  int64_t tokens = 0;          // training tokens consumed
  int64_t flops = 0;           // analytic training FLOPs so far (3x forward)
  int64_t flops_executed = 0;  // 3x the forward matrix-product FLOPs actually executed
  double seconds = 0;          // training wall-clock so far (across resumes)
  json to_json() const;
  static TrainProgress from_json(const json& j);
};

// Writes RUN_DIR/ckpt-<step>, points RUN_DIR/latest at it, prunes to `keep` checkpoints.
// `tokenizer_model` (may be empty) is copied in so the checkpoint is a complete model folder.
std::string save_checkpoint(const std::string& run_dir, const Model<float>& model, const AdamWState& adam,
                            const TrainProgress& progress, const std::string& tokenizer_model, int keep);

// The checkpoint folder RUN_DIR/latest names, or nullopt when there is none.
std::optional<std::string> latest_checkpoint(const std::string& run_dir);

// Loads weights, AdamW state and progress from a checkpoint folder into an existing model
// (whose config must match the checkpoint's config.json).
TrainProgress load_checkpoint(const std::string& ckpt_dir, Model<float>& model, AdamWState& adam);

}  // namespace modlm
