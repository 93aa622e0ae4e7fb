// A model folder (SPEC §6): config.json + model.safetensors (+ tokenizer.model).
#pragma once
#include <string>

#include "model/config.h"
#include "model/model.h"

namespace modlm::io {

// dir/config.json, parsed and validated (errors name the file).
ModelConfig load_model_config(const std::string& dir);

// Reads dir/model.safetensors into the model's parameters. Every tensor the config implies must
// be present with its exact shape and finite values; a tensor the config does not imply is an
// error too (it would mean the file and the config disagree). F16/BF16 copies are widened.
void load_model_weights(const std::string& dir, Model<float>& model);

// Model<float> from a folder, ready to run.
Model<float> load_model(const std::string& dir);

// Writes config.json and model.safetensors into dir (created if missing), each atomically.
void save_model(const std::string& dir, const Model<float>& model);

}  // namespace modlm::io
