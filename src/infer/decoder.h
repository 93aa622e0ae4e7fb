// Autoregressive decoding with a KV cache (SPEC §1-§3), for dense, Mixture-of-Depths and
// Mixture-of-Experts models (MoE, staged and integrated MoDE).
//
//  - prefill: all prompt tokens of several sequences in ONE packed forward (the model's own
//    layer_forward on packed rows, GEMMs), keeping each layer's post-RoPE keys and values;
//  - step: one new token for each of several sequences: matrix-vector products that read each
//    weight once for the whole batch (infer/matvec.h), attention over the cache.
//
// Routed layers decide causally (SPEC §2 "Causal decision"): token t is processed in routed
// layer l iff its decision probability > 0.5 (the predictor's p_t for causal = "predictor",
// else sigmoid(r_t)), i.e. iff the decision logit > 0. A processed token becomes
// h + gate(r_t) * (Block(h) - h) (gate: sigmoid(r), r for "linear", 1 for "stochastic"), computed
// exactly as Model::routed_forward does, and is appended to that layer's cache at its original
// position; a skipped token passes unchanged and is not a key/value of that layer. The result
// equals Model::forward with RouteMode::Causal on the whole sequence (tests/test_generate.cpp).
//
// An MoE layer (and the MoE of a routed layer, staged MoDE) runs its experts on the rows that
// reach it with NO capacity (SPEC §3): every token goes to its top_k experts, no-op experts
// (integrated MoDE) add 0 and cost nothing; causal evaluation turns capacity off the same way.
#pragma once
#include <cmath>
#include <cstdint>
#include <vector>

#include "infer/kv_cache.h"
#include "infer/weights.h"
#include "model/layer.h"
#include "model/model.h"
#include "model/params.h"
#include "ops/rope.h"
#include "tensor/tensor.h"

namespace modlm::infer {

// What one routed layer decided for one token.
struct RouteRecord {
  bool processed = false;
  float router_logit = 0;    // r_t = w_r . h_t
  float gate = 0;            // gate(r_t): the scale a processed token's block output gets
  float decision_logit = 0;  // the predictor's logit (causal = "predictor"), else r_t
  double decision_prob() const { return 1.0 / (1.0 + std::exp(-(double)decision_logit)); }
};

// The weights a decode step streams: float (the model's own), or bf16 / f16 / q8 copies of its
// matrices (infer/weights.h). From a Model, the prefill runs the model's float weights; round
// them first (round_weights_to) for a model whose prefill and steps use the same numbers.
using DecodeWeights = MatFormat;

// The KV cache's element type: float, or bf16 (half the bytes per past token a step reads; keys and
// values rounded to 8 significant bits, so logits move slightly from the float cache's).
enum class KvFormat { F32, BF16 };

// Rounds every weight matrix a bf16 decoder copies (and the embeddings, as a bf16 folder stores
// them) to the nearest bf16 value in place, so that a BF16 decoder computes exactly what
// Model::forward of the rounded model does.
void round_weights_to_bf16(Model<float>& model);
// The same for any format: each matrix a decoder of that format streams becomes exactly the
// values that format holds (q8: q * scale).
void round_weights_to(Model<float>& model, MatFormat fmt);

class Decoder {
 public:
  // Prompt rows (all prompts of one prefill call, or those a routed layer processes) up to
  // which the prefill runs the decode step's kernels instead of GEMMs, by store and by the GEMM
  // kernels OpenBLAS runs; measured on M (D1024 L16 F2816), prefill tok/s step kernels / GEMMs,
  // AMD Zen 5, 2 threads, 2026-12-08, after the step path's tiled attention (docs/performance.md,
  // "Prefill through the step kernels"):
  // - a store without float matrices (a bf16/f16/q8 folder), where GEMMs first widen every layer
  //   (M: ~0.4 s a call): 288 (q8 1.18x at 288 rows, 1.10 at 384, 1.01-1.03 at 512; bf16
  //   0.97-1.04 at 256, 0.90-0.93 at 384), which takes `serve`'s default 256-token chunks;
  // - a store with float matrices (f32, or converted in memory), where GEMMs run on them as they
  //   are: 128 (f32 1.28-1.32x at 64 rows, 1.00-1.15 at 128, 0.94-0.96 at 192);
  // - where our kernels have AVX-512 and OpenBLAS's do not (this machine's environment pins
  //   OpenBLAS to its Haswell kernels, docs/performance.md): 2048 for both (f32 1.26-1.35x at
  //   512-1024 rows, 1.16-1.18 at 2000; q8 and bf16 1.08-1.37 at 512-1024 before the tiled
  //   attention);
  // - without the AVX2/AVX-512 kernels: 288 and 0.
  static int step_prefill_rows(bool float_matrices);
  // Overrides step_prefill_rows() for decoders built afterwards: tests reach both prefill paths
  // at any size, benchmarks time them; -1 restores the measured choices. Returns the previous
  // override.
  static int set_step_prefill_rows(int rows);
  // Whether step() holds one OpenMP team for the whole step (util/parallel.h's hold_team; the
  // default) or lets each parallel piece start its own: tests compare the two, benchmarks time
  // them. Returns the previous setting.
  static bool set_hold_team(bool hold);
  // The model must outlive the decoder; its weights are read, never written. max_batch
  // sequences (slots) of at most max_len tokens each (<= max_seq_len); the KV cache for all of
  // them is allocated here, once.
  Decoder(const Model<float>& model, int max_batch, int max_len, DecodeWeights weights = DecodeWeights::F32,
          KvFormat kv = KvFormat::F32);
  // Decodes from stored weights (a quantized folder: InferenceWeights::load), which it keeps alive.
  Decoder(std::shared_ptr<const InferenceWeights> weights, int max_batch, int max_len, KvFormat kv = KvFormat::F32);
  const InferenceWeights& weights() const { return *iw_; }

