#include "train/evaluate.h"

#include <chrono>
#include <cstring>

#include "model/flops.h"
#include "ops/gemm.h"
#include "util/error.h"

namespace modlm {

nlohmann::ordered_json routed_summary_json(const std::vector<RoutedLayerSummary>& routed) {
  nlohmann::ordered_json layers = nlohmann::ordered_json::array();
  for (const auto& s : routed)
    layers.push_back({{"layer", s.layer},
                      {"processed_fraction", s.processed_fraction},
                      {"mean_gate", s.mean_gate},
                      {"decision_accuracy", s.decision_accuracy},
                      {"decision_loss", s.decision_loss}});
  return layers;
}

TokenSpan TokenSpan::of(const std::vector<int32_t>& v) {
  TokenSpan s;
  s.size = v.size();
  s.copy = [&v](size_t b, size_t c, int32_t* d) { std::memcpy(d, v.data() + b, c * sizeof(int32_t)); };
  return s;
}

EvalResult evaluate(Model<float>& model, const TokenSpan& ids, int T, int64_t max_windows, RouteMode mode, int batch,
                    Progress* progress) {
  if (T < 1) throw bad_input("sequence length must be >= 1");
  if (T > model.config().max_seq_len)
    throw bad_input("sequence length " + std::to_string(T) + " exceeds the model's max_seq_len " +
                    std::to_string(model.config().max_seq_len));
  int64_t avail = count_windows(ids.size, T);
  if (avail < 1)
    throw bad_input("the data has " + std::to_string(ids.size) + " tokens, fewer than one window of seq-len + 1 = " +
                    std::to_string(T + 1));
  int64_t W = max_windows > 0 ? std::min(max_windows, avail) : avail;
  batch = std::max(1, (int)std::min<int64_t>(batch, W));
  auto t0 = std::chrono::steady_clock::now();
  EvalResult r;
  std::vector<int32_t> window((size_t)batch * (T + 1)), tok((size_t)batch * T), tgt((size_t)batch * T);
  std::vector<RoutedLayerStats> acc;
  double loss_sum = 0;
  int64_t before = ops::FlopCounter::total().load();
  for (int64_t w0 = 0; w0 < W; w0 += batch) {
    int B = (int)std::min<int64_t>(batch, W - w0);
    ids.copy((size_t)w0 * (T + 1), (size_t)B * (T + 1), window.data());
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t) {
        tok[(size_t)b * T + t] = window[(size_t)b * (T + 1) + t];
        tgt[(size_t)b * T + t] = window[(size_t)b * (T + 1) + t + 1];
      }
    ForwardOptions opt;
    opt.mode = mode;
    ForwardResult fr = model.forward(tok.data(), tgt.data(), B, T, opt);
    loss_sum += fr.lm_loss * B * T;
    if (acc.empty()) acc.resize(fr.routed.size());
    for (size_t i = 0; i < fr.routed.size(); ++i) {
      const RoutedLayerStats& s = fr.routed[i];
      acc[i].layer = s.layer;
      acc[i].tokens += s.tokens;
      acc[i].processed += s.processed;
      acc[i].gate_sum += s.gate_sum;
      acc[i].decision_correct += s.decision_correct;
      acc[i].decision_loss += s.decision_loss * s.tokens;
    }
    if (r.moe.empty()) r.moe.resize(fr.moe.size());
    for (size_t i = 0; i < fr.moe.size(); ++i) r.moe[i].merge(fr.moe[i]);
    if (progress) progress->update(w0 + B);
  }
  r.flops_executed = ops::FlopCounter::total().load() - before;
  r.windows = W;
  r.tokens = W * T;
  r.loss = loss_sum / r.tokens;
  r.flops_analytic = W * analytic_forward_flops(model.config(), T).total();
  for (const auto& a : acc) {
    RoutedLayerSummary s;
    s.layer = a.layer;
    s.processed_fraction = a.tokens ? (double)a.processed / a.tokens : 0;
    s.mean_gate = a.processed ? a.gate_sum / a.processed : 0;
    s.decision_accuracy = a.tokens ? (double)a.decision_correct / a.tokens : 0;
    s.decision_loss = a.tokens ? a.decision_loss / a.tokens : 0;
    r.routed.push_back(s);
  }
  r.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return r;
}

}  // namespace modlm
