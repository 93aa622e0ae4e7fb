// Running the real `modlm` binary from tests: exit code and combined output.
#pragma once
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <string>

#include "temp_dir.h"
#include "util/rng.h"

namespace modlm::testing {

struct CmdResult {
  int code = -1;
  std::string out;  // stdout + stderr
};

// Any shell command: exit code and combined output.
inline CmdResult run_modlm_raw(const std::string& cmd) {
  CmdResult r;
  FILE* p = popen(cmd.c_str(), "r");
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  int st = pclose(p);
  r.code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return r;
}

// The real `modlm` binary with `args`.
inline CmdResult run_modlm(const std::string& args) {
  return run_modlm_raw(std::string("OMP_WAIT_POLICY=passive ") + MODLM_BINARY + " " + args + " 2>&1");
}

// The real `modlm` binary with `args` under the environment changes `env` (what env(1) takes:
// "NAME=value", "-u NAME"), stdout then stderr: for the settings the binary reads at start-up
// (OpenMP's wait policy, OpenBLAS's core type) that run_modlm's fixed environment would hide.
inline CmdResult run_modlm_env(const std::string& env, const std::string& args) {
  return run_modlm_raw("env " + env + " " + MODLM_BINARY + " " + args + " 2>&1");
}

// A fresh, empty temporary folder for one test.
inline std::string temp_dir(const std::string& name) {
  auto d = std::filesystem::temp_directory_path() / ("modlm_test_" + name + "_" + std::to_string(::getpid()));
  std::filesystem::remove_all(d);
  std::filesystem::create_directories(d);
  remove_at_exit(d);
  return d.string();
}

// Text for tests comes from the project's own shipped corpus (data/, see data/README.md), so a
// plain clone without ../shared passes. ../shared may only add optional, skipped extras.
inline std::string project_train_gz() { return std::string(MODLM_SOURCE_DIR) + "/data/train.txt.gz"; }
inline std::string project_valid_gz() { return std::string(MODLM_SOURCE_DIR) + "/data/valid.txt.gz"; }

// Writes the first `bytes` bytes of the gzip file `gz`, decompressed, to `path`; true on success.
inline bool write_gz_head(const std::string& gz, const std::string& path, size_t bytes) {
  std::string cmd = "gzip -dc '" + gz + "' | head -c " + std::to_string(bytes) + " > '" + path + "'";
  return std::system(cmd.c_str()) == 0;
}
// The first `bytes` bytes of the shipped training text, or of the validation text (which shares
// no book with it).
inline bool write_train_head(const std::string& path, size_t bytes) { return write_gz_head(project_train_gz(), path, bytes); }
inline bool write_valid_head(const std::string& path, size_t bytes) { return write_gz_head(project_valid_gz(), path, bytes); }

}  // namespace modlm::testing