  const ModelConfig& config() const { return cfg_; }
  int max_batch() const { return max_batch_; }
  int max_len() const { return max_len_; }
  const std::vector<int>& routed_layers() const { return routed_; }  // layer indices, increasing

  // (Re)starts prompts[i] in slot slots[i] (distinct slots < max_batch; other slots are left as
  // they are), all in one packed forward. Each prompt needs 1..max_len ids inside the vocabulary
  // (bad_input otherwise). Logits afterwards: row i = the next-token logits after prompt i; with
  // all_logits, one row per prompt token, prompt after prompt (as Model::forward gives them).
  void prefill(const std::vector<int>& slots, const std::vector<std::vector<int32_t>>& prompts, bool all_logits = false);
  // Clears every slot and starts prompt i in slot i.
  void prefill(const std::vector<std::vector<int32_t>>& prompts, bool all_logits = false);

  // Feeds tokens[i] to the sequence in slots[i] (distinct, started slots) at position length(slot)
  // and produces its next-token logits in row i. A sequence of max_len tokens cannot take another
  // (bad_input); check length() first.
  void step(const std::vector<int>& slots, const std::vector<int32_t>& tokens);

  // Continues the started sequence in `slot` with tokens (1..max_len - length(slot) of them) in
  // one call: a prefill chunk that attends over what the slot already caches, so a long prompt
  // can be fed piece by piece between other sequences' steps (the server's chunked prefill).
  // The rows go through the step's code (each row causal over the cache and the chunk's earlier
  // rows): matrix-vector kernels reading each weight once for all rows, or, for a chunk of more
  // than step_prefill_rows() rows and a store with float matrices, GEMMs on those (as the
  // prefill would run them). The result is the step-by-step result to float rounding; it may
  // differ from one whole prefill by float rounding too. Logits: row 0 =
  // the next-token logits after the last token; routes: one row per token.
  void extend(int slot, const std::vector<int32_t>& tokens);

  void release(int slot);  // forgets the sequence in a slot

  // Outputs of the last prefill/step.
  int logit_rows() const { return logit_rows_; }
  const float* logits(int row) const { return logits_.data() + (size_t)row * cfg_.vocab_size; }
  // Routing of every token fed by the last call (prefill: prompt after prompt; step: row i =
  // slots[i]) in routed layer routed_layers()[j].
  int token_rows() const { return token_rows_; }
  const RouteRecord& route(int token_row, int j) const { return routes_[(size_t)token_row * routed_.size() + j]; }
  // Bytes of weights the last call read (each matrix counted once per call, as a bandwidth-bound
  // decode step reads it; a routed block nobody processed is not read).
  double weight_bytes_read() const { return weight_bytes_; }

  int length(int slot) const { return length_[slot]; }  // tokens of the sequence in the slot
  const KvCache& cache() const { return cache_; }

