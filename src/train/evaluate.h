// Evaluation over a token stream with SPEC §4 windows: ids[i*(T+1) : (i+1)*(T+1)], the first N
// complete windows, mean next-token cross-entropy in nats.
#pragma once
#include <cstdint>
#include <functional>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/model.h"
#include "util/progress.h"

namespace modlm {

// Read access to a stream of token ids (a memory-mapped token file, or a vector).
struct TokenSpan {
  size_t size = 0;
  std::function<void(size_t begin, size_t count, int32_t* dst)> copy;
  static TokenSpan of(const std::vector<int32_t>& v);
};

struct RoutedLayerSummary {
  int layer = 0;
  double processed_fraction = 0;  // processed / tokens
  double mean_gate = 0;           // over processed tokens
  double decision_accuracy = 0;   // causal decision vs top-k target
  double decision_loss = 0;       // BCE of the decision logit
};

struct EvalResult {
  double loss = 0;  // mean LM cross-entropy (nats)
  int64_t tokens = 0, windows = 0;
  int64_t flops_executed = 0;  // matrix-product FLOPs the forward passes executed
  int64_t flops_analytic = 0;  // SPEC §5 static count for the same windows (top-k routing)
  double seconds = 0;
  std::vector<RoutedLayerSummary> routed;
  std::vector<MoeLayerStats> moe;  // per MoE layer, summed over the windows (moe_stats_json)
};

// Per routed layer: layer, processed_fraction, mean_gate, decision_accuracy, decision_loss.
nlohmann::ordered_json routed_summary_json(const std::vector<RoutedLayerSummary>& routed);

// Windows available in a stream of `n_ids` tokens for sequence length T.
inline int64_t count_windows(size_t n_ids, int T) { return (int64_t)(n_ids / (size_t)(T + 1)); }

// Evaluates the first `max_windows` windows (all if <= 0), `batch` windows per forward.
EvalResult evaluate(Model<float>& model, const TokenSpan& ids, int T, int64_t max_windows, RouteMode mode,
                    int batch = 8, Progress* progress = nullptr);

}  // namespace modlm
