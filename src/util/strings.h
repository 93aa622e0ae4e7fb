// Small string helpers shared by the parsers and the environment checks.
#pragma once
#include <cctype>
#include <string>

namespace modlm {

// s with ASCII letters in lower case (names compared case-insensitively: dtypes, OpenBLAS cores,
// OpenMP settings).
inline std::string ascii_lower(std::string s) {
  for (char& c : s) c = (char)std::tolower((unsigned char)c);
  return s;
}

}  // namespace modlm