 private:
  void check_ids(const int32_t* ids, size_t n) const;
  // The layers, final norm and head for the B rows set up in row_slot_/row_pos_ (step/extend);
  // logits for every row (head_rows empty), or for head_rows alone, in that order: the head is
  // the largest matrix, and a prompt's rows but its last need no logits.
  void forward_rows(const int32_t* tokens, int B, const std::vector<int>& head_rows = {});
  void ensure_rows(int n);  // grows the step buffers to n rows
  void block_step(int l, int m, const float* x, const int* slots, const int32_t* pos, float* y);
  // Whether block_step runs its m rows' products as GEMMs on the store's float matrices (an
  // extend chunk, or a step of a batch, past step_prefill_rows(); stores with float matrices).
  bool gemm_rows(int m) const { return m > step_prefill_rows_ && iw_->has_float_matrices(); }
  // Y (+)= X W^T for block_step's m rows: GEMM on W's float weights where gemm_rows(m), else the
  // matrix-vector kernel of W's format.
  void product(const Matrix& W, const float* X, int ldx, int m, float* Y, int ldy, bool accumulate = false);
  void attend_rows(int l, int m, const int* slots, const float* qkv, float* att);
  // att rows [r0, r0 + n) = attention of those rows of one slot, appended to its layer-l cache by
  // this block_step (row r0 + i at cache index scount_[r0] - 1 + i; keys 0 .. that index
  // visible), by tiles of GEMMs.
  void attend_run(int l, int slot, int r0, int n, const float* qkv, float* att);
  void routed_prefill(int l, const float* x, float* y, int n);
  void routed_step(int l, int B, const float* x, float* y);
  // y += the MoE (no capacity, SPEC §3) of the m MLP-normed rows xn, with matrix-vector products.
  void moe_step(int l, const LayerWeights<float>& W, const float* xn, int m, float* y);
  // Bytes of layer l's block: its matrices as stored (`stored`, what a step streams) or as the
  // prefill's float GEMMs read them, plus norms and the MoE gate (experts counted apart).
  double block_bytes(int l, bool stored) const;
  double moe_bytes(const MoeActs<float>& A) const;
  void embed_rows(const int32_t* tokens, int n, float* x) const;
  // Whether `rows` prefill rows (a prompt batch, or those a routed layer processes) take the step
  // kernels: at most step_prefill_rows() of them.
  bool prefill_by_steps(int rows) const { return rows <= step_prefill_rows_; }
  LayerWeights<float> prefill_layer(int l);  // layer l's float weights (dequantized when stored otherwise)

  std::shared_ptr<const InferenceWeights> iw_;
  ModelConfig cfg_;
  LayerDims dims_;
  ModelWeights<float> w_;            // small tensors (and float matrices) of iw_
  int step_prefill_rows_ = 0;        // prefill_by_steps' bound for this store
  AlignedVector<float> dequant_;     // one layer's matrices in float for the prefill (quantized stores)
  ops::RopeTable<float> rope_;
  int max_batch_ = 0, max_len_ = 0;
  std::vector<int> routed_;          // routed layer indices
  std::vector<int> routed_index_;    // layer -> index in routed_, or -1
  KvCache cache_;
  std::vector<int> length_;

  // Per-call state.
  int logit_rows_ = 0, token_rows_ = 0;
  double weight_bytes_ = 0;
  AlignedVector<float> logits_;
  std::vector<RouteRecord> routes_;
  std::vector<int> row_slot_;      // slot of each token row of the current call
  std::vector<int> head_rows_;     // rows of the current call whose logits are wanted (forward_rows)
  std::vector<int32_t> row_pos_;   // position of each token row

  // Prefill buffers (grow to the largest prompt batch, then reused).
  TensorT<float> px_, py_, pxg_, pyg_, pr_, pz_, pdec_, pxf_, pinv_;
  LayerActs<float> acts_;
  std::vector<int32_t> ptok_, psel_pos_;
  std::vector<int> pseqs_, psel_, psel_off_, pslot_;

  // Step buffers, sized for max_batch once.
  AlignedVector<float> sx_, sy_, sxn_, sinv_, sqkv_, satt_, sa_, sh13_, sg_, sscore_;
  AlignedVector<float> sxg_, syg_, sr_, sz_, sdec_;
  std::vector<int> ssel_, sslot_, scount_;
  std::vector<int> soff_;          // runs of one slot's rows (block_step)
  AlignedVector<float> slse_;      // attention_forward's log-sum-exps there (unused)
  int row_capacity_ = 0;  // rows the step buffers hold
  std::vector<int32_t> spos_, ssel_pos_;
  // The MoE of the layer being stepped (moe_step): gate probabilities [m, G], choices [m, K],
  // each (row, rank) choice's expert output [m * K, D], one expert's gathered rows and products.
  std::vector<float> sgate_, sexp_out_, sexp_x_, sexp_h13_, sexp_g_, sexp_y_;
  std::vector<int> schoice_, sexp_slots_;
};

// Decoder::set_step_prefill_rows for a scope.
class StepPrefillRows {
 public:
  explicit StepPrefillRows(int rows) : saved_(Decoder::set_step_prefill_rows(rows)) {}
  ~StepPrefillRows() { Decoder::set_step_prefill_rows(saved_); }
  StepPrefillRows(const StepPrefillRows&) = delete;
  StepPrefillRows& operator=(const StepPrefillRows&) = delete;

 private:
  int saved_;
};

}  // namespace modlm::infer
