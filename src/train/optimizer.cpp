#include "train/optimizer.h"

#include <cmath>

namespace modlm {

double learning_rate(const AdamWConfig& c, int64_t step) {
  if (c.warmup_steps > 0 && step < c.warmup_steps) return c.lr * (double)(step + 1) / c.warmup_steps;
  int64_t decay = c.total_steps - c.warmup_steps;
  if (decay <= 0) return c.lr;
  double progress = std::min(1.0, (double)(step - c.warmup_steps) / decay);
  return c.min_lr + 0.5 * (c.lr - c.min_lr) * (1.0 + std::cos(M_PI * progress));
}

void adamw_step(const ParamLayout& layout, const AdamWConfig& c, double lr, float* params, const float* grads,
                AdamWState& s, const std::vector<char>* frozen) {
  s.t += 1;
  const double bc1 = 1.0 - std::pow(c.beta1, (double)s.t), bc2 = 1.0 - std::pow(c.beta2, (double)s.t);
  const float b1 = (float)c.beta1, b2 = (float)c.beta2, eps = (float)c.eps;
  const float step_size = (float)(lr / bc1), inv_bc2_sqrt = (float)(1.0 / std::sqrt(bc2));
  for (size_t pi = 0; pi < layout.params().size(); ++pi) {
    const ParamInfo& p = layout.params()[pi];
    if (frozen && (*frozen)[pi]) continue;
    const float decay = p.decay ? (float)(lr * c.weight_decay) : 0.f;
    float* w = params + p.offset;
    const float* g = grads + p.offset;
    float* m = s.m.data() + p.offset;
    float* v = s.v.data() + p.offset;
    const int64_t n = (int64_t)p.numel;
#pragma omp parallel for schedule(static) if (n > 32768)
    for (int64_t i = 0; i < n; ++i) {
      m[i] = b1 * m[i] + (1 - b1) * g[i];
      v[i] = b2 * v[i] + (1 - b2) * g[i] * g[i];
      float denom = std::sqrt(v[i]) * inv_bc2_sqrt + eps;
      w[i] -= step_size * m[i] / denom + decay * w[i];
    }
  }
}

double grad_norm(const ParamLayout& layout, const float* grads, bool backbone) {
  double ss = 0;
  for (const ParamInfo& p : layout.params()) {
    if (p.backbone != backbone) continue;
    const float* g = grads + p.offset;
    const int64_t n = (int64_t)p.numel;
    // Fixed chunks summed in order: the same result whatever the thread count or timing,
    // which exact resume depends on (an OpenMP reduction may combine in any order).
    constexpr int kChunks = 64;
    double part[kChunks] = {};
#pragma omp parallel for schedule(static) if (n > 32768)
    for (int c = 0; c < kChunks; ++c)
      for (int64_t i = n * c / kChunks; i < n * (c + 1) / kChunks; ++i) part[c] += (double)g[i] * g[i];
    for (double x : part) ss += x;
  }
  return std::sqrt(ss);
}

void scale_grads(const ParamLayout& layout, float* grads, bool backbone, float scale) {
  for (const ParamInfo& p : layout.params()) {
    if (p.backbone != backbone) continue;
    float* g = grads + p.offset;
    for (size_t i = 0; i < p.numel; ++i) g[i] *= scale;
  }
}

}  // namespace modlm
