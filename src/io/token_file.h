// Token files: a text tokenized once and cached next to it (or under ~/.cache/modlm), memory-mapped
// for training and evaluation.
//
// Layout (little endian):
//   "MODLMTOK"          8 bytes magic
//   version             u32 (= 1)
//   dtype               u32: 2 = uint16 tokens (vocab <= 65536), 4 = uint32 tokens
//   vocab_size          u32: every token is < vocab_size (checked on open)
//   count               u64: number of tokens
//   source_size         u64: size in bytes of the text file as it was on disk (gzip: compressed)
//   source_mtime_ns     i64: its modification time
//   source_hash         u64: fnv1a64 of its raw bytes
//   id_len              u32, then id_len bytes: the tokenizer's id()
//   zero padding to a multiple of 8 bytes
//   count tokens of `dtype` bytes each, and nothing after them
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>

#include "io/tokenizer.h"

namespace modlm::io {

// Where the token cache of `text_path` under `tok` lives:
// text_path + "." + <8 hex digits of fnv1a64(tok.id())> + ".tok" when the text's directory is
// writable; otherwise $XDG_CACHE_HOME/modlm/ (or ~/.cache/modlm/) +
// <file name> + "." + <16 hex digits of fnv1a64(absolute text path)> + "." + <8 hex> + ".tok".
// Does not create anything.
std::string token_cache_path(const std::string& text_path, const Tokenizer& tok);

// A token file mapped read-only. Movable, not copyable.
class TokenFile {
 public:
  // Maps and validates `path`: header, exact file size, and every token < vocab_size.
  // Missing/unreadable -> io_error (exit 4); anything malformed -> bad_input (exit 3); the
  // messages name the file.
  static TokenFile open(const std::string& path);

  TokenFile(TokenFile&& other) noexcept;
  TokenFile& operator=(TokenFile&& other) noexcept;
  TokenFile(const TokenFile&) = delete;
  TokenFile& operator=(const TokenFile&) = delete;
  ~TokenFile();

  size_t size() const { return count_; }
  int32_t operator[](size_t i) const {
    return width_ == 2 ? static_cast<const uint16_t*>(tokens_)[i] : static_cast<int32_t>(static_cast<const uint32_t*>(tokens_)[i]);
  }
  // dst[0..count) = tokens [begin, begin + count). Precondition: begin + count <= size().
  void copy(size_t begin, size_t count, int32_t* dst) const;

  const std::string& path() const { return path_; }
  const std::string& tokenizer_id() const { return tokenizer_id_; }
  int vocab_size() const { return vocab_size_; }
  uint64_t source_size() const { return source_size_; }
  int64_t source_mtime_ns() const { return source_mtime_ns_; }
  uint64_t source_hash() const { return source_hash_; }

 private:
  TokenFile() = default;
  void release();

  std::string path_;
  void* map_ = nullptr;  // the whole file
  size_t map_size_ = 0;
  const void* tokens_ = nullptr;  // 8-byte aligned inside map_
  size_t count_ = 0;
  int width_ = 2;  // bytes per token
  int vocab_size_ = 0;
  uint64_t source_size_ = 0;
  int64_t source_mtime_ns_ = 0;
  uint64_t source_hash_ = 0;
  std::string tokenizer_id_;
};

// Tokenizes `text_path` (plain or gzip) with `tok`, reusing the cache file at
// token_cache_path(text_path, tok) when it was made by the same tokenizer from the same text:
// the recorded size and mtime match, or, if they differ, the recorded content hash matches (a
// touched but unchanged file is reused). Otherwise (no cache, stale, or unreadable/corrupt cache)
// the text is tokenized and the cache written atomically. *rebuilt (if given) tells which.
//
// The tokens are the concatenation of tok.encode(line) over the text's lines, each line
// including its '\n' (the last one may lack it). For ByteTokenizer and for models made by
// train_sentencepiece this equals tok.encode(whole text). Lines are encoded in parallel (OpenMP).
// A text with no bytes -> bad_input("<path>: no text").
TokenFile load_or_build_tokens(const std::string& text_path, const Tokenizer& tok, bool* rebuilt = nullptr);

}  // namespace modlm::io
