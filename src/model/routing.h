// Routing decisions of a Mixture-of-Depths layer (SPEC §2): which rows of a sequence a routed
// block processes. Pure functions over one sequence's scores; the model applies them.
#pragma once
#include <cstdint>
#include <vector>

namespace modlm {

// The k largest scores (ties: lower position first), returned sorted by position.
// O(T) on average (nth_element); NaN scores count as the smallest.
template <typename T>
std::vector<int> select_topk(const T* scores, int T_len, int k);

// Token choice: positions with score > 0, first come first served, at most k; sorted.
template <typename T>
std::vector<int> select_token_choice(const T* scores, int T_len, int k);

// Positions whose decision logit is > 0 (probability > 0.5): the causal decision, no capacity.
template <typename T>
std::vector<int> select_causal(const T* logits, int T_len);

}  // namespace modlm
