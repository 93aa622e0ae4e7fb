#include "serve/api.h"

#include <cmath>
#include <set>

namespace modlm::serve {

namespace {

ApiError bad(const std::string& msg, const std::string& param = "", const std::string& code = "invalid_value") {
  return ApiError(400, "invalid_request_error", code, msg, param);
}

const char* kind(const json& v) {
  switch (v.type()) {
    case json::value_t::null: return "null";
    case json::value_t::boolean: return "a boolean";
    case json::value_t::string: return "a string";
    case json::value_t::array: return "an array";
    case json::value_t::object: return "an object";
    case json::value_t::number_float: return "a number";
    default: return "an integer";
  }
}

double number(const json& v, const std::string& name, double lo, double hi) {
  if (!v.is_number()) throw bad("'" + name + "' must be a number, got " + kind(v), name, "invalid_type");
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi)
    throw bad("'" + name + "' must be in [" + json(lo).dump() + ", " + json(hi).dump() + "], got " + v.dump(), name);
  return x;
}

int64_t integer(const json& v, const std::string& name, int64_t lo, int64_t hi) {
  if (!v.is_number_integer() && !(v.is_number_float() && std::floor(v.get<double>()) == v.get<double>() &&
                                  std::fabs(v.get<double>()) < 9e15))
    throw bad("'" + name + "' must be an integer, got " + (v.is_number() ? v.dump() : std::string(kind(v))), name, "invalid_type");
  const double d = v.get<double>();
  if (d < (double)lo || d > (double)hi)
    throw bad("'" + name + "' must be in [" + std::to_string(lo) + ", " + std::to_string(hi) + "], got " + v.dump(), name);
  return v.is_number_unsigned() ? (int64_t)v.get<uint64_t>() : v.get<int64_t>();
}

bool boolean(const json& v, const std::string& name) {
  if (!v.is_boolean()) throw bad("'" + name + "' must be true or false, got " + kind(v), name, "invalid_type");
  return v.get<bool>();
}

std::string text_of(const json& v, const std::string& name, const Limits& lim) {
  if (!v.is_string()) throw bad("'" + name + "' must be a string, got " + kind(v), name, "invalid_type");
  std::string s = v.get<std::string>();
  if (s.size() > lim.max_prompt_chars)
    throw bad("'" + name + "' has " + std::to_string(s.size()) + " bytes, more than the server's limit of " +
                  std::to_string(lim.max_prompt_chars),
              name, "prompt_too_long");
  return s;
}

std::vector<int32_t> ids_of(const json& a, const std::string& name, const Limits& lim) {
  std::vector<int32_t> ids;
  for (const auto& t : a) ids.push_back((int32_t)integer(t, name, 0, lim.vocab_size - 1));
  return ids;
}

std::vector<int32_t> encode_prompt(const std::string& text, const std::string& name, const io::Tokenizer& tok, int32_t bos) {
  if (text.empty() && bos < 0)
    throw bad("'" + name + "' is empty: the tokenizer has no beginning-of-text token, so give at least one character", name);
  auto ids = tok.encode(text);
  if (bos >= 0) ids.insert(ids.begin(), bos);
  if (ids.empty()) throw bad("'" + name + "' encodes to no tokens", name);
  return ids;
}

}  // namespace

std::string error_body(const std::string& message, const std::string& type, const std::string& code, const std::string& param) {
  json e{{"message", message}, {"type", type}, {"param", param.empty() ? json(nullptr) : json(param)},
         {"code", code.empty() ? json(nullptr) : json(code)}};
  return json{{"error", e}}.dump(-1, ' ', false, json::error_handler_t::replace);
}

const std::vector<std::string> kChatStops = {"\nUser:", "\nSystem:"};

