// libFuzzer target: text input (plain or gzip, decode_text) and the tokenizer input path: the
// byte tokenizer's encode/decode round trip and the streaming UTF-8 decoder on arbitrary ids.
#include <string>

#include "infer/text_stream.h"
#include "io/text_file.h"
#include "io/tokenizer.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string raw(reinterpret_cast<const char*>(data), size);
  modlm::io::ByteTokenizer tok;
  try {
    const std::string text = modlm::io::decode_text(raw, "fuzz");
    const auto ids = tok.encode(text);
    if (tok.decode(ids) != text) std::abort();  // bytes round-trip exactly
  } catch (const modlm::Error&) {
  }
  // The same bytes as token ids, streamed: the pieces must add up to the whole decode.
  std::vector<int32_t> ids(raw.begin(), raw.end());
  for (auto& id : ids) id &= 0xff;
  modlm::infer::TextStream ts(tok);
  std::string streamed;
  for (int32_t id : ids) streamed += ts.push(id);
  streamed += ts.finish();
  if (streamed != tok.decode(ids)) std::abort();
  (void)modlm::infer::utf8_complete_prefix(raw);
  return 0;
}
