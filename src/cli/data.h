// Text files to token streams for the CLI: the model folder's tokenizer, a cached token file.
#pragma once
#include <memory>
#include <string>

#include "io/token_file.h"
#include "io/tokenizer.h"
#include "model/config.h"
#include "train/evaluate.h"

namespace modlm::cli {

struct LoadedTokens {
  std::unique_ptr<io::Tokenizer> tokenizer;
  std::shared_ptr<io::TokenFile> file;
  TokenSpan span;
};

// Tokenizes (or reuses the cache of) `text_path` with the tokenizer of `model_dir`/`cfg`, and
// checks every id is inside the model's vocabulary.
LoadedTokens load_text_tokens(const std::string& text_path, const std::string& model_dir, const ModelConfig& cfg);

}  // namespace modlm::cli
