#include "infer/text_stream.h"

namespace modlm::infer {

size_t utf8_complete_prefix(const std::string& s) {
  const size_t n = s.size();
  // Look back at most 3 bytes for the lead byte of the last character.
  for (size_t back = 1; back <= 4 && back <= n; ++back) {
    const unsigned char c = (unsigned char)s[n - back];
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: keep looking for the lead
    int need = c >= 0xF0 && c <= 0xF4 ? 4 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xC2 && c <= 0xDF ? 2 : 1;
    return (int)back < need ? n - back : n;
  }
  return n;
}

std::string TextStream::push(int32_t id) {
  ids_.push_back(id);
  const std::string text = tok_.decode(ids_);
  const bool extends = text.compare(0, printed_.size(), printed_) == 0 && text.size() >= printed_.size();
  // If an earlier part changed (it cannot be unprinted), carry on from the same byte offset.
  std::string fresh = text.size() > printed_.size() ? text.substr(printed_.size()) : std::string();
  size_t keep = utf8_complete_prefix(fresh);
  static const std::string kReplacement = "\xEF\xBF\xBD";  // U+FFFD
  while (keep >= 3 && fresh.compare(keep - 3, 3, kReplacement) == 0) keep -= 3;
  std::string out = fresh.substr(0, keep);
  printed_ += out;
  if (extends && keep == fresh.size()) {  // all of decode(ids_) is out: a clean point
    ids_.clear();
    printed_.clear();
  }
  return out;
}

std::string TextStream::finish() {
  std::string text = tok_.decode(ids_);
  std::string out = text.size() > printed_.size() ? text.substr(printed_.size()) : std::string();
  ids_.clear();
  printed_.clear();
  return out;
}

}  // namespace modlm::infer
