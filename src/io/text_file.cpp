#include "io/text_file.h"

#include <zlib.h>

#include <algorithm>
#include <new>
#include <stdexcept>

#include "util/error.h"
#include "util/fs.h"

namespace modlm::io {

bool is_gzip(std::string_view raw) {
  return raw.size() >= 2 && static_cast<unsigned char>(raw[0]) == 0x1f && static_cast<unsigned char>(raw[1]) == 0x8b;
}

namespace {

// Inflates every gzip member of `in` into one string.
std::string gunzip(std::string_view in, const std::string& path) {
  z_stream zs{};
  // 15 + 16: a gzip wrapper (not zlib / raw deflate), 32 KiB window.
  if (inflateInit2(&zs, 15 + 16) != Z_OK) throw Error(kExitFailure, path + ": zlib init failed");
  struct Guard {
    z_stream* z;
    ~Guard() { inflateEnd(z); }
  } guard{&zs};

  std::string out;
  out.reserve(std::min<size_t>(in.size() * 4, size_t(1) << 30));
  size_t pos = 0;  // bytes of `in` consumed so far
  char buf[1 << 16];
  for (;;) {
    // zlib counts in uInt, so feed the input in pieces below 4 GiB.
    const size_t chunk = std::min<size_t>(in.size() - pos, size_t(1) << 30);
    zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(in.data() + pos));
    zs.avail_in = static_cast<uInt>(chunk);
    int rc = Z_OK;
    while (rc != Z_STREAM_END) {
      zs.next_out = reinterpret_cast<Bytef*>(buf);
      zs.avail_out = sizeof buf;
      rc = inflate(&zs, Z_NO_FLUSH);
      if (rc == Z_NEED_DICT || rc == Z_DATA_ERROR || rc == Z_MEM_ERROR || rc == Z_STREAM_ERROR) {
        throw bad_input(path + ": corrupt gzip data" + (zs.msg ? std::string(" (") + zs.msg + ")" : std::string()));
      }
      const size_t produced = sizeof buf - zs.avail_out;
      try {
        out.append(buf, produced);
      } catch (const std::bad_alloc&) {
        throw bad_input(path + ": decompressed text does not fit in memory");
      } catch (const std::length_error&) {
        throw bad_input(path + ": decompressed text does not fit in memory");
      }
      if (rc == Z_BUF_ERROR || (zs.avail_in == 0 && produced == 0 && rc != Z_STREAM_END)) {
        // No progress possible: this input piece is used up.
        break;
      }
    }
    pos += chunk - zs.avail_in;
    if (rc == Z_STREAM_END) {
      // Another member follows (concatenated .gz files), or trailing zero padding, or garbage.
      std::string_view rest = in.substr(pos);
      if (rest.empty()) return out;
      if (is_gzip(rest)) {
        inflateReset(&zs);
        continue;
      }
      if (std::all_of(rest.begin(), rest.end(), [](char c) { return c == 0; })) return out;
      throw bad_input(path + ": corrupt gzip data (unexpected bytes after the end of the stream)");
    }
    if (pos >= in.size()) throw bad_input(path + ": corrupt gzip data (truncated: the stream ends early)");
  }
}

}  // namespace

std::string decode_text(std::string raw, const std::string& path) {
  if (!is_gzip(raw)) return raw;
  return gunzip(raw, path);
}

std::string read_text(const std::string& path) { return decode_text(read_text_file(path), path); }

uint64_t fnv1a64(std::string_view bytes) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char c : bytes) {
    h ^= c;
    h *= 0x100000001b3ull;
  }
  return h;
}

std::string hex64(uint64_t v) {
  static const char* digits = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) s[i] = digits[v & 15];
  return s;
}

}  // namespace modlm::io
