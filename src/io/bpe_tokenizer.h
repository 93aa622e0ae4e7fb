// Byte-level BPE from a Hugging Face `tokenizer.json` (GPT-2, Llama 3 and their kin): the
// tokenizers library's BPE model with the ByteLevel pre-tokenizer and decoder.
//
// encode(text):
//   1. added tokens (tokenizer.json "added_tokens", e.g. <|begin_of_text|>) found in the text
//      are cut out first, longest first, and become their ids;
//   2. the rest is split by the pre-tokenizer's regex (a `Split` with "behavior": "Isolated", or
//      ByteLevel's own GPT-2 pattern with "use_regex": true), run by PCRE2 in UTF mode with
//      Unicode properties, so \p{L}, \p{N}, lookaheads and (?i:...) mean what they mean there;
//   3. each piece's bytes become GPT-2's printable byte characters (bytes_to_unicode), and
//      merges apply lowest rank first (leftmost on ties) until none applies; with
//      "ignore_merges" a piece that is itself a vocabulary entry is taken whole.
// decode(ids) maps the characters back to bytes (added tokens to their content).
//
// Refused at load (bad_input naming the field): a model other than BPE, byte_fallback,
// subword prefixes/suffixes, a normalizer, pre-tokenizers or decoders other than these.
#pragma once
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "io/tokenizer.h"

namespace modlm::io {

class BpeTokenizer final : public Tokenizer {
 public:
  explicit BpeTokenizer(const std::string& tokenizer_json_path);
  ~BpeTokenizer() override;

  std::vector<int32_t> encode(std::string_view text) const override;
  std::string decode(const std::vector<int32_t>& ids) const override;
  int vocab_size() const override { return vocab_size_; }
  std::string id() const override { return id_; }

 private:
  void encode_piece(std::string_view piece, std::vector<int32_t>& out) const;
  void encode_plain(std::string_view text, std::vector<int32_t>& out) const;

  std::unordered_map<std::string, int32_t> vocab_;  // token (byte-level characters) -> id
  std::vector<std::string> bytes_of_;                // id -> the bytes it decodes to
  std::unordered_map<std::string, int> rank_;        // "left right" -> merge rank
  std::vector<std::pair<std::string, int32_t>> added_;  // added tokens, longest content first
  std::vector<int> added_by_first_[256];             // indices into added_ by first byte
  std::string byte_char_[256];                       // byte -> its printable character (UTF-8)
  struct Regex;
  std::unique_ptr<Regex> re_;                        // the pre-tokenizer's split pattern (null: none)
  bool add_prefix_space_ = false, ignore_merges_ = false;
  int vocab_size_ = 0;
  std::string id_;
};

}  // namespace modlm::io
