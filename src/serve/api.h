// The OpenAI-compatible request side of `modlm serve` (docs/serving.md): parsing and checking
// /v1/completions and /v1/chat/completions bodies, the chat template, and error bodies.
// No HTTP here, so every rule is testable on its own.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "infer/sampler.h"
#include "io/tokenizer.h"

namespace modlm::serve {

using json = nlohmann::json;

// A request the server refuses: HTTP status, OpenAI error type and code.
struct ApiError : std::runtime_error {
  int status;
  std::string type, code, param;
  ApiError(int status, std::string type, std::string code, const std::string& message, std::string param = "")
      : std::runtime_error(message), status(status), type(std::move(type)), code(std::move(code)), param(std::move(param)) {}
};

// {"error": {"message", "type", "param", "code"}}, as OpenAI sends it.
std::string error_body(const std::string& message, const std::string& type, const std::string& code,
                       const std::string& param = "");

struct Limits {
  int vocab_size = 0;
  int max_context = 0;   // prompt + generated tokens per sequence
  int max_sequences = 0; // prompts x n per request
  size_t max_prompt_chars = 1 << 20;
  int32_t bos = -1;      // >= 0: prepended to every text prompt (an imported model's BOS token)
};

struct GenerationRequest {
  bool chat = false;
  std::string model;
  std::vector<std::vector<int32_t>> prompts;  // token ids, one list per prompt
  int n = 1;                                  // choices per prompt
  infer::SamplingParams params;
  bool seed_given = false;
  uint64_t seed = 0;
  int max_tokens = 16;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;                 // stream_options.include_usage
};

// The chat template (docs/serving.md): every message as "<Role>: <content>\n" (System, User,
// Assistant), then "Assistant:" for the reply, which stops at a line starting a new turn.
std::string chat_template(const json& messages);
extern const std::vector<std::string> kChatStops;

// Parses and checks a request body; ApiError (400) names the offending field.
GenerationRequest parse_request(const std::string& body, bool chat, const io::Tokenizer& tok, const Limits& lim);

}  // namespace modlm::serve
