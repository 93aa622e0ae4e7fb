#include "io/tokenizer.h"

#include "io/bpe_tokenizer.h"

#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <algorithm>
#include <filesystem>
#include <mutex>
#include <optional>
#include <system_error>
#include <unordered_map>
#include <unordered_set>
#include <utility>

#include "io/text_file.h"
#include "util/error.h"
#include "util/fs.h"

namespace modlm::io {

Tokenizer::~Tokenizer() = default;

// ---------------------------------------------------------------------------------------------
// ByteTokenizer

std::vector<int32_t> ByteTokenizer::encode(std::string_view text) const {
  std::vector<int32_t> ids(text.size());
  for (size_t i = 0; i < text.size(); ++i) ids[i] = static_cast<unsigned char>(text[i]);
  return ids;
}

std::string ByteTokenizer::decode(const std::vector<int32_t>& ids) const {
  std::string out;
  out.reserve(ids.size());
  for (int32_t id : ids) {
    if (id >= 0 && id < 256) out.push_back(static_cast<char>(id));
  }
  return out;
}

// ---------------------------------------------------------------------------------------------
// SentencePieceTokenizer

SentencePieceTokenizer::SentencePieceTokenizer(const std::string& model_path)
    : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {
  const std::string bytes = read_text_file(model_path);  // io_error if missing/unreadable
  const auto status = sp_->LoadFromSerializedProto(bytes);
  if (!status.ok()) {
    throw bad_input(model_path + ": not a valid SentencePiece model (" + status.ToString() + ")");
  }
  if (sp_->GetPieceSize() <= 0) throw bad_input(model_path + ": SentencePiece model has no pieces");
  id_ = "spm:" + hex64(fnv1a64(bytes));
}

SentencePieceTokenizer::~SentencePieceTokenizer() = default;

std::vector<int32_t> SentencePieceTokenizer::encode(std::string_view text) const {
  std::vector<int> ids;
  const auto status = sp_->Encode(text, &ids);
  if (!status.ok()) throw Error(kExitFailure, "SentencePiece encode failed: " + status.ToString());
  return std::vector<int32_t>(ids.begin(), ids.end());
}

std::string SentencePieceTokenizer::decode(const std::vector<int32_t>& ids) const {
  const int n = sp_->GetPieceSize();
  std::vector<int> valid;
  valid.reserve(ids.size());
  for (int32_t id : ids) {
    if (id >= 0 && id < n) valid.push_back(id);
  }
  std::string out;
  const auto status = sp_->Decode(valid, &out);
  if (!status.ok()) throw Error(kExitFailure, "SentencePiece decode failed: " + status.ToString());
  return out;
}

int SentencePieceTokenizer::vocab_size() const { return sp_->GetPieceSize(); }

int copy_tokenizer_files(const std::string& from_dir, const std::string& to_dir) {
  int n = 0;
  for (const char* t : {"tokenizer.model", "tokenizer.json"})
    if (file_exists(from_dir + "/" + t)) copy_file_checked(from_dir + "/" + t, to_dir + "/" + t), ++n;
  return n;
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& model_dir, bool bytes) {
  if (bytes) return std::make_unique<ByteTokenizer>();
  const std::string path = (std::filesystem::path(model_dir) / "tokenizer.model").string();
  const std::string json_path = (std::filesystem::path(model_dir) / "tokenizer.json").string();
  if (!file_exists(path) && file_exists(json_path)) return std::make_unique<BpeTokenizer>(json_path);
  if (!file_exists(path)) {
    throw io_error(path + ": tokenizer.model not found (a model folder needs one, or a tokenizer.json, or \"tokenizer\": \"bytes\" in config.json)");
  }
  return std::make_unique<SentencePieceTokenizer>(path);
}

// ---------------------------------------------------------------------------------------------
// Training

namespace {

// Longest sentence handed to the trainer. SentencePiece silently drops sentences longer than its
// max_sentence_length (4192 bytes by default), so longer lines are cut into pieces instead: the
// trainer only counts words and pairs, and cutting at a space loses none of them.
constexpr size_t kMaxTrainSentence = 4096;

constexpr uint32_t kInvalid = 0xFFFFFFFF;

// The UTF-8 character at s[i]: its code point and byte length. An invalid, overlong or truncated
// sequence is reported as one byte with code point kInvalid.
std::pair<uint32_t, size_t> next_char(std::string_view s, size_t i) {
  const auto c = static_cast<unsigned char>(s[i]);
  if (c < 0x80) return {c, 1};
  size_t len;
  uint32_t cp;
  if ((c >> 5) == 0x6) {
    len = 2, cp = c & 0x1F;
  } else if ((c >> 4) == 0xE) {
    len = 3, cp = c & 0x0F;
  } else if ((c >> 3) == 0x1E) {
    len = 4, cp = c & 0x07;
  } else {
    return {kInvalid, 1};
  }
  if (i + len > s.size()) return {kInvalid, 1};
  for (size_t k = 1; k < len; ++k) {
    const auto cc = static_cast<unsigned char>(s[i + k]);
    if ((cc & 0xC0) != 0x80) return {kInvalid, 1};
    cp = (cp << 6) | (cc & 0x3F);
  }
  static constexpr uint32_t kMin[5] = {0, 0, 0x80, 0x800, 0x10000};
  if (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return {kInvalid, 1};
  return {cp, len};
}

// The trainer writes ' ' as U+2581 and counts it as that character.
uint32_t as_trained(uint32_t cp) { return cp == ' ' ? 0x2581 : cp; }

// Which characters the trainer may see.
//
// SentencePiece gives every character it sees in training ("required chars", with
// character_coverage 1.0) a piece of its own, and fails if they do not fit next to the 257 fixed
// pieces (<unk> + 256 bytes); character_coverage cannot go below 0.98, which does not help a
// small vocabulary. With byte fallback a character without a piece still encodes, as its UTF-8
// bytes, so: if all distinct characters fit in half of the vocab_size - 257 free slots, all are
// kept (nullopt). Otherwise only the most frequent that fit in that half are, and the training
// sentences are split at every other character, so the trainer never sees it; the other half of
// the slots is left for merges.
std::optional<std::unordered_set<uint32_t>> characters_to_keep(std::string_view text, int vocab_size) {
  std::unordered_map<uint32_t, int64_t> counts;
  for (size_t i = 0; i < text.size();) {
    const auto [cp, len] = next_char(text, i);
    i += len;
    if (cp != '\n' && cp != kInvalid) ++counts[as_trained(cp)];
  }
  const size_t room = static_cast<size_t>(std::max(1, (vocab_size - 257) / 2));
  if (counts.size() <= room) return std::nullopt;
  std::vector<std::pair<int64_t, uint32_t>> by_count;  // (-count, code point): most frequent first
  by_count.reserve(counts.size());
  for (const auto& [cp, n] : counts) by_count.emplace_back(-n, cp);
  std::sort(by_count.begin(), by_count.end());
  std::unordered_set<uint32_t> keep;
  for (size_t k = 0; k < room; ++k) keep.insert(by_count[k].second);
  return keep;
}

// Feeds the trainer the lines of an in-memory text: split at characters not kept (and at bytes
// that are not valid UTF-8), cut to at most kMaxTrainSentence bytes, empty pieces skipped.
class SentenceFeeder final : public sentencepiece::SentenceIterator {
 public:
  SentenceFeeder(std::string_view text, const std::optional<std::unordered_set<uint32_t>>& keep)
      : text_(text), keep_(keep) {
    Next();
  }
  bool done() const override { return done_; }
  const std::string& value() const override { return value_; }
  sentencepiece::util::Status status() const override { return sentencepiece::util::Status(); }  // OK

  void Next() override {
    for (;;) {
      if (!segment_.empty()) {
        size_t cut = segment_.size();
        if (cut > kMaxTrainSentence) {
          cut = segment_.rfind(' ', kMaxTrainSentence);
          if (cut == std::string_view::npos || cut == 0) {
            // No space: cut at a character boundary (not before a continuation byte).
            cut = kMaxTrainSentence;
            while (cut > 1 && (static_cast<unsigned char>(segment_[cut]) & 0xC0) == 0x80) --cut;
          }
        }
        value_.assign(segment_.substr(0, cut));
        segment_.remove_prefix(cut);
        return;
      }
      if (!line_.empty()) {
        // The next segment: the line up to its first character that is not kept.
        size_t j = 0;
        size_t skip = 0;
        while (j < line_.size()) {
          const auto [cp, len] = next_char(line_, j);
          if (!kept(cp)) {
            skip = len;
            break;
          }
          j += len;
        }
        segment_ = line_.substr(0, j);
        line_.remove_prefix(j + skip);
        continue;
      }
      if (pos_ >= text_.size()) {
        done_ = true;
        return;
      }
      size_t nl = text_.find('\n', pos_);
      if (nl == std::string_view::npos) nl = text_.size();
      line_ = text_.substr(pos_, nl - pos_);
      pos_ = nl + 1;
    }
  }

 private:
  bool kept(uint32_t cp) const { return cp != kInvalid && (!keep_ || keep_->count(as_trained(cp)) > 0); }

  std::string_view text_;
  const std::optional<std::unordered_set<uint32_t>>& keep_;
  size_t pos_ = 0;             // start of the next line in text_
  std::string_view line_;      // the rest of the current line
  std::string_view segment_;   // the rest of the current segment
  std::string value_;
  bool done_ = false;
};

// The trainer and its random seed are process-global state inside SentencePiece.
std::mutex g_train_mutex;

}  // namespace

void train_sentencepiece(const std::string& input_text_path, int vocab_size, const std::string& out_dir,
                         uint64_t seed, int64_t max_sentences) {
  if (vocab_size < 260 || vocab_size > (1 << 20)) {
    throw bad_input("tokenizer vocab size " + std::to_string(vocab_size) + " is out of range [260, 1048576]");
  }
  if (max_sentences <= 0) throw bad_input("max_sentences must be positive, got " + std::to_string(max_sentences));
  const std::string text = read_text(input_text_path);
  if (text.find_first_not_of('\n') == std::string::npos) throw bad_input(input_text_path + ": no text");

  const auto keep = characters_to_keep(text, vocab_size);

  // See the header for why each option is set. No model_prefix: the model comes back as bytes
  // and is written below, atomically.
  const std::unordered_map<std::string, std::string> args = {
      {"model_type", "bpe"},
      {"vocab_size", std::to_string(vocab_size)},
      {"byte_fallback", "true"},
      {"character_coverage", "1.0"},  // of the characters it is shown; see characters_to_keep
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      {"add_dummy_prefix", "false"},
      {"unk_id", "0"},
      {"bos_id", "-1"},
      {"eos_id", "-1"},
      {"pad_id", "-1"},
      {"num_threads", "2"},
      {"input_sentence_size", std::to_string(max_sentences)},
      {"shuffle_input_sentence", "true"},
      {"max_sentence_length", std::to_string(kMaxTrainSentence + 16)},
      {"minloglevel", "2"},  // errors only: the trainer otherwise logs pages of progress to stderr
  };

  std::string model;
  {
    std::lock_guard<std::mutex> lock(g_train_mutex);
    sentencepiece::SetRandomGeneratorSeed(static_cast<unsigned int>(seed));
    SentenceFeeder lines(text, keep);
    const auto status = sentencepiece::SentencePieceTrainer::Train(args, &lines, &model);
    if (!status.ok()) {
      throw bad_input(input_text_path + ": SentencePiece training failed (vocab size " + std::to_string(vocab_size) +
                      "): " + status.ToString());
    }
  }

  // Check what we are about to write loads, and build the .vocab listing from it.
  sentencepiece::SentencePieceProcessor sp;
  if (!sp.LoadFromSerializedProto(model).ok()) {
    throw Error(kExitFailure, "SentencePiece training produced a model that does not load");
  }
  std::error_code ec;
  std::filesystem::create_directories(out_dir, ec);
  if (ec) throw io_error(out_dir + ": cannot create directory: " + ec.message());
  const std::string model_path = (std::filesystem::path(out_dir) / "tokenizer.model").string();
  const std::string vocab_path = (std::filesystem::path(out_dir) / "tokenizer.vocab").string();
  atomic_write_file(model_path, [&](std::FILE* f) { fwrite_checked(f, model.data(), model.size(), model_path); });
  atomic_write_file(vocab_path, [&](std::FILE* f) {
    for (int i = 0; i < sp.GetPieceSize(); ++i) {
      const std::string line = sp.IdToPiece(i) + "\t" + std::to_string(sp.GetScore(i)) + "\n";
      fwrite_checked(f, line.data(), line.size(), vocab_path);
    }
  });
}

}  // namespace modlm::io