std::string chat_template(const json& messages) {
  if (!messages.is_array() || messages.empty())
    throw bad("'messages' must be a non-empty array of {\"role\", \"content\"} objects", "messages");
  std::string out;
  for (size_t i = 0; i < messages.size(); ++i) {
    const json& m = messages[i];
    const std::string at = "messages[" + std::to_string(i) + "]";
    if (!m.is_object()) throw bad("'" + at + "' must be an object, got " + kind(m), at, "invalid_type");
    for (const auto& [k, v] : m.items())
      if (k != "role" && k != "content" && k != "name")
        throw bad("'" + at + "." + k + "' is not a field this server knows (role, content, name)", at + "." + k, "unknown_field");
    if (!m.contains("role") || !m["role"].is_string()) throw bad("'" + at + ".role' must be a string", at + ".role");
    const std::string role = m["role"];
    std::string label;
    if (role == "system" || role == "developer") label = "System";
    else if (role == "user") label = "User";
    else if (role == "assistant") label = "Assistant";
    else throw bad("'" + at + ".role' must be system, developer, user or assistant, got \"" + role + "\"", at + ".role");
    if (!m.contains("content")) throw bad("'" + at + ".content' is missing", at + ".content");
    const json& c = m["content"];
    std::string content;
    if (c.is_string()) {
      content = c.get<std::string>();
    } else if (c.is_array()) {  // content parts: only text
      for (const auto& part : c) {
        if (!part.is_object() || part.value("type", "") != "text" || !part.contains("text") || !part["text"].is_string())
          throw bad("'" + at + ".content' parts must be {\"type\": \"text\", \"text\": ...}", at + ".content");
        content += part["text"].get<std::string>();
      }
    } else {
      throw bad("'" + at + ".content' must be a string or an array of text parts, got " + kind(c), at + ".content", "invalid_type");
    }
    out += label + ": " + content + "\n";
  }
  out += "Assistant:";
  return out;
}

