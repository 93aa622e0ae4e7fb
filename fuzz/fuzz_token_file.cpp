// libFuzzer target: the token-file cache reader (TokenFile::open: header, sizes, every token <
// vocab_size). Allowed failures: modlm::Error only.
#include <vector>

#include "fuzz_util.h"
#include "io/token_file.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = modlm::fuzz::write_input("in.tok", data, size);
  try {
    auto f = modlm::io::TokenFile::open(path);
    int64_t sum = 0;
    for (size_t i = 0; i < f.size(); ++i) sum += f[i];
    if (sum == -1) std::abort();
  } catch (const modlm::Error&) {
  }
  return 0;
}
