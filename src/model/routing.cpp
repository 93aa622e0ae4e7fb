#include "model/routing.h"

#include <algorithm>
#include <cmath>

namespace modlm {

template <typename T>
std::vector<int> select_topk(const T* s, int n, int k) {
  std::vector<int> idx(n);
  for (int i = 0; i < n; ++i) idx[i] = i;
  k = std::clamp(k, 0, n);
  // A strict total order: larger score first, then lower position; NaN below everything.
  auto before = [s](int a, int b) {
    T sa = s[a], sb = s[b];
    bool na = std::isnan(sa), nb = std::isnan(sb);
    if (na != nb) return nb;
    if (!na && sa != sb) return sa > sb;
    return a < b;
  };
  if (k < n) std::nth_element(idx.begin(), idx.begin() + k, idx.end(), before);
  idx.resize(k);
  std::sort(idx.begin(), idx.end());
  return idx;
}

template <typename T>
std::vector<int> select_token_choice(const T* s, int n, int k) {
  std::vector<int> idx;
  for (int i = 0; i < n && (int)idx.size() < k; ++i)
    if (s[i] > T(0)) idx.push_back(i);
  return idx;
}

template <typename T>
std::vector<int> select_causal(const T* z, int n) {
  std::vector<int> idx;
  for (int i = 0; i < n; ++i)
    if (z[i] > T(0)) idx.push_back(i);
  return idx;
}

template std::vector<int> select_topk<float>(const float*, int, int);
template std::vector<int> select_topk<double>(const double*, int, int);
template std::vector<int> select_token_choice<float>(const float*, int, int);
template std::vector<int> select_token_choice<double>(const double*, int, int);
template std::vector<int> select_causal<float>(const float*, int);
template std::vector<int> select_causal<double>(const double*, int);

}  // namespace modlm
