// Small file-system helpers: crash-safe writes and checked reads.
#pragma once
#include <cstddef>
#include <cstdio>
#include <functional>
#include <string>

namespace modlm {

// Writes a file so that readers see either the old content or the complete new one, never a
// half-written file: the body goes to `path + ".tmp.<pid>"` in the same directory, is flushed and
// fsync'ed, then rename()d over `path`, and the directory is fsync'ed.
// On any failure (a write error such as a full disk, or an exception thrown by write_body) the
// temporary file is removed and the error is rethrown; `path` is left untouched.
// OS failures are modlm::io_error naming `path`.
void atomic_write_file(const std::string& path, const std::function<void(std::FILE*)>& write_body);

// fwrite() that throws modlm::io_error naming `path` if not every byte was written.
// Meant for use inside atomic_write_file bodies, so a full disk is reported at the first failure.
void fwrite_checked(std::FILE* f, const void* data, std::size_t n, const std::string& path);

// Reads a whole regular file. Missing, unreadable or not a regular file -> modlm::io_error
// whose message names the file.
std::string read_text_file(const std::string& path);
// The same, refusing (bad_input, naming both sizes) a file of more than max_bytes before reading it.
std::string read_text_file(const std::string& path, std::size_t max_bytes);

// Writes a whole folder so that `dir` either keeps what it held or gets the complete new
// content, never a mix: fill(tmp) writes into a fresh sibling folder `dir + ".partial.<pid>"`,
// which then takes `dir`'s place. A `dir` that exists and is not empty is refused (usage_error
// naming it) unless `replace`; then the old folder is removed only after the new one is in place.
// On any exception from fill the partial folder is removed and the exception rethrown.
void write_folder_atomically(const std::string& dir, bool replace, const std::function<void(const std::string&)>& fill);

// Copies a regular file (io_error naming both paths on failure).
void copy_file_checked(const std::string& from, const std::string& to);

// True if something (file, directory, ...) exists at `path`.
bool file_exists(const std::string& path);

}  // namespace modlm
