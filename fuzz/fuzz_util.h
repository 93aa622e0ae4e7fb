// Shared by the libFuzzer targets (scripts/fuzz.sh): the input as a file, since the parsers
// under test map files (SafetensorsFile, TokenFile) or read folders (config.json).
#pragma once
#include <sys/stat.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

namespace modlm::fuzz {

// A per-process scratch path under /dev/shm (memory-backed: fast, and no disk wear).
inline const std::string& scratch_dir() {
  static const std::string d = [] {
    std::string p = "/dev/shm/modlm-fuzz-" + std::to_string(::getpid());
    ::mkdir(p.c_str(), 0700);
    return p;
  }();
  return d;
}

inline std::string write_input(const std::string& name, const uint8_t* data, size_t size) {
  const std::string path = scratch_dir() + "/" + name;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) std::abort();
  if (size && std::fwrite(data, 1, size, f) != size) std::abort();
  std::fclose(f);
  return path;
}

}  // namespace modlm::fuzz
