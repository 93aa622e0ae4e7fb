#include "io/bpe_tokenizer.h"

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include <algorithm>
#include <limits>
#include <nlohmann/json.hpp>

#include "io/text_file.h"
#include "util/error.h"
#include "util/fs.h"

namespace modlm::io {

using json = nlohmann::json;

namespace {

// GPT-2's pre-tokenizer pattern (the ByteLevel pre-tokenizer's own, "use_regex": true).
const char* kGpt2Pattern = R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr size_t kMaxTokenizerJson = 256u << 20;

void append_utf8(std::string& s, uint32_t cp) {
  if (cp < 0x80) {
    s += (char)cp;
  } else if (cp < 0x800) {
    s += (char)(0xC0 | (cp >> 6)), s += (char)(0x80 | (cp & 0x3F));
  } else {
    s += (char)(0xE0 | (cp >> 12)), s += (char)(0x80 | ((cp >> 6) & 0x3F)), s += (char)(0x80 | (cp & 0x3F));
  }
}

// Splits a UTF-8 string into its characters (an invalid byte stands alone).
std::vector<std::string> utf8_chars(const std::string& s) {
  std::vector<std::string> out;
  for (size_t i = 0; i < s.size();) {
    const unsigned char c = (unsigned char)s[i];
    size_t n = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 1;
    if (i + n > s.size()) n = 1;
    out.push_back(s.substr(i, n));
    i += n;
  }
  return out;
}

}  // namespace

struct BpeTokenizer::Regex {
  pcre2_code* code = nullptr;
  ~Regex() {
    if (code) pcre2_code_free(code);
  }
};

BpeTokenizer::~BpeTokenizer() = default;

BpeTokenizer::BpeTokenizer(const std::string& path) {
  const std::string raw = read_text_file(path, kMaxTokenizerJson);
  id_ = "bpe:" + hex64(fnv1a64(raw));
  json j;
  try {
    j = json::parse(raw);
  } catch (const json::exception& e) {
    throw bad_input(path + ": not valid JSON: " + e.what());
  }
  auto refuse = [&](const std::string& field, const std::string& why) { throw bad_input(path + ": " + field + " " + why); };
  std::string pattern;  // the pre-tokenizer's split regex ("" = none)
  try {
    if (!j.is_object() || !j.contains("model") || !j["model"].is_object()) refuse("model", "is missing (not a tokenizers file)");
    const json& m = j["model"];
    if (m.value("type", std::string("BPE")) != "BPE") refuse("model.type", "\"" + m.value("type", std::string()) + "\" is not supported (only BPE)");
    if (m.value("byte_fallback", false)) refuse("model.byte_fallback", "true is not supported (a SentencePiece-style BPE: use tokenizer.model)");
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"})
      if (m.contains(k) && !m[k].is_null() && m[k] != "") refuse(std::string("model.") + k, "is not supported");
    if (m.contains("dropout") && !m["dropout"].is_null() && m["dropout"].get<double>() != 0) refuse("model.dropout", "is not supported");
    ignore_merges_ = m.value("ignore_merges", false);
    if (j.contains("normalizer") && !j["normalizer"].is_null()) refuse("normalizer", j["normalizer"].value("type", std::string("?")) + " is not supported (only null)");

    // Pre-tokenizer: ByteLevel (its own regex or none), or Sequence[Split(regex, Isolated), ByteLevel].
    bool byte_level = false;
    auto byte_level_of = [&](const json& p) {
      byte_level = true;
      add_prefix_space_ = p.value("add_prefix_space", false);
      if (p.value("use_regex", true)) {
        if (!pattern.empty()) refuse("pre_tokenizer", "splits twice (a Split and ByteLevel with use_regex)");
        pattern = kGpt2Pattern;
      }
    };
    const json& pt = j.contains("pre_tokenizer") ? j["pre_tokenizer"] : json();
    if (pt.is_object() && pt.value("type", "") == "ByteLevel") {
      byte_level_of(pt);
    } else if (pt.is_object() && pt.value("type", "") == "Sequence" && pt.contains("pretokenizers") && pt["pretokenizers"].is_array()) {
      for (const json& p : pt["pretokenizers"]) {
        const std::string type = p.value("type", "");
        if (type == "Split") {
          if (!p.contains("pattern") || !p["pattern"].is_object() || !p["pattern"].contains("Regex") || !p["pattern"]["Regex"].is_string())
            refuse("pre_tokenizer Split.pattern", "must be {\"Regex\": ...}");
          if (p.value("behavior", "") != "Isolated" || p.value("invert", false))
            refuse("pre_tokenizer Split.behavior", "\"" + p.value("behavior", "") + "\" is not supported (only Isolated, not inverted)");
          if (!pattern.empty()) refuse("pre_tokenizer", "has two Split steps");
          pattern = p["pattern"]["Regex"].get<std::string>();
        } else if (type == "ByteLevel") {
          byte_level_of(p);
        } else {
          refuse("pre_tokenizer", "step \"" + type + "\" is not supported (Split and ByteLevel are)");
        }
      }
    } else {
      refuse("pre_tokenizer", "must be ByteLevel or Sequence[Split, ByteLevel] (byte-level BPE)");
    }
    if (!byte_level) refuse("pre_tokenizer", "has no ByteLevel step (not a byte-level BPE)");
    if (j.contains("decoder") && !j["decoder"].is_null() && j["decoder"].value("type", "") != "ByteLevel")
      refuse("decoder", "\"" + j["decoder"].value("type", "") + "\" is not supported (only ByteLevel)");

    // GPT-2's bytes_to_unicode: printable bytes stand for themselves, the others for U+0100 on.
    {
      std::vector<int> cs(256, -1);
      for (int b = 0; b < 256; ++b)
        if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) cs[b] = b;
      int n = 0;
      for (int b = 0; b < 256; ++b)
        if (cs[b] < 0) cs[b] = 256 + n++;
      for (int b = 0; b < 256; ++b) append_utf8(byte_char_[b], (uint32_t)cs[b]);
    }
    std::unordered_map<std::string, uint8_t> byte_of_char;
    for (int b = 0; b < 256; ++b) byte_of_char[byte_char_[b]] = (uint8_t)b;

    if (!m.contains("vocab") || !m["vocab"].is_object()) refuse("model.vocab", "must be an object (token -> id)");
    int64_t max_id = -1;
    for (auto it = m["vocab"].begin(); it != m["vocab"].end(); ++it) {
      if (!it.value().is_number_integer()) refuse("model.vocab[\"" + it.key() + "\"]", "must be an integer id");
      const int64_t id = it.value().get<int64_t>();
      if (id < 0 || id >= (1 << 24)) refuse("model.vocab[\"" + it.key() + "\"]", "id " + std::to_string(id) + " is outside [0, 2^24)");
      vocab_[it.key()] = (int32_t)id;
      max_id = std::max(max_id, id);
    }
    if (j.contains("added_tokens") && j["added_tokens"].is_array())
      for (const json& a : j["added_tokens"]) {
        if (!a.is_object() || !a.contains("id") || !a["id"].is_number_integer() || !a.contains("content") || !a["content"].is_string())
          refuse("added_tokens", "entries need an integer id and a string content");
        const int64_t id = a["id"].get<int64_t>();
        if (id < 0 || id >= (1 << 24)) refuse("added_tokens", "id " + std::to_string(id) + " is outside [0, 2^24)");
        const std::string content = a["content"].get<std::string>();
        if (content.empty()) refuse("added_tokens", "content must not be empty");
        added_.push_back({content, (int32_t)id});
        max_id = std::max(max_id, id);
      }
    std::stable_sort(added_.begin(), added_.end(), [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
    for (size_t i = 0; i < added_.size(); ++i) added_by_first_[(unsigned char)added_[i].first[0]].push_back((int)i);
    vocab_size_ = (int)max_id + 1;
    bytes_of_.assign(vocab_size_, std::string());
    for (const auto& [tok, id] : vocab_) {
      std::string bytes;
      for (const std::string& ch : utf8_chars(tok)) {
        auto it = byte_of_char.find(ch);
        if (it == byte_of_char.end()) {
          bytes.clear();
          bytes = tok;  // not a byte-level token (a special token kept in the vocab): its text
          break;
        }
        bytes += (char)it->second;
      }
      bytes_of_[id] = bytes;
    }
    for (const auto& [content, id] : added_) bytes_of_[id] = content;
    for (int b = 0; b < 256; ++b)
      if (!vocab_.count(byte_char_[b])) refuse("model.vocab", "lacks the byte token for byte " + std::to_string(b) + " (not a byte-level vocabulary)");

    if (!m.contains("merges") || !m["merges"].is_array()) refuse("model.merges", "must be a list");
    int rank = 0;
    for (const json& mg : m["merges"]) {
      std::string a, b;
      if (mg.is_string()) {
        const std::string s = mg.get<std::string>();
        const size_t sp = s.find(' ');
        if (sp == std::string::npos || sp == 0 || sp + 1 >= s.size()) refuse("model.merges", "entry \"" + s + "\" is not \"left right\"");
        a = s.substr(0, sp), b = s.substr(sp + 1);
      } else if (mg.is_array() && mg.size() == 2 && mg[0].is_string() && mg[1].is_string()) {
        a = mg[0].get<std::string>(), b = mg[1].get<std::string>();
      } else {
        refuse("model.merges", "entries must be \"left right\" strings or [left, right] pairs");
      }
      if (!vocab_.count(a + b)) refuse("model.merges", "merge \"" + a + " " + b + "\" makes a token the vocabulary lacks");
      rank_.emplace(a + " " + b, rank++);
    }
  } catch (const json::exception& e) {
    throw bad_input(path + ": " + e.what());
  }
  if (!pattern.empty()) {
    int err = 0;
    PCRE2_SIZE off = 0;
    re_ = std::make_unique<Regex>();
    re_->code = pcre2_compile((PCRE2_SPTR)pattern.data(), pattern.size(), PCRE2_UTF | PCRE2_UCP, &err, &off, nullptr);
    if (!re_->code) {
      PCRE2_UCHAR msg[256];
      pcre2_get_error_message(err, msg, sizeof msg);
      throw bad_input(path + ": pre_tokenizer pattern does not compile at offset " + std::to_string(off) + ": " + (const char*)msg);
    }
  }
}

void BpeTokenizer::encode_piece(std::string_view piece, std::vector<int32_t>& out) const {
  std::vector<std::string> sym;
  std::string whole;
  for (unsigned char c : piece) sym.push_back(byte_char_[c]), whole += byte_char_[c];
  if (ignore_merges_) {
    auto it = vocab_.find(whole);
    if (it != vocab_.end()) return out.push_back(it->second);
  }
  while (sym.size() > 1) {
    int best = std::numeric_limits<int>::max();
    size_t at = 0;
    for (size_t i = 0; i + 1 < sym.size(); ++i) {
      auto it = rank_.find(sym[i] + " " + sym[i + 1]);
      if (it != rank_.end() && it->second < best) best = it->second, at = i;
    }
    if (best == std::numeric_limits<int>::max()) break;
    sym[at] += sym[at + 1];
    sym.erase(sym.begin() + at + 1);
  }
  for (const std::string& s : sym) out.push_back(vocab_.at(s));  // every symbol is a byte or a merge result
}

void BpeTokenizer::encode_plain(std::string_view text, std::vector<int32_t>& out) const {
  if (text.empty()) return;
  if (!re_) return encode_piece(text, out);
  pcre2_match_data* md = pcre2_match_data_create_from_pattern(re_->code, nullptr);
  size_t pos = 0, last = 0;
  while (pos <= text.size()) {
    const int rc = pcre2_match(re_->code, (PCRE2_SPTR)text.data(), text.size(), pos, 0, md, nullptr);
    if (rc < 0) break;  // no further match (or invalid UTF-8 from here: the rest is one piece)
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(md);
    const size_t b = ov[0], e = ov[1];
    if (b > last) encode_piece(text.substr(last, b - last), out);  // a gap: its own piece
    if (e > b) encode_piece(text.substr(b, e - b), out);
    last = e;
    if (e == b) {  // an empty match: step one character on
      pos = e + 1;
      while (pos < text.size() && ((unsigned char)text[pos] & 0xC0) == 0x80) ++pos;
    } else {
      pos = e;
    }
    if (pos >= text.size()) break;
  }
  pcre2_match_data_free(md);
  if (last < text.size()) encode_piece(text.substr(last), out);
}

std::vector<int32_t> BpeTokenizer::encode(std::string_view text) const {
  std::string buf;
  if (add_prefix_space_ && !text.empty() && text[0] != ' ') {
    buf = " " + std::string(text);
    text = buf;
  }
  std::vector<int32_t> out;
  size_t start = 0;
  // Added tokens first: scanning left to right, the longest one starting at a position cuts the text.
  size_t i = 0;
  while (!added_.empty() && i < text.size()) {
    const std::pair<std::string, int32_t>* hit = nullptr;
    for (int k : added_by_first_[(unsigned char)text[i]])
      if (text.compare(i, added_[k].first.size(), added_[k].first) == 0) {
        hit = &added_[k];
        break;
      }
    if (!hit) {
      ++i;
      continue;
    }
    encode_plain(text.substr(start, i - start), out);
    out.push_back(hit->second);
    start = i = i + hit->first.size();
  }
  encode_plain(text.substr(start), out);
  return out;
}

std::string BpeTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string s;
  for (int32_t id : ids)
    if (id >= 0 && id < vocab_size_) s += bytes_of_[id];
  return s;
}

}  // namespace modlm::io
