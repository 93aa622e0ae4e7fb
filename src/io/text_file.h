// Reading training/evaluation text: plain or gzip-compressed, told apart by content, not by name.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace modlm::io {

// The whole text of `path`. A file starting with the gzip magic bytes 1f 8b is decompressed
// (several concatenated gzip members are allowed, as `cat a.gz b.gz` produces); anything else is
// returned byte for byte. Missing or unreadable file -> io_error (exit 4); corrupt or truncated
// gzip -> bad_input (exit 3). Both messages name the file.
std::string read_text(const std::string& path);

// As read_text, for bytes already read from `path` (`path` is only used in messages). Lets a
// caller hash the raw bytes and decode them without reading the file twice.
std::string decode_text(std::string raw, const std::string& path);

// True if `raw` starts with the gzip magic bytes.
bool is_gzip(std::string_view raw);

// 64-bit FNV-1a of `bytes`: the content fingerprint used by the token cache and tokenizer ids.
uint64_t fnv1a64(std::string_view bytes);

// `v` as 16 lower-case hex digits.
std::string hex64(uint64_t v);

}  // namespace modlm::io
