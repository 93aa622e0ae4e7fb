#include "util/json_file.h"

#include "util/error.h"
#include "util/fs.h"

namespace modlm {

nlohmann::ordered_json parse_json_file(const std::string& path, std::size_t max_bytes) {
  const std::string text = read_text_file(path, max_bytes);
  try {
    return nlohmann::ordered_json::parse(text);
  } catch (const nlohmann::ordered_json::exception& e) {
    throw bad_input(path + ": not valid JSON: " + e.what());
  }
}

}  // namespace modlm
