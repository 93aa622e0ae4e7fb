// AdamW (decoupled weight decay), the learning-rate schedule, and global-norm clipping.
#pragma once
#include <cstdint>
#include <vector>

#include "model/params.h"
#include "tensor/tensor.h"

namespace modlm {

struct AdamWConfig {
  double lr = 3e-3, min_lr = 3e-4;
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8;
  double weight_decay = 0.1;
  int64_t warmup_steps = 100, total_steps = 1000;
};

// Linear warm-up from 0 to lr over warmup_steps, then cosine decay to min_lr at total_steps.
// `step` is 0-based: the rate for the update that makes step+1.
double learning_rate(const AdamWConfig& c, int64_t step);

// Moments for every element of the flat parameter buffer.
struct AdamWState {
  AlignedVector<float> m, v;
  int64_t t = 0;  // updates done
  void resize(size_t n) { m.assign(n, 0.f), v.assign(n, 0.f); }
};

// One update: p -= lr * (mhat / (sqrt(vhat) + eps) + wd * p) with wd only where ParamInfo.decay.
// `frozen` (one flag per layout.params() entry, or null): those tensors, and their moments, are
// left exactly as they are.
void adamw_step(const ParamLayout& layout, const AdamWConfig& c, double lr, float* params, const float* grads,
                AdamWState& s, const std::vector<char>* frozen = nullptr);

// Global L2 norm of the gradients of the listed parameters (backbone or predictor), in double.
double grad_norm(const ParamLayout& layout, const float* grads, bool backbone);
// Multiplies those gradients by `scale`.
void scale_grads(const ParamLayout& layout, float* grads, bool backbone, float scale);

}  // namespace modlm
