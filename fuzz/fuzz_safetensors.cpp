// libFuzzer target: a safetensors file (header JSON, offsets, dtypes, data) through
// SafetensorsFile::open and read_f32 of every tensor small enough to read. The only allowed
// failure is modlm::Error (a clear bad_input / io_error); anything else is a finding.
#include "fuzz_util.h"
#include "io/safetensors.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = modlm::fuzz::write_input("in.safetensors", data, size);
  try {
    auto f = modlm::io::SafetensorsFile::open(path);
    for (const auto& t : f.tensors()) {
      int64_t n = 1;
      for (int64_t d : t.shape) n *= d;
      if (n <= (1 << 20)) (void)f.read_f32(t.name, t.shape);
    }
    (void)f.find("x");
  } catch (const modlm::Error&) {
  }
  return 0;
}
