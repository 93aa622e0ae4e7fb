// Turning generated token ids into text as they arrive, for streaming output.
//
// A token can end in the middle of a UTF-8 character (the byte tokenizer, SentencePiece byte
// fallback), and a SentencePiece decode of an incomplete byte sequence shows U+FFFD until the
// rest arrives. The streamer decodes the ids since the last clean point, prints the difference
// to what it already printed, and holds back an incomplete UTF-8 tail and a trailing U+FFFD
// until more ids (or finish()) settle them. The concatenation of everything push() and finish()
// return equals tokenizer.decode(all ids) whenever decoding is a concatenation of pieces.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "io/tokenizer.h"

namespace modlm::infer {

class TextStream {
 public:
  explicit TextStream(const io::Tokenizer& tok) : tok_(tok) {}
  // The text that became final with this id (possibly empty).
  std::string push(int32_t id);
  // Everything still held back; the stream starts afresh afterwards.
  std::string finish();

 private:
  const io::Tokenizer& tok_;
  std::vector<int32_t> ids_;  // since the last clean point
  std::string printed_;       // what was returned of decode(ids_)
};

// Length of the longest prefix of s that does not end in an incomplete UTF-8 sequence (a lead
// byte missing some of its continuation bytes). Invalid bytes are not held back.
size_t utf8_complete_prefix(const std::string& s);

}  // namespace modlm::infer
