#include "util/fs.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>

#include "util/error.h"

namespace modlm {
namespace {

std::string errno_text(int err) { return std::strerror(err); }

// The directory holding `path` ("." for a bare file name), for the fsync after rename().
std::string parent_dir(const std::string& path) {
  std::string parent = std::filesystem::path(path).parent_path().string();
  return parent.empty() ? "." : parent;
}

// Makes the rename() itself durable. Best effort: by now the new content is in place, and some
// file systems refuse fsync on a directory, so a failure here is not reported.
void fsync_dir(const std::string& dir) {
  int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return;
  (void)::fsync(fd);
  ::close(fd);
}

}  // namespace

void fwrite_checked(std::FILE* f, const void* data, std::size_t n, const std::string& path) {
  if (n == 0) return;
  if (std::fwrite(data, 1, n, f) != n) {
    throw io_error(path + ": write failed: " + errno_text(errno));
  }
}

void atomic_write_file(const std::string& path, const std::function<void(std::FILE*)>& write_body) {
  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  std::FILE* f = std::fopen(tmp.c_str(), "wb");
  if (!f) {
    throw io_error(path + ": cannot create temporary file " + tmp + ": " + errno_text(errno));
  }
  try {
    write_body(f);
    // stdio buffers, so a full disk often shows up only at fflush/fsync/fclose: check each.
    if (std::ferror(f)) throw io_error(path + ": write failed: " + errno_text(errno));
    if (std::fflush(f) != 0) throw io_error(path + ": write failed: " + errno_text(errno));
    if (::fsync(::fileno(f)) != 0) throw io_error(path + ": fsync failed: " + errno_text(errno));
    std::FILE* closing = f;
    f = nullptr;  // fclose releases the stream even when it fails
    if (std::fclose(closing) != 0) throw io_error(path + ": write failed: " + errno_text(errno));
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
      throw io_error(path + ": cannot replace with " + tmp + ": " + errno_text(errno));
    }
  } catch (...) {
    if (f) std::fclose(f);
    std::remove(tmp.c_str());
    throw;
  }
  fsync_dir(parent_dir(path));
}

std::string read_text_file(const std::string& path) { return read_text_file(path, (std::size_t)-1); }

std::string read_text_file(const std::string& path, std::size_t max_bytes) {
  // O_NONBLOCK so that a FIFO given as a path fails below instead of blocking in open().
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw io_error(path + ": cannot open: " + errno_text(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw io_error(path + ": cannot read: " + errno_text(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw io_error(path + ": cannot read: " + (S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file"));
  }
  if ((std::size_t)st.st_size > max_bytes) {
    ::close(fd);
    throw bad_input(path + ": " + std::to_string((long long)st.st_size) + " bytes, more than the limit of " + std::to_string(max_bytes) +
                    " bytes");
  }
  std::string out;
  out.reserve(static_cast<std::size_t>(st.st_size));
  char buf[1 << 16];
  for (;;) {
    ssize_t n = ::read(fd, buf, sizeof buf);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      int err = errno;
      ::close(fd);
      throw io_error(path + ": read failed: " + errno_text(err));
    }
    out.append(buf, static_cast<std::size_t>(n));
  }
  ::close(fd);
  return out;
}

void write_folder_atomically(const std::string& dir, bool replace, const std::function<void(const std::string&)>& fill) {
  namespace fs = std::filesystem;
  std::error_code ec;
  std::string clean = dir;
  while (clean.size() > 1 && clean.back() == '/') clean.pop_back();
  const bool exists = fs::exists(clean, ec);
  if (exists && !fs::is_directory(clean, ec)) throw usage_error(clean + " exists and is not a folder");
  if (exists && !fs::is_empty(clean, ec) && !replace)
    throw usage_error(clean + " already exists and is not empty (use --force to replace it)");
  const std::string tmp = clean + ".partial." + std::to_string(::getpid());
  fs::remove_all(tmp, ec);
  if (!fs::create_directories(tmp, ec) || ec) throw io_error(tmp + ": cannot create folder: " + ec.message());
  try {
    fill(tmp);
    if (exists) {
      const std::string old = clean + ".old." + std::to_string(::getpid());
      fs::remove_all(old, ec);
      fs::rename(clean, old, ec);
      if (ec) throw io_error(clean + ": cannot move aside: " + ec.message());
      fs::rename(tmp, clean, ec);
      if (ec) {
        std::error_code back;
        fs::rename(old, clean, back);
        throw io_error(clean + ": cannot move " + tmp + " into place: " + ec.message());
      }
      fs::remove_all(old, ec);
    } else {
      fs::rename(tmp, clean, ec);
      if (ec) throw io_error(clean + ": cannot move " + tmp + " into place: " + ec.message());
    }
  } catch (...) {
    fs::remove_all(tmp, ec);
    throw;
  }
  fsync_dir(parent_dir(clean));
}

void copy_file_checked(const std::string& from, const std::string& to) {
  std::error_code ec;
  std::filesystem::copy_file(from, to, std::filesystem::copy_options::overwrite_existing, ec);
  if (ec) throw io_error(to + ": cannot copy from " + from + ": " + ec.message());
}

bool file_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

}  // namespace modlm
