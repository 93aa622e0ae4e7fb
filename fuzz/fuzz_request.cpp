// libFuzzer target: HTTP request bodies of /v1/completions and /v1/chat/completions through the
// server's parser (serve::parse_request). Allowed failure: ApiError (a 4xx with a JSON body).
#include "io/tokenizer.h"
#include "serve/api.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string body(reinterpret_cast<const char*>(data), size);
  static const modlm::io::ByteTokenizer tok;
  modlm::serve::Limits lim;
  lim.vocab_size = 256;
  lim.max_context = 128;
  lim.max_sequences = 16;
  lim.max_prompt_chars = 4096;
  for (bool chat : {false, true}) {
    try {
      auto r = modlm::serve::parse_request(body, chat, tok, lim);
      if (r.prompts.empty() || r.n < 1 || r.max_tokens < 1) std::abort();
      for (const auto& p : r.prompts)
        if (p.empty() || (int)p.size() >= lim.max_context) std::abort();
    } catch (const modlm::serve::ApiError& e) {
      (void)modlm::serve::error_body(e.what(), e.type, e.code, e.param);
    }
  }
  return 0;
}
