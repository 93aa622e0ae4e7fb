// Mixture-of-Experts MLP (SPEC §3), forward and backward, on the packed rows of a layer.
//
// For each row x (the MLP-normed residual) a softmax router over E + n_noop outputs picks the
// top_k largest probabilities (ties to the lower index). Per sequence (seq_offsets) and expert,
// at most C = ceil(capacity_factor * n * top_k / (E + n_noop)) choices are computed, first come
// first served in (choice rank, position) order; the rest are dropped. No-op experts output 0
// and cost nothing. Rows are grouped by expert and each expert runs one SwiGLU product chain on
// its packed rows; each output row is scaled by its (unrenormalised) router probability and
// added to y. The Switch balance loss, per sequence then averaged over the batch, is
//   balance_weight * (E + n_noop) * sum_i f_i P_i
// with f_i the sequence's share of choices of expert i before capacity (a constant) and P_i
// its mean router probability (differentiated).
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/params.h"
#include "tensor/tensor.h"

namespace modlm {

struct MoeDims {
  int D = 0, E = 0, n_noop = 0, d_expert = 0, top_k = 1;
  double capacity_factor = 0;  // 0: no capacity
  double balance_weight = 0;
  int n_gate() const { return E + n_noop; }
  static MoeDims of(const ModelConfig& c);
};

// What one MoE layer did in one forward pass (sums, so batches and micro-batches merge).
struct MoeLayerStats {
  int layer = 0;
  int64_t tokens = 0;          // rows that reached the MoE
  int64_t assignments = 0;     // tokens * top_k choices
  std::vector<int64_t> load;   // [E + n_noop] choices per expert, before capacity
  int64_t dropped = 0;         // choices of real experts dropped by the capacity
  int64_t noop = 0;            // choices of no-op experts
  int64_t computed = 0;        // (row, real expert) pairs the experts computed
  int64_t sequences = 0;       // sequences the balance loss averaged over
  double balance = 0;          // batch mean of (E + n_noop) sum_i f_i P_i (1 = perfectly balanced)
  double balance_loss = 0;     // balance_weight * balance: what this layer adds to the aux loss
  // Adds o's counts; balance and balance_loss become the sequence-weighted means.
  void merge(const MoeLayerStats& o);
};

// Per MoE layer: {layer, tokens, load (fraction of choices per expert, no-ops last),
// dropped_fraction, noop_fraction, balance, balance_loss}.
json moe_stats_json(const std::vector<MoeLayerStats>& stats);

// What the forward pass keeps for the backward pass (one per layer, reused between steps).
template <typename T>
struct MoeActs {
  int n = 0;
  TensorT<T> probs;          // [n, E + n_noop] router softmax
  std::vector<int> choice;   // [n * top_k] chosen expert per (row, rank), rank 0 the most probable
  std::vector<uint8_t> kept; // [n * top_k] 1 if computed (a real expert, within capacity)
  std::vector<int> off;      // [E + 1] each expert's range in the packed rows below
  std::vector<int> rows;     // [M] the row of each packed entry (by expert, then row)
  std::vector<int> slot;     // [n * top_k] the packed entry of each kept choice, -1 otherwise
  TensorT<T> pe;             // [M] its router probability (the output scale)
  TensorT<T> xg, h13, g;     // [M, D] gathered inputs, [M, 2 d_expert] W13 x, [M, d_expert] swiglu
  TensorT<T> out;            // [M, D] expert outputs (forward scratch)
  std::vector<double> frac;  // [B, E + n_noop] f_{s,i} of each sequence
  MoeLayerStats stats;
};

template <typename T>
struct MoeGradScratch {
  TensorT<T> dyg, dg, dh13, dxg, dz;
};

// Top-k of one row of probabilities: the k largest, ties to the lower index, NaN below all.
template <typename T>
void moe_select(const T* probs, int n_gate, int k, int* out);

// Capacity of one sequence: choice [n * top_k] (row t's rank r at t * top_k + r; experts >= E are
// no-ops). Keeps at most C choices per real expert, first come first served in (rank, position)
// order; no-op choices are never kept. C < 0: no capacity. Writes kept [n * top_k].
void moe_capacity_keep(const int* choice, int n, int top_k, int E, int C, uint8_t* kept);

// y[i] += MoE(x[i]) for the n rows x [n, D] (the MLP-normed rows), grouped into sequences by
// seq_offsets; capacity applies only if `capacity` (and capacity_factor > 0). Fills A.stats
// (its `layer` is left to the caller).
template <typename T>
void moe_forward(const LayerWeights<T>& w, const MoeDims& d, const T* x, int n, const std::vector<int>& seq_offsets,
                 bool capacity, MoeActs<T>& A, T* y);

// Given dy = dL/dy, WRITES dx = dL/dx (through the experts, the probability scaling and the
// balance loss, whose own weight in the loss is 1) and ADDS the gate's and experts' gradients.
template <typename T>
void moe_backward(const LayerWeights<T>& w, const LayerWeights<T>& gw, const MoeDims& d, const T* x, int n,
                  const std::vector<int>& seq_offsets, const MoeActs<T>& A, const T* dy, MoeGradScratch<T>& s, T* dx);

}  // namespace modlm
