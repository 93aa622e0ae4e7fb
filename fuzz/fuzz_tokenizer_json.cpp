// libFuzzer target: a Hugging Face tokenizer.json (byte-level BPE, io/bpe_tokenizer.h) and a HF
// config.json (io/hf_llama.h), both untrusted. The input is tried as each; a tokenizer that
// loads must round-trip a few texts byte for byte. Allowed failures: modlm::Error only.
#include <cstdlib>
#include <string>

#include "fuzz_util.h"
#include "io/bpe_tokenizer.h"
#include "io/hf_llama.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = modlm::fuzz::write_input("tokenizer.json", data, size);
  try {
    modlm::io::BpeTokenizer t(path);
    for (const std::string& s : {std::string("hello world 12345"), std::string("\xff\xfe<|x|> \n\n"), std::string(reinterpret_cast<const char*>(data), std::min<size_t>(size, 64))}) {
      const auto ids = t.encode(s);
      for (int32_t id : ids)
        if (id < 0 || id >= t.vocab_size()) std::abort();
      (void)t.decode(ids);
    }
  } catch (const modlm::Error&) {
  }
  try {
    const auto j = nlohmann::ordered_json::parse(std::string(reinterpret_cast<const char*>(data), size));
    (void)modlm::io::config_from_hf(j, "config.json").to_json().dump();
  } catch (const modlm::Error&) {
  } catch (const nlohmann::ordered_json::exception&) {
  }
  return 0;
}
