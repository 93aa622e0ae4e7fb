// Finite-difference helpers for the gradient tests (double precision: central differences
// with h = 1e-6 agree with an exact gradient to ~1e-8 relative).
#pragma once
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <vector>

#include "util/rng.h"

namespace modlm::testing {

inline std::vector<double> random_vec(size_t n, uint64_t seed, double scale = 1.0) {
  Rng r(seed);
  std::vector<double> v(n);
  for (auto& x : v) x = scale * (2 * r.uniform() - 1);
  return v;
}

// Checks analytic[i] against d loss / d x[i] for the listed indices (all if empty).
inline void expect_grad_matches(std::vector<double>& x, const std::vector<double>& analytic,
                                const std::function<double()>& loss, const char* what,
                                std::vector<size_t> indices = {}, double h = 1e-6, double rtol = 1e-5,
                                double atol = 1e-9) {
  if (indices.empty())
    for (size_t i = 0; i < x.size(); ++i) indices.push_back(i);
  for (size_t i : indices) {
    double keep = x[i];
    x[i] = keep + h;
    double lp = loss();
    x[i] = keep - h;
    double lm = loss();
    x[i] = keep;
    double fd = (lp - lm) / (2 * h);
    EXPECT_NEAR(analytic[i], fd, atol + rtol * std::max(std::abs(fd), std::abs(analytic[i])))
        << what << " index " << i;
  }
}

}  // namespace modlm::testing
