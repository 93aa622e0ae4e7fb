#include "model/layer.h"

#include <cstring>

#include "ops/copy.h"
#include "ops/gemm.h"
#include "ops/rmsnorm.h"
#include "ops/swiglu.h"
#include "util/profile.h"

namespace modlm {

using namespace ops;

template <typename T>
void LayerActs<T>::resize(int n_, const LayerDims& d, bool dense_mlp) {
  n = n_;
  xn1.resize({n, d.D});
  inv1.resize({n});
  qkv.resize({n, d.Dqkv()});
  att.resize({n, d.D});
  lse.resize({n, d.H});
  a.resize({n, d.D});
  xn2.resize({n, d.D});
  inv2.resize({n});
  if (dense_mlp) {
    h13.resize({n, 2 * d.F});
    g.resize({n, d.F});
  }
}

template <typename T>
void LayerGradScratch<T>::resize(int n, const LayerDims& d) {
  da.resize({n, d.D});
  dg.resize({n, d.F});
  dh13.resize({n, 2 * d.F});
  dxn.resize({n, d.D});
  datt.resize({n, d.D});
  dqkv.resize({n, d.Dqkv()});
}

template <typename T>
void layer_forward(const LayerWeights<T>& w, const LayerDims& d, const RopeTable<T>& rope, const T* x, int n,
                   const int32_t* pos, const std::vector<int>& seqs, LayerActs<T>& A, T* y, bool moe_capacity) {
  const int D = d.D, F = d.F, Q = d.Dqkv();
  A.resize(n, d, w.moe_gate == nullptr);
  // Attention half.
  {
    profile::Scope p("fwd.norm+rope+copy");
    rmsnorm_forward<T>(x, D, w.attn_norm, n, D, T(d.eps), A.xn1.data(), D, A.inv1.data());
  }
  {
    profile::Scope p("fwd.gemm.qkv");
    linear_forward<T>(A.xn1.data(), D, w.wqkv, n, D, Q, A.qkv.data(), Q);
  }
  {
    profile::Scope p("fwd.norm+rope+copy");
    rope_forward<T>(A.qkv.data(), Q, n, d.H, d.Dh, pos, rope);                // q
    rope_forward<T>(A.qkv.data() + D, Q, n, d.kv_heads(), d.Dh, pos, rope);  // k
  }
  {
    profile::Scope p("fwd.attention");
    attention_forward<T>(A.qkv.data(), Q, seqs, d.attn(), A.att.data(), D, A.lse.data());
  }
  {
    profile::Scope p("fwd.gemm.wo");
    parallel_copy(x, A.a.data(), (size_t)n * D);
    linear_forward<T>(A.att.data(), D, w.wo, n, D, D, A.a.data(), D, /*accumulate=*/true);
  }
  // MLP half.
  {
    profile::Scope p("fwd.norm+rope+copy");
    rmsnorm_forward<T>(A.a.data(), D, w.mlp_norm, n, D, T(d.eps), A.xn2.data(), D, A.inv2.data());
  }
  if (w.moe_gate) {
    parallel_copy(A.a.data(), y, (size_t)n * D);
    moe_forward<T>(w, d.moe, A.xn2.data(), n, seqs, moe_capacity, A.moe, y);
    return;
  }
  {
    profile::Scope p("fwd.gemm.w13");
    linear_forward<T>(A.xn2.data(), D, w.w13, n, D, 2 * F, A.h13.data(), 2 * F);
  }
  {
    profile::Scope p("fwd.swiglu");
    swiglu_forward<T>(A.h13.data(), n, F, A.g.data());
  }
  profile::Scope p("fwd.gemm.w2");
  parallel_copy(A.a.data(), y, (size_t)n * D);
  linear_forward<T>(A.g.data(), F, w.w2, n, F, D, y, D, /*accumulate=*/true);
}

template <typename T>
void layer_backward(const LayerWeights<T>& w, const LayerWeights<T>& gw, const LayerDims& d,
                    const RopeTable<T>& rope, const T* x, int n, const int32_t* pos, const std::vector<int>& seqs,
                    const LayerActs<T>& A, const T* dy, LayerGradScratch<T>& s, T* dx) {
  const int D = d.D, F = d.F, Q = d.Dqkv();
  s.resize(n, d);
  // MLP half: y = a + W2 g, g = swiglu(W13 xn2), xn2 = norm(a).
  profile::Scope p_all("bwd.layer (total)");
  if (w.moe_gate) {
    moe_backward<T>(w, gw, d.moe, A.xn2.data(), n, seqs, A.moe, dy, s.moe, s.dxn.data());
  } else {
    linear_backward_weight<T>(dy, D, A.g.data(), F, n, F, D, gw.w2);
    linear_backward_input<T>(dy, D, w.w2, n, F, D, s.dg.data(), F, false);
    {
      profile::Scope p("bwd.swiglu");
      swiglu_backward<T>(s.dg.data(), A.h13.data(), n, F, s.dh13.data());
    }
    linear_backward_weight<T>(s.dh13.data(), 2 * F, A.xn2.data(), D, n, D, 2 * F, gw.w13);
    linear_backward_input<T>(s.dh13.data(), 2 * F, w.w13, n, D, 2 * F, s.dxn.data(), D, false);
  }
  parallel_copy(dy, s.da.data(), (size_t)n * D);  // residual path
  rmsnorm_backward<T>(s.dxn.data(), D, A.a.data(), D, w.mlp_norm, A.inv2.data(), n, D, s.da.data(), D, true,
                      gw.mlp_norm);
  // Attention half: a = x + Wo att, att = attn(rope(W13 xn1)), xn1 = norm(x).
  linear_backward_weight<T>(s.da.data(), D, A.att.data(), D, n, D, D, gw.wo);
  linear_backward_input<T>(s.da.data(), D, w.wo, n, D, D, s.datt.data(), D, false);
  {
    profile::Scope p("bwd.attention");
    attention_backward<T>(A.qkv.data(), Q, A.att.data(), D, A.lse.data(), s.datt.data(), D, seqs, d.attn(),
                          s.dqkv.data());
  }
  rope_backward<T>(s.dqkv.data(), Q, n, d.H, d.Dh, pos, rope);
  rope_backward<T>(s.dqkv.data() + D, Q, n, d.kv_heads(), d.Dh, pos, rope);
  linear_backward_weight<T>(s.dqkv.data(), Q, A.xn1.data(), D, n, D, Q, gw.wqkv);
  linear_backward_input<T>(s.dqkv.data(), Q, w.wqkv, n, D, Q, s.dxn.data(), D, false);
  parallel_copy(s.da.data(), dx, (size_t)n * D);
  rmsnorm_backward<T>(s.dxn.data(), D, x, D, w.attn_norm, A.inv1.data(), n, D, dx, D, true, gw.attn_norm);
}

template struct LayerActs<float>;
template struct LayerActs<double>;
template struct LayerGradScratch<float>;
template struct LayerGradScratch<double>;
template void layer_forward<float>(const LayerWeights<float>&, const LayerDims&, const RopeTable<float>&,
                                   const float*, int, const int32_t*, const std::vector<int>&, LayerActs<float>&,
                                   float*, bool);
template void layer_forward<double>(const LayerWeights<double>&, const LayerDims&, const RopeTable<double>&,
                                    const double*, int, const int32_t*, const std::vector<int>&,
                                    LayerActs<double>&, double*, bool);
template void layer_backward<float>(const LayerWeights<float>&, const LayerWeights<float>&, const LayerDims&,
                                    const RopeTable<float>&, const float*, int, const int32_t*,
                                    const std::vector<int>&, const LayerActs<float>&, const float*,
                                    LayerGradScratch<float>&, float*);
template void layer_backward<double>(const LayerWeights<double>&, const LayerWeights<double>&, const LayerDims&,
                                     const RopeTable<double>&, const double*, int, const int32_t*,
                                     const std::vector<int>&, const LayerActs<double>&, const double*,
                                     LayerGradScratch<double>&, double*);

}  // namespace modlm
