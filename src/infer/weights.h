// The weights a decoder reads, in the format they are stored in: float, bf16, f16 or 8-bit
// blocks (q8: Q8_0-style, one float scale per 32 weights of a row). A quantized model folder is
// mapped from its file and decoded from directly: its matrices are never widened to float at
// load (the prefill widens one layer at a time into scratch for its GEMMs).
//
// Quantized folders (`modlm quantize`, docs/quantize.md): the SPEC §6 tensor names; the matrices
// (attention, MLP, experts, embeddings, LM head) in BF16 or F16, or in I8 with a float tensor
// `NAME.scales` [rows, ceil(cols / 32)] beside each; norms, routers, predictors and MoE gates stay
// float32. config.json says which in "quantization": {"format": "q8_0" | "bf16" | "f16"}.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "infer/matvec.h"
#include "io/safetensors.h"
#include "model/model.h"
#include "tensor/tensor.h"

namespace modlm::infer {

enum class MatFormat { F32, BF16, F16, Q8 };
const char* format_name(MatFormat f);  // "f32", "bf16", "f16", "q8"
// "f32" | "bf16" | "f16" | "q8" (usage_error naming `flag` otherwise).
MatFormat parse_format(const std::string& s, const char* flag);
// Bytes per weight a full read of such a matrix streams (q8: 1 + 4/32 for the scales).
double bytes_per_weight(MatFormat f);
// Bytes of one stored weight element (q8: 1; its scales are a separate array).
size_t element_bytes(MatFormat f);

// One weight matrix [rows, cols], row-major.
struct Matrix {
  MatFormat fmt = MatFormat::F32;
  const void* data = nullptr;
  const float* scales = nullptr;  // Q8 only: [rows, ceil(cols / 32)]
  const float* f32 = nullptr;     // float weights for GEMMs when the store has them (data itself for F32)
  int rows = 0, cols = 0;
  double bytes() const { return bytes_per_weight(fmt) * rows * cols; }
  // Rows r0 .. r0 + n - 1 as floats into dst [n, cols].
  void dequantize_rows(int r0, int n, float* dst) const;
};

// Y[b, :] (+)= W X[b, :] for b < B, by the format's matrix-vector kernel (infer/matvec.h).
void matvec(const Matrix& W, const float* X, int ldx, int B, float* Y, int ldy, bool accumulate = false);

struct LayerMatrices {
  Matrix wqkv, wo, w13, w2;                   // fused q|k|v [D + 2 Dkv, D]; w1|w3 [2F, D]
  std::vector<Matrix> expert_w13, expert_w2;  // MoE layers instead of w13, w2
};

// The tensors stored in a quantized folder's format (attention, MLP and expert matrices, the
// embeddings and the LM head); the others stay float32.
bool is_decode_matrix(const std::string& name);

class InferenceWeights {
 public:
  // From a model in memory: F32 matrices reference its buffer (the model must outlive the
  // result); other formats are owned converted copies, with `f32` still pointing at the
  // model's float weights so the prefill's GEMMs use them.
  static std::shared_ptr<const InferenceWeights> from_model(const Model<float>& m, MatFormat fmt);
  // A model folder (config.json + model.safetensors, float or quantized), mapped: matrices are
  // used in place (a fused group is copied once when its parts are not adjacent in the file);
  // small tensors are read as float. Errors name the file and tensor (bad_input / io_error).
  static std::shared_ptr<const InferenceWeights> load(const std::string& dir);
  // The weights `generate` and `serve` decode with: the folder as stored when `want` is empty or
  // its format; a float folder converted in memory to `want` (its prefill then uses the rounded
  // float weights, so prefill and steps compute the same model); a quantized folder asked for
  // another format is a usage_error (quantize again from the float model).
  static std::shared_ptr<const InferenceWeights> for_decoding(const std::string& dir, const std::string& want, const char* flag);

  const ModelConfig& config() const { return cfg_; }
  MatFormat format() const { return fmt_; }
  // Norms, routers, predictors, MoE gates (float) and, when float, the matrices themselves.
  const ModelWeights<float>& small() const { return small_; }
  const LayerMatrices& layer(int l) const { return layers_[l]; }
  const Matrix& embeddings() const { return embed_; }
  const Matrix& head() const { return head_; }
  // Largest float buffer dequantize_layer needs.
  size_t layer_scratch_floats() const;
  // Layer l's float weights for the prefill's layer_forward: the float matrices when the store
  // has them, else every matrix dequantized into scratch (>= layer_scratch_floats()).
  LayerWeights<float> float_layer(int l, float* scratch) const;
  bool has_float_matrices() const { return head_.f32 != nullptr; }
  size_t matrix_bytes() const;  // all matrices, as stored

 private:
  ModelConfig cfg_;
  MatFormat fmt_ = MatFormat::F32;
  ModelWeights<float> small_;
  std::vector<LayerMatrices> layers_;
  Matrix embed_, head_;
  std::vector<io::SafetensorsFile> files_;         // mappings kept alive
  std::vector<AlignedVector<uint8_t>> owned_;      // converted or regrouped matrices
  std::vector<std::vector<float>> owned_small_;    // small tensors read as float
  std::shared_ptr<const void> keep_alive_;         // a model this store references (for_decoding)
};

}  // namespace modlm::infer
