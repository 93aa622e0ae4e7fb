// libFuzzer target: the SentencePiece tokenizer's input path. A small BPE model (vocabulary 300)
// is trained once at start on the shipped corpus (data/train.txt.gz); every input is encoded,
// the ids checked against the vocabulary, decoded, and fed through the streaming decoder,
// whose pieces must add up to the whole decode.
#include <cstdlib>
#include <string>

#include "fuzz_util.h"
#include "infer/text_stream.h"
#include "io/text_file.h"
#include "io/tokenizer.h"
#include "util/error.h"

namespace {
modlm::io::SentencePieceTokenizer* g_tok = nullptr;
}

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const std::string dir = modlm::fuzz::scratch_dir() + "/sp";
  ::mkdir(dir.c_str(), 0700);
  const std::string text = modlm::io::read_text(std::string(MODLM_SOURCE_DIR) + "/data/train.txt.gz").substr(0, 200000);
  const std::string path = modlm::fuzz::write_input("sp/train.txt", reinterpret_cast<const uint8_t*>(text.data()), text.size());
  modlm::io::train_sentencepiece(path, 300, dir);
  g_tok = new modlm::io::SentencePieceTokenizer(dir + "/tokenizer.model");
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string text(reinterpret_cast<const char*>(data), size);
  const auto ids = g_tok->encode(text);
  for (int32_t id : ids)
    if (id < 0 || id >= g_tok->vocab_size()) std::abort();
  const std::string back = g_tok->decode(ids);
  modlm::infer::TextStream ts(*g_tok);
  std::string streamed;
  for (int32_t id : ids) streamed += ts.push(id);
  streamed += ts.finish();
  if (streamed != back) std::abort();
  return 0;
}
