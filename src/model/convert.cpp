#include "model/convert.h"

#include <algorithm>
#include <cmath>

#include "ops/gemm.h"
#include "util/error.h"

namespace modlm {

namespace {

// Solves (A) x = b for a symmetric positive definite A [n, n] (overwritten by its Cholesky factor).
bool cholesky_solve(std::vector<double>& A, std::vector<double>& b, int n) {
  for (int j = 0; j < n; ++j) {
    double d = A[(size_t)j * n + j];
    for (int k = 0; k < j; ++k) d -= A[(size_t)j * n + k] * A[(size_t)j * n + k];
    if (!(d > 0)) return false;
    const double ljj = std::sqrt(d);
    A[(size_t)j * n + j] = ljj;
#pragma omp parallel for schedule(static) if (n - j > 256)
    for (int i = j + 1; i < n; ++i) {
      double s = A[(size_t)i * n + j];
      const double* ai = &A[(size_t)i * n];
      const double* aj = &A[(size_t)j * n];
      for (int k = 0; k < j; ++k) s -= ai[k] * aj[k];
      A[(size_t)i * n + j] = s / ljj;
    }
  }
  for (int i = 0; i < n; ++i) {  // L y = b
    double s = b[i];
    for (int k = 0; k < i; ++k) s -= A[(size_t)i * n + k] * b[k];
    b[i] = s / A[(size_t)i * n + i];
  }
  for (int i = n - 1; i >= 0; --i) {  // L^T x = y
    double s = b[i];
    for (int k = i + 1; k < n; ++k) s -= A[(size_t)k * n + i] * b[k];
    b[i] = s / A[(size_t)i * n + i];
  }
  return true;
}

}  // namespace

Model<float> convert_to_mod(Model<float>& dense, const ConvertOptions& o, const std::vector<int32_t>& calib, int B, int T,
                            std::vector<ConvertLayerReport>* report) {
  const ModelConfig& dc = dense.config();
  if (dc.n_routed() > 0) throw bad_input("the model is already routed (MoD): convert starts from a dense model");
  if (dc.n_moe() > 0) throw bad_input("the model has Mixture-of-Experts layers: convert starts from a dense model");
  if (!(o.capacity > 0 && o.capacity <= 1)) throw usage_error("--capacity must be in (0, 1], got " + std::to_string(o.capacity));
  if (o.predictor && o.predictor_hidden < 2)
    throw usage_error("--predictor-hidden must be >= 2 (two units carry the router's score), got " + std::to_string(o.predictor_hidden));
  if (B < 1 || T < 2 || (int64_t)calib.size() != (int64_t)B * T) throw bad_input("convert: need at least one calibration sequence of >= 2 tokens");
  json j = dc.to_json();
  j["routing"] = {{"layers", o.layers},         {"capacity", o.capacity},
                  {"method", "expert_choice"}, {"gate", "sigmoid"},
                  {"causal", o.predictor ? "predictor" : "aux_loss"}, {"predictor_hidden", o.predictor_hidden}};
  const ModelConfig mc = ModelConfig::from_json(j, "convert");
  if (mc.n_routed() == 0) throw usage_error("--routing selects no layer: nothing to convert");
  Model<float> m(mc);
  m.init_weights(o.seed);  // the new tensors' starting point; the dense ones are copied next
  for (const ParamInfo& p : dense.layout().params()) {
    const ParamInfo& q = m.layout().get(p.name);
    std::copy(dense.params().data() + p.offset, dense.params().data() + p.offset + p.numel, m.params().data() + q.offset);
  }

  if (!o.fit) return m;
  dense.forward(calib.data(), nullptr, B, T, ForwardOptions{});
  const int n = B * T, D = dc.d_model;
  for (int l = 0; l < mc.n_layers; ++l) {
    if (!mc.routed(l)) continue;
    const float* X = dense.residual(l);
    const float* Y = dense.residual(l + 1);
    std::vector<double> z(n), Xd((size_t)n * D);
    for (int t = 0; t < n; ++t) {
      double dx = 0, xx = 0;
      for (int d = 0; d < D; ++d) {
        const double x = X[(size_t)t * D + d], y = Y[(size_t)t * D + d];
        Xd[(size_t)t * D + d] = x;
        dx += (y - x) * (y - x);
        xx += x * x;
      }
      z[t] = std::sqrt(dx) / std::max(std::sqrt(xx), 1e-12);
    }
    double mean = 0, var = 0;
    for (double v : z) mean += v / n;
    for (double v : z) var += (v - mean) * (v - mean) / n;
    const double sd = std::sqrt(var);
    for (double& v : z) v = sd > 0 ? (v - mean) / sd : 0.0;
    // Ridge regression w = (X^T X + lambda I)^-1 X^T z.
    std::vector<double> A((size_t)D * D), b(D, 0.0);
    ops::gemm_uncounted<double>(true, false, D, D, n, 1.0, Xd.data(), D, Xd.data(), D, 0.0, A.data(), D);
    double trace = 0;
    for (int d = 0; d < D; ++d) trace += A[(size_t)d * D + d];
    const double lambda = 1e-3 * trace / D + 1e-12;
    for (int d = 0; d < D; ++d) A[(size_t)d * D + d] += lambda;
    for (int t = 0; t < n; ++t)
      for (int d = 0; d < D; ++d) b[d] += Xd[(size_t)t * D + d] * z[t];
    if (!cholesky_solve(A, b, D)) std::fill(b.begin(), b.end(), 0.0);
    std::vector<double> r(n);
    double sse = 0, sst = 0, rm = 0, rv = 0;
    for (int t = 0; t < n; ++t) {
      double s = 0;
      for (int d = 0; d < D; ++d) s += b[d] * Xd[(size_t)t * D + d];
      r[t] = s;
      sse += (s - z[t]) * (s - z[t]);
      sst += z[t] * z[t];
      rm += s / n;
    }
    for (double v : r) rv += (v - rm) * (v - rm) / n;
    // Threshold between the k-th and (k+1)-th largest score, k = ceil(c n).
    std::vector<double> sorted = r;
    std::sort(sorted.begin(), sorted.end());
    const int k = routed_capacity(o.capacity, n);
    const double hi = sorted[n - k], lo = k < n ? sorted[n - k - 1] : hi - 1.0;
    const double q = 0.5 * (hi + lo);
    const double rsd = std::sqrt(rv);
    const double scale = q > 1e-6 * std::max(rsd, 1e-30) ? 3.0 / q : 3.0 / std::max(rsd, 1e-30);
    const LayerTensorNames names = LayerTensorNames::of(mc, l);
    float* w = m.param(names.router);
    for (int d = 0; d < D; ++d) w[d] = (float)(scale * b[d]);
    int passed = 0;
    for (double v : r) passed += scale * (v - q) > 0;
    if (mc.routing.causal == "predictor") {
      const int Hp = mc.routing.predictor_hidden;
      float* fc1 = m.param(names.pred_fc1_w);
      float* fc1b = m.param(names.pred_fc1_b);
      float* fc2 = m.param(names.pred_fc2_w);
      for (int d = 0; d < D; ++d) fc1[d] = w[d], fc1[D + d] = -w[d];
      fc1b[0] = fc1b[1] = 0.f;
      std::fill(fc2, fc2 + Hp, 0.f);
      fc2[0] = 1.f, fc2[1] = -1.f;
      m.param(names.pred_fc2_b)[0] = (float)(-scale * q);
    }
    if (report)
      report->push_back({l, sst > 0 ? 1.0 - sse / sst : 0.0, q, scale, (double)passed / n});
  }
  return m;
}

}  // namespace modlm