GenerationRequest parse_request(const std::string& body, bool chat, const io::Tokenizer& tok, const Limits& lim) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {
    throw ApiError(400, "invalid_request_error", "invalid_json", std::string("the body is not valid JSON: ") + e.what());
  }
  if (!j.is_object()) throw ApiError(400, "invalid_request_error", "invalid_json", "the body must be a JSON object");
  GenerationRequest r;
  r.chat = chat;
  // Every field is one this server handles, or one OpenAI clients send with a value that asks
  // for nothing (a zero penalty, logprobs off): anything else is refused, naming it.
  static const std::set<std::string> common = {"model", "max_tokens", "temperature", "top_p", "top_k", "seed", "stop", "n",
                                               "stream", "stream_options", "user", "frequency_penalty", "presence_penalty",
                                               "logprobs", "logit_bias"};
  for (const auto& [k, v] : j.items()) {
    const bool ok = common.count(k) || (chat ? (k == "messages" || k == "max_completion_tokens" || k == "top_logprobs")
                                             : (k == "prompt" || k == "echo" || k == "best_of" || k == "suffix"));
    if (!ok) throw bad("unknown field '" + k + "'", k, "unknown_field");
  }
  auto unsupported = [&](const std::string& k, auto is_default) {
    if (j.contains(k) && !j[k].is_null() && !is_default(j[k]))
      throw bad("'" + k + "' = " + j[k].dump() + " is not supported by this server", k, "unsupported_value");
  };
  unsupported("frequency_penalty", [](const json& v) { return v.is_number() && v.get<double>() == 0.0; });
  unsupported("presence_penalty", [](const json& v) { return v.is_number() && v.get<double>() == 0.0; });
  unsupported("logit_bias", [](const json& v) { return v.is_object() && v.empty(); });
  unsupported("logprobs", [](const json& v) { return (v.is_boolean() && !v.get<bool>()) || (v.is_number() && v.get<double>() == 0); });
  unsupported("top_logprobs", [](const json& v) { return v.is_number() && v.get<double>() == 0; });
  unsupported("echo", [](const json& v) { return v.is_boolean() && !v.get<bool>(); });
  unsupported("best_of", [](const json& v) { return v.is_number() && v.get<double>() == 1; });
  unsupported("suffix", [](const json& v) { return v.is_string() && v.get<std::string>().empty(); });
  if (j.contains("user") && !j["user"].is_string() && !j["user"].is_null()) throw bad("'user' must be a string", "user", "invalid_type");

  if (j.contains("model") && !j["model"].is_null()) {
    if (!j["model"].is_string()) throw bad("'model' must be a string, got " + std::string(kind(j["model"])), "model", "invalid_type");
    r.model = j["model"];
  }
  auto has = [&](const char* k) { return j.contains(k) && !j[k].is_null(); };

  if (chat) {
    if (!j.contains("messages")) throw bad("'messages' is required", "messages", "missing_field");
    const std::string text = chat_template(j["messages"]);
    if (text.size() > lim.max_prompt_chars)
      throw bad("the messages have " + std::to_string(text.size()) + " bytes, more than the server's limit of " +
                    std::to_string(lim.max_prompt_chars),
                "messages", "prompt_too_long");
    r.prompts.push_back(encode_prompt(text, "messages", tok, lim.bos));
  } else {
    if (!j.contains("prompt")) throw bad("'prompt' is required", "prompt", "missing_field");
    const json& p = j["prompt"];
    if (p.is_string()) {
      r.prompts.push_back(encode_prompt(text_of(p, "prompt", lim), "prompt", tok, lim.bos));
    } else if (p.is_array() && !p.empty() && p[0].is_number()) {
      r.prompts.push_back(ids_of(p, "prompt", lim));
    } else if (p.is_array() && !p.empty()) {
      if ((int)p.size() > lim.max_sequences)
        throw bad("'prompt' has " + std::to_string(p.size()) + " prompts, more than " + std::to_string(lim.max_sequences), "prompt");
      for (size_t i = 0; i < p.size(); ++i) {
        const std::string name = "prompt[" + std::to_string(i) + "]";
        if (p[i].is_array()) {
          if (p[i].empty()) throw bad("'" + name + "' is empty", name);
          r.prompts.push_back(ids_of(p[i], name, lim));
        } else {
          r.prompts.push_back(encode_prompt(text_of(p[i], name, lim), name, tok, lim.bos));
        }
      }
    } else {
      throw bad("'prompt' must be a string, an array of strings, or token ids, got " +
                    std::string(p.is_array() ? "an empty array" : kind(p)),
                "prompt", "invalid_type");
    }
  }
  for (size_t i = 0; i < r.prompts.size(); ++i)
    if ((int)r.prompts[i].size() >= lim.max_context)
      throw ApiError(400, "invalid_request_error", "context_length_exceeded",
                     "the prompt" + (r.prompts.size() > 1 ? " " + std::to_string(i) : std::string()) + " has " +
                         std::to_string(r.prompts[i].size()) + " tokens; this server's context is " +
                         std::to_string(lim.max_context) + " tokens (prompt + completion), which leaves no room for a completion",
                     chat ? "messages" : "prompt");

  if (has("n")) r.n = (int)integer(j["n"], "n", 1, 128);
  if ((int64_t)r.n * (int64_t)r.prompts.size() > lim.max_sequences)
    throw bad("prompts x n = " + std::to_string((int64_t)r.n * (int64_t)r.prompts.size()) + " sequences, more than this server's limit of " +
                  std::to_string(lim.max_sequences) + " per request",
              "n");
  // max_tokens: completions default to 16 (as OpenAI's); chat to the rest of the context.
  const char* mt = chat && has("max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
  r.max_tokens = chat ? lim.max_context : 16;
  if (has(mt)) r.max_tokens = (int)integer(j[mt], mt, 1, 1 << 30);
  if (has("temperature")) r.params.temperature = number(j["temperature"], "temperature", 0.0, 2.0);
  if (has("top_p")) {
    r.params.top_p = number(j["top_p"], "top_p", 0.0, 1.0);
    if (r.params.top_p <= 0.0) throw bad("'top_p' must be in (0, 1], got " + j["top_p"].dump(), "top_p");
  }
  if (has("top_k")) r.params.top_k = (int)integer(j["top_k"], "top_k", 0, lim.vocab_size);
  if (has("seed")) {
    r.seed = (uint64_t)integer(j["seed"], "seed", 0, (int64_t)1 << 62);
    r.seed_given = true;
  }
  if (has("stop")) {
    const json& s = j["stop"];
    std::vector<json> items;
    if (s.is_string()) items.push_back(s);
    else if (s.is_array()) items.assign(s.begin(), s.end());
    else throw bad("'stop' must be a string or an array of up to 4 strings, got " + std::string(kind(s)), "stop", "invalid_type");
    if (items.size() > 4) throw bad("'stop' may hold at most 4 strings, got " + std::to_string(items.size()), "stop");
    for (const auto& it : items) {
      if (!it.is_string() || it.get<std::string>().empty() || it.get<std::string>().size() > 256)
        throw bad("every 'stop' entry must be a non-empty string of at most 256 bytes", "stop");
      r.stop.push_back(it);
    }
  }
  if (chat)
    for (const auto& s : kChatStops) r.stop.push_back(s);
  if (has("stream")) r.stream = boolean(j["stream"], "stream");
  if (has("stream_options")) {
    const json& so = j["stream_options"];
    if (!so.is_object()) throw bad("'stream_options' must be an object", "stream_options", "invalid_type");
    for (const auto& [k, v] : so.items()) {
      if (k != "include_usage") throw bad("unknown field 'stream_options." + k + "'", "stream_options." + k, "unknown_field");
      r.include_usage = boolean(v, "stream_options.include_usage");
    }
  }
  return r;
}

}  // namespace modlm::serve
