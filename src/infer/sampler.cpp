#include "infer/sampler.h"

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>

#include "util/error.h"

namespace modlm::infer {

namespace {
std::string num(double v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", v);
  return buf;
}
}  // namespace

void validate(const SamplingParams& p) {
  if (!std::isfinite(p.temperature) || p.temperature < 0)
    throw usage_error("--temperature must be a finite number >= 0 (0 = greedy), got " + num(p.temperature));
  if (p.top_k < 0) throw usage_error("--top-k must be >= 0 (0 = off), got " + std::to_string(p.top_k));
  if (!(p.top_p > 0 && p.top_p <= 1))
    throw usage_error("--top-p must be in (0, 1] (1 = off), got " + num(p.top_p));
}

int32_t argmax(const float* x, int V) {
  int32_t best = 0;
  float bv = x[0];
  for (int i = 1; i < V; ++i) {
    const float v = x[i];
    // Strictly greater keeps the lower id on ties; a NaN best is replaced by any number.
    if (v > bv || (std::isnan(bv) && !std::isnan(v))) bv = v, best = i;
  }
  return best;
}

int32_t Sampler::sample(const float* logits, int V) {
  if (p_.is_greedy()) return argmax(logits, V);
  const double invT = 1.0 / p_.temperature;
  auto value = [&](int32_t i) { return std::isnan(logits[i]) ? -INFINITY : (double)logits[i]; };
  // Order: larger logit first, then lower id (a strict total order, so results never depend on
  // the sort implementation).
  auto before = [&](int32_t a, int32_t b) {
    const double va = value(a), vb = value(b);
    return va != vb ? va > vb : a < b;
  };
  const int K = (p_.top_k > 0 && p_.top_k < V) ? p_.top_k : V;
  const bool ordered = K < V || p_.top_p < 1.0;
  idx_.resize(V);
  for (int i = 0; i < V; ++i) idx_[i] = i;
  double mx = -INFINITY;
  for (int i = 0; i < V; ++i) mx = std::max(mx, value(i));
  if (!std::isfinite(mx)) return argmax(logits, V);  // all -inf/NaN: nothing to draw from
  int n = V;  // candidates: idx_[0, n)
  if (ordered) {
    if (K < V) {
      std::nth_element(idx_.begin(), idx_.begin() + K, idx_.end(), before);
      n = K;
    }
    if (p_.top_p < 1.0) {
      // The nucleus is usually small: sort a growing prefix until it holds mass >= top_p.
      double total = 0;
      for (int i = 0; i < n; ++i) total += std::exp((value(idx_[i]) - mx) * invT);
      int sorted = 0;
      for (int m = std::min(n, 64);; m = std::min(n, m * 4)) {
        std::partial_sort(idx_.begin() + sorted, idx_.begin() + m, idx_.begin() + n, before);
        double cum = 0;
        int keep = -1;
        for (int i = 0; i < m; ++i) {
          cum += std::exp((value(idx_[i]) - mx) * invT);
          if (cum >= p_.top_p * total) {
            keep = i + 1;
            break;
          }
        }
        sorted = m;
        if (keep > 0) {
          n = keep;
          break;
        }
        if (m == n) break;  // rounding: keep everything
      }
    } else {
      std::sort(idx_.begin(), idx_.begin() + n, before);
    }
  }
  prob_.resize(n);
  double total = 0;
  for (int i = 0; i < n; ++i) total += (prob_[i] = std::exp((value(idx_[i]) - mx) * invT));
  const double u = rng_.uniform() * total;
  double cum = 0;
  for (int i = 0; i < n; ++i) {
    cum += prob_[i];
    if (u < cum) return idx_[i];
  }
  // u * total rounded up to the total: the last candidate with non-zero probability.
  for (int i = n - 1; i >= 0; --i)
    if (prob_[i] > 0) return idx_[i];
  return idx_[0];
}

}  // namespace modlm::infer
