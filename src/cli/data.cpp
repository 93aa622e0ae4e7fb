#include "cli/data.h"

#include "util/error.h"

namespace modlm::cli {

LoadedTokens load_text_tokens(const std::string& text_path, const std::string& model_dir, const ModelConfig& cfg) {
  LoadedTokens t;
  t.tokenizer = io::load_tokenizer(model_dir, cfg.tokenizer == "bytes");
  if (t.tokenizer->vocab_size() > cfg.vocab_size)
    throw bad_input(model_dir + ": the tokenizer has " + std::to_string(t.tokenizer->vocab_size()) +
                    " ids but the model's vocab_size is " + std::to_string(cfg.vocab_size));
  t.file = std::make_shared<io::TokenFile>(io::load_or_build_tokens(text_path, *t.tokenizer));
  auto file = t.file;
  t.span.size = file->size();
  t.span.copy = [file](size_t b, size_t c, int32_t* d) { file->copy(b, c, d); };
  return t;
}

}  // namespace modlm::cli
