// Tokenizers: the byte-level one (ids 0-255 are the bytes) and SentencePiece models
// (tokenizer.model in a model folder; SPEC.md §6), plus training a SentencePiece BPE model.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace sentencepiece {
class SentencePieceProcessor;
}

namespace modlm::io {

class Tokenizer {
 public:
  virtual ~Tokenizer();
  // Thread-safe: encode/decode may be called concurrently on one tokenizer.
  virtual std::vector<int32_t> encode(std::string_view text) const = 0;
  // Ids outside [0, vocab_size()) are skipped.
  virtual std::string decode(const std::vector<int32_t>& ids) const = 0;
  virtual int vocab_size() const = 0;
  // A stable fingerprint: equal ids <=> the same mapping from text to ids.
  // "bytes" or "spm:<16 hex digits of fnv1a64 of the tokenizer.model bytes>".
  virtual std::string id() const = 0;
};

// ids 0-255 are the bytes of the text, so every byte string round-trips exactly.
class ByteTokenizer final : public Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  int vocab_size() const override { return 256; }
  std::string id() const override { return "bytes"; }
};

class SentencePieceTokenizer final : public Tokenizer {
 public:
  // Missing/unreadable file -> io_error (exit 4); not a valid SentencePiece model -> bad_input
  // (exit 3). Messages name the file.
  explicit SentencePieceTokenizer(const std::string& model_path);
  ~SentencePieceTokenizer() override;

  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  int vocab_size() const override;
  std::string id() const override { return id_; }

 private:
  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  std::string id_;
};

// Copies a model folder's tokenizer files (tokenizer.model, tokenizer.json: those present) into
// another folder; returns how many there were.
int copy_tokenizer_files(const std::string& from_dir, const std::string& to_dir);

// The tokenizer of a model folder: ByteTokenizer if `bytes` (config.json has
// "tokenizer": "bytes"), else model_dir/tokenizer.model, else model_dir/tokenizer.json (byte-level
// BPE, io/bpe_tokenizer.h); io_error naming the path if neither is there.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir, bool bytes);

// Trains a SentencePiece BPE model on the text of `input_text_path` (plain or gzip) and writes
// out_dir/tokenizer.model and out_dir/tokenizer.vocab ("piece<TAB>score" lines), each atomically;
// out_dir is created if needed. At most `max_sentences` lines (sampled by the trainer, seeded
// by `seed`) are used. vocab_size outside [260, 2^20], or an input with no text -> bad_input.
//
// The model is lossless for UTF-8 text: decode(encode(s)) == s.
//  - normalization "identity", no extra-whitespace removal, and no dummy prefix (no "▁" is added
//    at the start of the text), so spaces, newlines and Unicode forms are kept as they are;
//  - byte_fallback: a character outside the vocabulary becomes its UTF-8 bytes (<0xNN> pieces),
//    so nothing maps to <unk>. Characters get pieces of their own by frequency: all of them
//    when they fit in half of the vocab_size - 257 non-byte slots, else the most frequent that
//    do (see characters_to_keep in the .cpp); the others are always byte-encoded. Newlines, which the trainer never sees (it reads lines), always
//    encode as the byte piece <0x0A>;
//  - no BOS/EOS/PAD: id 0 is <unk> (SentencePiece requires one, byte fallback leaves it unused),
//    ids 1-256 are the bytes 0x00-0xFF, and the rest are merged pieces. Every id is text, so
//    a token stream is simply the concatenation of the texts' encodings.
// Because no piece contains a newline, encode(a + "\n" + b) == encode(a + "\n") ++ encode(b).
// (Exceptions: a literal U+2581 "▁" in the text decodes as a space, and bytes that are not valid
// UTF-8 decode as U+FFFD; train on / use the byte tokenizer for arbitrary binary data.)
void train_sentencepiece(const std::string& input_text_path, int vocab_size, const std::string& out_dir,
                         uint64_t seed = 0, int64_t max_sentences = 2000000);

}  // namespace modlm::io
