#include "io/token_file.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <filesystem>
#include <system_error>
#include <vector>

#include "io/text_file.h"
#include "util/error.h"
#include "util/fs.h"

namespace modlm::io {

static_assert(std::endian::native == std::endian::little, "token files are little endian; add byte swapping");

namespace {

constexpr char kMagic[8] = {'M', 'O', 'D', 'L', 'M', 'T', 'O', 'K'};
constexpr uint32_t kVersion = 1;
// magic, version, dtype, vocab_size, count, source_size, source_mtime_ns, source_hash, id_len
constexpr size_t kFixedHeader = 8 + 4 + 4 + 4 + 8 + 8 + 8 + 8 + 4;
constexpr uint32_t kMaxIdLen = 4096;

size_t align8(size_t n) { return (n + 7) & ~size_t(7); }

std::string short_hash(const std::string& s) { return hex64(fnv1a64(s)).substr(0, 8); }

// Reads a little-endian scalar at `p`, which need not be aligned.
template <typename T>
T load(const unsigned char* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
void put(std::string& out, T v) {
  out.append(reinterpret_cast<const char*>(&v), sizeof v);
}

struct SourceStat {
  uint64_t size;
  int64_t mtime_ns;
};

SourceStat stat_source(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) throw io_error(path + ": cannot open: " + std::strerror(errno));
  if (S_ISDIR(st.st_mode)) throw io_error(path + ": cannot read: is a directory");
  return {static_cast<uint64_t>(st.st_size), int64_t(st.st_mtim.tv_sec) * 1000000000 + st.st_mtim.tv_nsec};
}

// Tokenizes `text` line by line (see the header), in parallel over blocks of whole lines. The
// block boundaries only decide which thread encodes a line, so the result does not depend on them.
std::vector<std::vector<int32_t>> tokenize_lines(std::string_view text, const Tokenizer& tok) {
  constexpr size_t kBlock = size_t(1) << 20;
  std::vector<size_t> starts{0};
  while (starts.back() < text.size()) {
    size_t end = starts.back() + kBlock;
    if (end >= text.size()) {
      end = text.size();
    } else {
      end = text.find('\n', end);
      end = end == std::string_view::npos ? text.size() : end + 1;
    }
    starts.push_back(end);
  }
  const long n_blocks = static_cast<long>(starts.size()) - 1;
  std::vector<std::vector<int32_t>> out(n_blocks);
  std::exception_ptr error;
#pragma omp parallel for schedule(dynamic, 1)
  for (long b = 0; b < n_blocks; ++b) {
    try {
      std::vector<int32_t>& ids = out[b];
      size_t pos = starts[b];
      while (pos < starts[b + 1]) {
        size_t nl = text.find('\n', pos);
        size_t end = (nl == std::string_view::npos || nl >= starts[b + 1]) ? starts[b + 1] : nl + 1;
        std::vector<int32_t> line = tok.encode(text.substr(pos, end - pos));
        ids.insert(ids.end(), line.begin(), line.end());
        pos = end;
      }
    } catch (...) {
#pragma omp critical(modlm_tokenize_error)
      if (!error) error = std::current_exception();
    }
  }
  if (error) std::rethrow_exception(error);
  return out;
}

void write_token_file(const std::string& path, const std::vector<std::vector<int32_t>>& blocks, const Tokenizer& tok,
                      const SourceStat& src, uint64_t src_hash) {
  const int vocab = tok.vocab_size();
  const uint32_t width = vocab <= 65536 ? 2 : 4;
  uint64_t count = 0;
  for (const auto& b : blocks) {
    count += b.size();
    for (int32_t id : b) {
      if (id < 0 || id >= vocab) {
        throw Error(kExitFailure, "tokenizer " + tok.id() + " produced id " + std::to_string(id) +
                                      " outside its vocabulary of " + std::to_string(vocab));
      }
    }
  }
  const std::string id = tok.id();
  if (id.size() > kMaxIdLen) throw Error(kExitFailure, "tokenizer id is too long");

  std::string header(kMagic, sizeof kMagic);
  put<uint32_t>(header, kVersion);
  put<uint32_t>(header, width);
  put<uint32_t>(header, static_cast<uint32_t>(vocab));
  put<uint64_t>(header, count);
  put<uint64_t>(header, src.size);
  put<int64_t>(header, src.mtime_ns);
  put<uint64_t>(header, src_hash);
  put<uint32_t>(header, static_cast<uint32_t>(id.size()));
  header += id;
  header.resize(align8(header.size()), '\0');

  atomic_write_file(path, [&](std::FILE* f) {
    fwrite_checked(f, header.data(), header.size(), path);
    std::vector<uint16_t> narrow;
    for (const auto& b : blocks) {
      if (width == 4) {
        fwrite_checked(f, b.data(), b.size() * sizeof(int32_t), path);
      } else {
        narrow.assign(b.begin(), b.end());
        fwrite_checked(f, narrow.data(), narrow.size() * sizeof(uint16_t), path);
      }
    }
  });
}

}  // namespace

// ---------------------------------------------------------------------------------------------

std::string token_cache_path(const std::string& text_path, const Tokenizer& tok) {
  namespace fs = std::filesystem;
  const std::string suffix = "." + short_hash(tok.id()) + ".tok";
  std::string dir = fs::path(text_path).parent_path().string();
  if (dir.empty()) dir = ".";
  if (::access(dir.c_str(), W_OK) == 0) return text_path + suffix;

  // Read-only data folder: a per-user cache, keyed by the text's absolute path.
  fs::path root;
  if (const char* xdg = std::getenv("XDG_CACHE_HOME"); xdg && xdg[0] == '/') {
    root = fs::path(xdg) / "modlm";
  } else if (const char* home = std::getenv("HOME"); home && home[0]) {
    root = fs::path(home) / ".cache" / "modlm";
  } else {
    root = fs::temp_directory_path() / "modlm-cache";
  }
  std::error_code ec;
  fs::path abs = fs::weakly_canonical(fs::path(text_path), ec);
  if (ec) abs = fs::absolute(fs::path(text_path));
  const std::string name = abs.filename().string() + "." + hex64(fnv1a64(abs.string())) + suffix;
  return (root / name).string();
}

TokenFile TokenFile::open(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw io_error(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw io_error(path + ": cannot read: not a regular file");
  }
  const size_t file_size = static_cast<size_t>(st.st_size);
  if (file_size < kFixedHeader) {
    ::close(fd);
    throw bad_input(path + ": not a token file (truncated header: " + std::to_string(file_size) + " bytes)");
  }
  void* map = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_errno = errno;
  ::close(fd);
  if (map == MAP_FAILED) throw io_error(path + ": cannot map: " + std::strerror(map_errno));

  TokenFile tf;  // owns the mapping from here on, so every throw below unmaps it
  tf.path_ = path;
  tf.map_ = map;
  tf.map_size_ = file_size;
  const auto* p = static_cast<const unsigned char*>(map);
  auto fail = [&](const std::string& what) { return bad_input(path + ": " + what); };

  if (std::memcmp(p, kMagic, sizeof kMagic) != 0) throw fail("not a modlm token file (bad magic)");
  const auto version = load<uint32_t>(p + 8);
  if (version != kVersion) throw fail("unsupported token file version " + std::to_string(version));
  const auto width = load<uint32_t>(p + 12);
  if (width != 2 && width != 4) throw fail("bad token dtype " + std::to_string(width));
  const auto vocab = load<uint32_t>(p + 16);
  if (vocab == 0 || vocab > (width == 2 ? 65536u : uint32_t(INT32_MAX))) {
    throw fail("bad vocab size " + std::to_string(vocab) + " for " + std::to_string(8 * width) + "-bit tokens");
  }
  const auto count = load<uint64_t>(p + 20);
  tf.source_size_ = load<uint64_t>(p + 28);
  tf.source_mtime_ns_ = load<int64_t>(p + 36);
  tf.source_hash_ = load<uint64_t>(p + 44);
  const auto id_len = load<uint32_t>(p + 52);
  if (id_len > kMaxIdLen) throw fail("bad header (tokenizer id of " + std::to_string(id_len) + " bytes)");
  const size_t data_offset = align8(kFixedHeader + id_len);
  if (data_offset > file_size) throw fail("truncated header");
  if (count > (file_size - data_offset) / width || data_offset + count * width != file_size) {
    throw fail("size mismatch: the header says " + std::to_string(count) + " tokens (" +
               std::to_string(data_offset + count * width) + " bytes in all) but the file has " +
               std::to_string(file_size) + " bytes (truncated or corrupt)");
  }
  tf.tokenizer_id_.assign(reinterpret_cast<const char*>(p + kFixedHeader), id_len);
  tf.tokens_ = p + data_offset;
  tf.count_ = count;
  tf.width_ = static_cast<int>(width);
  tf.vocab_size_ = static_cast<int>(vocab);

  // Every id must index the embedding table: one pass over the tokens (memory-bound).
  if (!(width == 2 && vocab == 65536)) {
    uint32_t max_id = 0;
    const long n = static_cast<long>(count);
    if (width == 2) {
      const auto* t = static_cast<const uint16_t*>(tf.tokens_);
#pragma omp parallel for reduction(max : max_id)
      for (long i = 0; i < n; ++i) max_id = std::max<uint32_t>(max_id, t[i]);
    } else {
      const auto* t = static_cast<const uint32_t*>(tf.tokens_);
#pragma omp parallel for reduction(max : max_id)
      for (long i = 0; i < n; ++i) max_id = std::max<uint32_t>(max_id, t[i]);
    }
    if (count > 0 && max_id >= vocab) {
      throw fail("corrupt: token id " + std::to_string(max_id) + " is outside the vocabulary of " + std::to_string(vocab));
    }
  }
  return tf;
}

TokenFile::TokenFile(TokenFile&& o) noexcept { *this = std::move(o); }

TokenFile& TokenFile::operator=(TokenFile&& o) noexcept {
  if (this != &o) {
    release();
    path_ = std::move(o.path_);
    map_ = o.map_;
    map_size_ = o.map_size_;
    tokens_ = o.tokens_;
    count_ = o.count_;
    width_ = o.width_;
    vocab_size_ = o.vocab_size_;
    source_size_ = o.source_size_;
    source_mtime_ns_ = o.source_mtime_ns_;
    source_hash_ = o.source_hash_;
    tokenizer_id_ = std::move(o.tokenizer_id_);
    o.map_ = nullptr;
    o.map_size_ = 0;
    o.tokens_ = nullptr;
    o.count_ = 0;
  }
  return *this;
}

TokenFile::~TokenFile() { release(); }

void TokenFile::release() {
  if (map_) ::munmap(map_, map_size_);
  map_ = nullptr;
}

void TokenFile::copy(size_t begin, size_t count, int32_t* dst) const {
  if (width_ == 2) {
    const auto* t = static_cast<const uint16_t*>(tokens_) + begin;
    for (size_t i = 0; i < count; ++i) dst[i] = t[i];
  } else {
    std::memcpy(dst, static_cast<const uint32_t*>(tokens_) + begin, count * sizeof(int32_t));
  }
}

// ---------------------------------------------------------------------------------------------

TokenFile load_or_build_tokens(const std::string& text_path, const Tokenizer& tok, bool* rebuilt) {
  if (rebuilt) *rebuilt = false;
  // Stat before reading: if the text changes while we read it, the recorded mtime is the older
  // one, so the next run sees a mismatch and falls back to comparing content hashes.
  const SourceStat src = stat_source(text_path);
  const std::string cache = token_cache_path(text_path, tok);
  const std::string tok_id = tok.id();

  std::string raw;
  bool have_raw = false;
  if (file_exists(cache)) {
    try {
      TokenFile tf = TokenFile::open(cache);
      if (tf.tokenizer_id() == tok_id && tf.vocab_size() == tok.vocab_size()) {
        if (tf.source_size() == src.size && tf.source_mtime_ns() == src.mtime_ns) return tf;
        raw = read_text_file(text_path);
        have_raw = true;
        if (raw.size() == tf.source_size() && fnv1a64(raw) == tf.source_hash()) return tf;  // touched, unchanged
      }
    } catch (const Error&) {
      // An unreadable or corrupt cache is rebuilt (it is only a cache). If it was the text that
      // could not be read, reading it again below reports that.
    }
  }

  if (!have_raw) raw = read_text_file(text_path);
  const uint64_t hash = fnv1a64(raw);
  const std::string text = decode_text(std::move(raw), text_path);
  if (text.empty()) throw bad_input(text_path + ": no text");

  const auto blocks = tokenize_lines(text, tok);
  std::error_code ec;
  const std::filesystem::path parent = std::filesystem::path(cache).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent, ec);
  if (ec) throw io_error(parent.string() + ": cannot create token cache directory: " + ec.message());
  write_token_file(cache, blocks, tok, src, hash);
  if (rebuilt) *rebuilt = true;
  return TokenFile::open(cache);
}

}  // namespace modlm::io
