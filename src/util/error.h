// Errors that reach the user: a message naming the thing at fault, and the exit code the CLI returns.
#pragma once
#include <stdexcept>
#include <string>

namespace modlm {

// Exit codes of the `modlm` binary. Documented in docs/cli.md.
enum ExitCode : int {
  kExitOk = 0,
  kExitFailure = 1,    // internal failure or a run that stopped on its own (e.g. NaN loss)
  kExitUsage = 2,      // bad flags or arguments
  kExitBadInput = 3,   // a file or value the user gave is invalid (corrupt, mis-shaped, out of range)
  kExitIo = 4,         // the OS refused: file missing, unreadable, disk full
  kExitInterrupted = 130,
};

class Error : public std::runtime_error {
 public:
  Error(int exit_code, const std::string& message) : std::runtime_error(message), exit_code_(exit_code) {}
  int exit_code() const { return exit_code_; }

 private:
  int exit_code_;
};

inline Error usage_error(const std::string& m) { return Error(kExitUsage, m); }
inline Error bad_input(const std::string& m) { return Error(kExitBadInput, m); }
inline Error io_error(const std::string& m) { return Error(kExitIo, m); }

}  // namespace modlm
