// libFuzzer target: config.json as a model folder holds it, through load_model_config (JSON
// parse + ModelConfig::from_json + every check). Allowed failures: modlm::Error only.
#include <sys/stat.h>

#include "fuzz_util.h"
#include "io/model_dir.h"
#include "util/error.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string dir = modlm::fuzz::scratch_dir() + "/model";
  ::mkdir(dir.c_str(), 0700);
  modlm::fuzz::write_input("model/config.json", data, size);
  try {
    modlm::ModelConfig c = modlm::io::load_model_config(dir);
    (void)c.to_json().dump();
  } catch (const modlm::Error&) {
  }
  return 0;
}
