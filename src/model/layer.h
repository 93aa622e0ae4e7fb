// The dense transformer layer of SPEC §1, forward and backward, on a PACKED batch of rows:
//   x [n, D] rows of several sequences, pos [n] their positions, seq_offsets [B+1].
// Dense training passes every token; a routed (MoD) layer passes the gathered top-k rows with
// their original positions. The layer itself never knows which.
#pragma once
#include <cstdint>
#include <vector>

#include "model/config.h"
#include "model/moe.h"
#include "model/params.h"
#include "ops/attention.h"
#include "ops/rope.h"
#include "tensor/tensor.h"

namespace modlm {

struct LayerDims {
  int D = 0, H = 0, Dh = 0, F = 0;
  double eps = 1e-5;
  MoeDims moe;  // used by layers whose weights have an MoE (LayerWeights::moe_gate)
  int Hkv = 0;  // key/value heads (grouped-query attention); 0 = H
  int kv_heads() const { return Hkv > 0 ? Hkv : H; }
  int Dkv() const { return kv_heads() * Dh; }
  int Dqkv() const { return D + 2 * Dkv(); }  // width of the fused q|k|v rows
  ops::AttnShape attn() const { return {H, Dh, kv_heads()}; }
  static LayerDims of(const ModelConfig& c) {
    return {c.d_model, c.n_heads, c.head_dim(), c.d_ff, c.norm_eps, MoeDims::of(c), c.kv_heads()};
  }
};

// What the forward pass keeps for the backward pass (sized for the rows of one step, reused).
template <typename T>
struct LayerActs {
  int n = 0;
  TensorT<T> xn1, inv1;  // attention RMSNorm output [n, D] and 1/rms [n]
  TensorT<T> qkv;        // [n, D + 2 Dkv] post-RoPE q, k and v
  TensorT<T> att, lse;   // attention output before wo [n, D]; log-sum-exp [n, H]
  TensorT<T> a;          // residual after attention [n, D]
  TensorT<T> xn2, inv2;  // MLP RMSNorm output [n, D] and 1/rms [n]
  TensorT<T> h13, g;     // [W1 x | W3 x] [n, 2F]; silu(W1 x) * W3 x [n, F] (dense MLP only)
  MoeActs<T> moe;        // the MoE's state, in an MoE layer
  void resize(int n, const LayerDims& d, bool dense_mlp = true);
};

// Scratch for the backward pass, shared by all layers.
template <typename T>
struct LayerGradScratch {
  TensorT<T> da, dg, dh13, dxn, datt, dqkv;
  MoeGradScratch<T> moe;
  void resize(int n, const LayerDims& d);
};

// y = x + Attn(RMSNorm(x)); y += MLP(RMSNorm(y)). x and y may not alias. In an MoE layer
// (w.moe_gate set) the MLP is the MoE of moe.h; `moe_capacity` = false turns its capacity off
// (generation and causal evaluation).
template <typename T>
void layer_forward(const LayerWeights<T>& w, const LayerDims& d, const ops::RopeTable<T>& rope, const T* x, int n,
                   const int32_t* pos, const std::vector<int>& seq_offsets, LayerActs<T>& acts, T* y,
                   bool moe_capacity = true);

// Given dy = dL/dy, writes dx = dL/dx and ADDS the weight gradients into gw.
template <typename T>
void layer_backward(const LayerWeights<T>& w, const LayerWeights<T>& gw, const LayerDims& d,
                    const ops::RopeTable<T>& rope, const T* x, int n, const int32_t* pos,
                    const std::vector<int>& seq_offsets, const LayerActs<T>& acts, const T* dy,
                    LayerGradScratch<T>& s, T* dx);

}  // namespace modlm
