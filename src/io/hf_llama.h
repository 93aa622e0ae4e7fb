// Hugging Face Llama folders (`LlamaForCausalLM`): import into a modlm model and export back.
//
// The architecture is SPEC §1 exactly (pre-norm RMSNorm, SwiGLU, rotate-half RoPE, no biases)
// plus grouped-query attention (docs/spec_extensions.md), so conversion is a renaming:
//
//   model.embed_tokens.weight                        tok_embeddings.weight
//   model.layers.{l}.input_layernorm.weight          layers.{l}.attn_norm.weight
//   model.layers.{l}.self_attn.{q,k,v,o}_proj.weight layers.{l}.attn.w{q,k,v,o}.weight
//   model.layers.{l}.post_attention_layernorm.weight layers.{l}.mlp_norm.weight
//   model.layers.{l}.mlp.gate_proj.weight            layers.{l}.mlp.w1.weight
//   model.layers.{l}.mlp.up_proj.weight              layers.{l}.mlp.w3.weight
//   model.layers.{l}.mlp.down_proj.weight            layers.{l}.mlp.w2.weight
//   model.norm.weight                                norm.weight
//   lm_head.weight                                   output.weight (absent when tied)
//
// HF's rotary embedding pairs dimension i with i + Dh/2 (rotate_half) at the angle
// pos * theta^(-2i/Dh): SPEC §1's convention, so q_proj and k_proj need no permutation.
// Anything else (another architecture, rope_scaling, biases, another activation, a head_dim that
// is not hidden_size / num_attention_heads) is refused with a message naming the field.
#pragma once
#include <string>
#include <vector>

#include "io/safetensors.h"
#include "model/model.h"

namespace modlm::io {

// HF name -> modlm name for every tensor of a dense Llama with this config (SPEC §6 order).
std::vector<std::pair<std::string, std::string>> hf_llama_names(const ModelConfig& cfg);

// The modlm config a HF config.json describes. `hf` is the parsed file, `source` names it in
// errors (bad_input, exit 3). HF keys modlm has no use for are kept under config "hf.config",
// so that export writes them back.
ModelConfig config_from_hf(const json& hf, const std::string& source);

struct HfImport {
  ModelConfig config;
  std::vector<std::string> shards;   // the safetensors files read
  std::string dtype;                 // "F32", "F16", "BF16" (the weights' stored type; "mixed" if several)
  std::string tokenizer;             // the tokenizer file found ("tokenizer.model" or "tokenizer.json")
  size_t tensors = 0;
};

// Reads the HF folder `dir` (config.json, model.safetensors or model.safetensors.index.json with
// its shards, a tokenizer) into `model` (constructed here). Every check runs before anything is
// written anywhere; errors name the file and the field or tensor at fault.
HfImport read_hf_llama(const std::string& dir, std::unique_ptr<Model<float>>& model);

// Writes the imported model as a modlm folder into out_dir (atomically: all or nothing),
// carrying over the tokenizer and HF's tokenizer/generation side files (under out_dir/hf/).
void import_hf_llama(const std::string& dir, const std::string& out_dir, bool replace, HfImport* report = nullptr);

// The token to put before every prompt of the model in `dir`: `mode` "off" -> -1; "auto" -> the
// imported model's bos_token_id (config "hf") unless its tokenizer_config.json says
// add_bos_token false, else -1; "on" -> that id, or usage_error when the model names none.
int32_t bos_to_prepend(const std::string& dir, const ModelConfig& cfg, const std::string& mode);

struct HfExport {
  std::string dtype;
  int dropped = 0;  // MoD tensors (routers, predictors) that HF Llama has no place for
  size_t tensors = 0;
};

// Writes the dense part of the modlm folder `dir` as a HF LlamaForCausalLM folder (config.json,
// model.safetensors in `dtype` F32/BF16/F16, the tokenizer and the side files an import kept).
// An MoE model cannot be written (bad_input). Atomic like import.
HfExport export_hf_llama(const std::string& dir, const std::string& out_dir, const std::string& dtype, bool replace);

}  // namespace modlm::io
