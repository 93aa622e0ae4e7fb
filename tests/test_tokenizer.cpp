// Tests for io/text_file (plain/gzip text), io/tokenizer (bytes, SentencePiece training and
// loading) and io/token_file (the cached, memory-mapped token files).
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>
#include <zlib.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <string>
#include <vector>

#include "cli_helpers.h"
#include "temp_dir.h"
#include "io/text_file.h"
#include "io/token_file.h"
#include "io/tokenizer.h"
#include "util/error.h"

namespace fs = std::filesystem;
using namespace modlm::io;

namespace {

using modlm::testing::TempDirTest;

class TextFileTest : public TempDirTest {};
class TokenizerTest : public TempDirTest {};
class TokenFileTest : public TempDirTest {};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

std::string gzip(const std::string& data) {
  z_stream zs{};
  EXPECT_EQ(deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY), Z_OK);
  std::string out(deflateBound(&zs, data.size()) + 64, '\0');
  zs.next_in = reinterpret_cast<Bytef*>(const_cast<char*>(data.data()));
  zs.avail_in = static_cast<uInt>(data.size());
  zs.next_out = reinterpret_cast<Bytef*>(out.data());
  zs.avail_out = static_cast<uInt>(out.size());
  EXPECT_EQ(deflate(&zs, Z_FINISH), Z_STREAM_END);
  out.resize(zs.total_out);
  deflateEnd(&zs);
  return out;
}

// Runs fn, expecting a modlm::Error with the given exit code whose message contains every one of `parts`.
void expect_error(const std::function<void()>& fn, int exit_code, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected a modlm::Error containing '" << parts.front() << "'";
  } catch (const modlm::Error& e) {
    EXPECT_EQ(e.exit_code(), exit_code) << e.what();
    for (const auto& p : parts) {
      EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << "message: " << e.what() << "\nmissing: " << p;
    }
  }
}

// The first ~`bytes` of the shipped training text (data/train.txt.gz), cut after a newline.
std::string corpus_prefix(size_t bytes) {
  static const std::string all = read_text(modlm::testing::project_train_gz());
  size_t end = all.find('\n', bytes);
  return all.substr(0, end == std::string::npos ? all.size() : end + 1);
}
// About `bytes` of running prose from the middle of the first book, whole lines.
std::string corpus_prose(size_t bytes) {
  const std::string head = corpus_prefix(100000 + bytes);
  const size_t start = head.find('\n', 100000) + 1;
  return head.substr(start);
}

std::vector<int32_t> all_tokens(const TokenFile& tf) {
  std::vector<int32_t> v(tf.size());
  tf.copy(0, tf.size(), v.data());
  return v;
}

void set_mtime(const std::string& path, long seconds) {
  struct timeval tv[2] = {{seconds, 0}, {seconds, 0}};
  ASSERT_EQ(::utimes(path.c_str(), tv), 0);
}

// A tokenizer with a vocabulary too big for 16-bit tokens: byte b -> 70000 + b.
class BigVocabTokenizer final : public Tokenizer {
 public:
  std::vector<int32_t> encode(std::string_view text) const override {
    std::vector<int32_t> ids;
    for (unsigned char c : text) ids.push_back(70000 + c);
    return ids;
  }
  std::string decode(const std::vector<int32_t>& ids) const override {
    std::string s;
    for (int32_t id : ids) s.push_back(static_cast<char>(id - 70000));
    return s;
  }
  int vocab_size() const override { return 70256; }
  std::string id() const override { return "test-big"; }
};

// ---------------------------------------------------------------------------------------------
// TextFile

TEST_F(TextFileTest, GzipReadsEqualPlain) {
  const std::string text = corpus_prefix(50000) + std::string("\0tail", 5);
  write_bytes(file("a.txt"), text);
  write_bytes(file("a.txt.gz"), gzip(text));
  write_bytes(file("gz_without_extension"), gzip(text));
  EXPECT_EQ(read_text(file("a.txt")), text);
  EXPECT_EQ(read_text(file("a.txt.gz")), text);
  EXPECT_EQ(read_text(file("gz_without_extension")), text);
  // Concatenated members, as `cat a.gz b.gz` makes.
  write_bytes(file("two.gz"), gzip("first\n") + gzip("second\n"));
  EXPECT_EQ(read_text(file("two.gz")), "first\nsecond\n");
  // An empty file is empty text, not an error.
  write_bytes(file("empty.txt"), "");
  EXPECT_EQ(read_text(file("empty.txt")), "");
}

TEST_F(TextFileTest, CorruptGzipIsBadInput) {
  const std::string gz = gzip(corpus_prefix(20000));
  write_bytes(file("truncated.gz"), gz.substr(0, gz.size() / 2));
  expect_error([&] { read_text(file("truncated.gz")); }, modlm::kExitBadInput, {file("truncated.gz"), "truncated"});
  std::string bad = gz;
  for (size_t i = 20; i < 60; ++i) bad[i] = static_cast<char>(bad[i] ^ 0x5a);
  write_bytes(file("bad.gz"), bad);
  expect_error([&] { read_text(file("bad.gz")); }, modlm::kExitBadInput, {file("bad.gz"), "gzip"});
  write_bytes(file("magic_only.gz"), "\x1f\x8b");
  expect_error([&] { read_text(file("magic_only.gz")); }, modlm::kExitBadInput, {file("magic_only.gz")});
  write_bytes(file("garbage_after.gz"), gz + "xyz");
  expect_error([&] { read_text(file("garbage_after.gz")); }, modlm::kExitBadInput, {file("garbage_after.gz")});
}

TEST_F(TextFileTest, MissingIsIoError) {
  expect_error([&] { read_text(file("nope.txt")); }, modlm::kExitIo, {file("nope.txt")});
}

// ---------------------------------------------------------------------------------------------
// Tokenizer

TEST(Tokenizer, ByteRoundTrip) {
  ByteTokenizer tok;
  std::string text = "Hello, wörld! 日本語 🙂\n\ttabs";
  text += std::string("\0mid\0", 5);
  for (int b = 0; b < 256; ++b) text.push_back(static_cast<char>(b));
  const auto ids = tok.encode(text);
  ASSERT_EQ(ids.size(), text.size());
  for (size_t i = 0; i < ids.size(); ++i) EXPECT_EQ(ids[i], static_cast<unsigned char>(text[i]));
  EXPECT_EQ(tok.decode(ids), text);
  EXPECT_EQ(tok.decode({72, 256, -1, 105, 1000}), "Hi");  // out-of-range ids are skipped
  EXPECT_EQ(tok.vocab_size(), 256);
  EXPECT_EQ(tok.id(), "bytes");
  EXPECT_EQ(load_tokenizer("/nonexistent", true)->id(), "bytes");
}

TEST_F(TokenizerTest, SentencePieceTrainRoundTrip) {
  const std::string corpus = corpus_prefix(200000);
  write_bytes(file("corpus.txt.gz"), gzip(corpus));  // training reads gzip too
  train_sentencepiece(file("corpus.txt.gz"), 300, file("model"));
  ASSERT_TRUE(fs::exists(file("model/tokenizer.model")));
  ASSERT_TRUE(fs::exists(file("model/tokenizer.vocab")));
  EXPECT_FALSE(fs::exists(file("model/tokenizer.model.tmp." + std::to_string(::getpid()))));

  auto tok = load_tokenizer(file("model"), false);
  EXPECT_EQ(tok->vocab_size(), 300);
  EXPECT_EQ(tok->id().rfind("spm:", 0), 0u) << tok->id();
  EXPECT_EQ(tok->id().size(), 4u + 16u);
  // The vocab listing has one line per piece; id 0 is <unk>, then the 256 byte pieces.
  const std::string vocab = read_bytes(file("model/tokenizer.vocab"));
  EXPECT_EQ(std::count(vocab.begin(), vocab.end(), '\n'), 300);
  EXPECT_EQ(vocab.rfind("<unk>\t", 0), 0u);

  // A paragraph round-trips exactly, newlines and repeated spaces included, in fewer tokens than bytes.
  const std::string para = corpus_prose(600) + "  double  spaces, trailing space \n\n";
  const auto ids = tok->encode(para);
  EXPECT_EQ(tok->decode(ids), para);
  EXPECT_LT(ids.size(), para.size());  // only 43 non-byte pieces: little compression
  for (int32_t id : ids) {
    EXPECT_GE(id, 1);  // nothing is <unk>
    EXPECT_LT(id, 300);
  }
  // Characters never seen in training round-trip through byte fallback.
  for (const std::string s : {"🙂 emoji", "中文字符", "ÆØÅ ñ", " leading space", "tab\there"}) {
    const auto e = tok->encode(s);
    EXPECT_EQ(tok->decode(e), s);
    for (int32_t id : e) EXPECT_NE(id, 0) << s;
  }
  // Encoding line by line equals encoding the whole text (what the token cache relies on).
  const std::string text = corpus_prefix(5000);
  std::vector<int32_t> by_line;
  for (size_t pos = 0; pos < text.size();) {
    size_t end = text.find('\n', pos) + 1;
    const auto line = tok->encode(std::string_view(text).substr(pos, end - pos));
    by_line.insert(by_line.end(), line.begin(), line.end());
    pos = end;
  }
  EXPECT_EQ(by_line, tok->encode(text));
  // Out-of-range ids are skipped by decode.
  EXPECT_EQ(tok->decode({-5, 100000}), "");

  // Same input, same seed: the same model, byte for byte.
  train_sentencepiece(file("corpus.txt.gz"), 300, file("model2"));
  EXPECT_EQ(read_bytes(file("model/tokenizer.model")), read_bytes(file("model2/tokenizer.model")));

  // A larger vocabulary: every character of the corpus gets a piece, and merges compress.
  train_sentencepiece(file("corpus.txt.gz"), 1000, file("model1000"));
  SentencePieceTokenizer big(file("model1000/tokenizer.model"));
  EXPECT_EQ(big.vocab_size(), 1000);
  EXPECT_NE(big.id(), tok->id());
  const auto big_ids = big.encode(para);
  EXPECT_EQ(big.decode(big_ids), para);
  EXPECT_LT(big_ids.size(), para.size() / 2);
}

TEST_F(TokenizerTest, SentencePieceBadInputs) {
  write_bytes(file("corpus.txt"), "some text to train on\n");
  expect_error([&] { train_sentencepiece(file("corpus.txt"), 259, file("m")); }, modlm::kExitBadInput, {"259"});
  expect_error([&] { train_sentencepiece(file("corpus.txt"), (1 << 20) + 1, file("m")); }, modlm::kExitBadInput, {"vocab"});
  write_bytes(file("empty.txt"), "\n\n");
  expect_error([&] { train_sentencepiece(file("empty.txt"), 300, file("m")); }, modlm::kExitBadInput, {file("empty.txt"), "no text"});
  expect_error([&] { train_sentencepiece(file("missing.txt"), 300, file("m")); }, modlm::kExitIo, {file("missing.txt")});
  EXPECT_FALSE(fs::exists(file("m/tokenizer.model")));

  // Loading: a missing model is an I/O error, a corrupt one bad input; both name the file.
  fs::create_directories(file("dir"));
  const std::string model = file("dir/tokenizer.model");
  expect_error([&] { load_tokenizer(file("dir"), false); }, modlm::kExitIo, {model});
  write_bytes(model, "this is not a sentencepiece model");
  expect_error([&] { load_tokenizer(file("dir"), false); }, modlm::kExitBadInput, {model});
  write_bytes(model, "");
  expect_error([&] { load_tokenizer(file("dir"), false); }, modlm::kExitBadInput, {model});
}

// ---------------------------------------------------------------------------------------------
// TokenFile

TEST_F(TokenFileTest, BuildReuseRebuild) {
  ByteTokenizer tok;
  const std::string path = file("text.txt");
  const std::string text = corpus_prefix(3000);
  write_bytes(path, text);
  set_mtime(path, 1000000000);

  bool rebuilt = false;
  {
    TokenFile tf = load_or_build_tokens(path, tok, &rebuilt);
    EXPECT_TRUE(rebuilt);
    EXPECT_EQ(tf.path(), token_cache_path(path, tok));
    EXPECT_EQ(tf.path().rfind(path + ".", 0), 0u);
    EXPECT_EQ(all_tokens(tf), tok.encode(text));
    EXPECT_EQ(tf[3], static_cast<unsigned char>(text[3]));
    EXPECT_EQ(tf.tokenizer_id(), "bytes");
  }
  load_or_build_tokens(path, tok, &rebuilt);
  EXPECT_FALSE(rebuilt);

  // Touched but unchanged: reused (the content hash matches).
  set_mtime(path, 1100000000);
  load_or_build_tokens(path, tok, &rebuilt);
  EXPECT_FALSE(rebuilt);

  // Changed, same size: rebuilt.
  std::string changed = text;
  changed[10] = changed[10] == 'x' ? 'y' : 'x';
  write_bytes(path, changed);
  set_mtime(path, 1200000000);
  TokenFile tf = load_or_build_tokens(path, tok, &rebuilt);
  EXPECT_TRUE(rebuilt);
  EXPECT_EQ(all_tokens(tf), tok.encode(changed));

  // Changed in size: rebuilt.
  write_bytes(path, changed + "more\n");
  tf = load_or_build_tokens(path, tok, &rebuilt);
  EXPECT_TRUE(rebuilt);
  EXPECT_EQ(tf.size(), changed.size() + 5);
}

TEST_F(TokenFileTest, TokenizerChangeRebuilds) {
  const std::string path = file("text.txt.gz");
  const std::string text = corpus_prefix(20000);
  write_bytes(path, gzip(text));  // gzip text is tokenized from its decompressed content
  ByteTokenizer bytes;
  BigVocabTokenizer big;
  EXPECT_NE(token_cache_path(path, bytes), token_cache_path(path, big));

  bool rebuilt = false;
  TokenFile a = load_or_build_tokens(path, bytes, &rebuilt);
  EXPECT_TRUE(rebuilt);
  EXPECT_EQ(all_tokens(a), bytes.encode(text));

  // A cache made by another tokenizer, found at this tokenizer's path: rebuilt (the header's id).
  fs::copy_file(token_cache_path(path, bytes), token_cache_path(path, big));
  TokenFile b = load_or_build_tokens(path, big, &rebuilt);
  EXPECT_TRUE(rebuilt);
  EXPECT_EQ(b.tokenizer_id(), "test-big");
  EXPECT_EQ(all_tokens(b), big.encode(text));  // 32-bit tokens
  EXPECT_EQ(b[0], 70000 + static_cast<unsigned char>(text[0]));
  std::vector<int32_t> mid(7);
  b.copy(100, 7, mid.data());
  for (int i = 0; i < 7; ++i) EXPECT_EQ(mid[i], 70000 + static_cast<unsigned char>(text[100 + i]));
  load_or_build_tokens(path, big, &rebuilt);
  EXPECT_FALSE(rebuilt);
  load_or_build_tokens(path, bytes, &rebuilt);
  EXPECT_FALSE(rebuilt);
}

TEST_F(TokenFileTest, LinesEncodedInParallelMatchWholeText) {
  // More than one 1 MiB block, so several threads share the work.
  std::string text;
  while (text.size() < (size_t(5) << 19)) text += corpus_prefix(100000);
  text += "no final newline";
  write_bytes(file("big.txt"), text);
  ByteTokenizer tok;
  TokenFile tf = load_or_build_tokens(file("big.txt"), tok);
  EXPECT_EQ(all_tokens(tf), tok.encode(text));
}

TEST_F(TokenFileTest, CorruptFilesAreBadInput) {
  ByteTokenizer tok;
  const std::string path = file("text.txt");
  write_bytes(path, corpus_prefix(2000));
  const std::string cache = load_or_build_tokens(path, tok).path();
  const std::string good = read_bytes(cache);

  auto expect_bad = [&](const std::string& bytes, const std::string& what) {
    write_bytes(file("bad.tok"), bytes);
    expect_error([&] { TokenFile::open(file("bad.tok")); }, modlm::kExitBadInput, {file("bad.tok"), what});
  };
  expect_bad("", "truncated");
  expect_bad(good.substr(0, 30), "truncated");
  expect_bad(good.substr(0, good.size() - 1), "size mismatch");
  expect_bad(good + "x", "size mismatch");
  expect_bad("NOTATOK!" + good.substr(8), "magic");
  std::string v = good;
  v[8] = 9;  // version
  expect_bad(v, "version");
  std::string d = good;
  d[12] = 3;  // dtype
  expect_bad(d, "dtype");
  std::string huge = good;
  for (int i = 20; i < 28; ++i) huge[i] = '\xff';  // count = 2^64 - 1
  expect_bad(huge, "size mismatch");
  std::string idlen = good;
  for (int i = 52; i < 56; ++i) idlen[i] = '\x7f';
  expect_bad(idlen, "tokenizer id");
  std::string oov = good;
  oov[oov.size() - 1] = '\x01';  // last uint16 token >= 256
  expect_bad(oov, "outside the vocabulary");
  expect_error([&] { TokenFile::open(file("missing.tok")); }, modlm::kExitIo, {file("missing.tok")});

  // load_or_build_tokens treats a corrupt cache as stale and rebuilds it.
  write_bytes(cache, good.substr(0, good.size() - 10));
  bool rebuilt = false;
  TokenFile tf = load_or_build_tokens(path, tok, &rebuilt);
  EXPECT_TRUE(rebuilt);
  EXPECT_EQ(read_bytes(cache), good);
}

TEST_F(TokenFileTest, EmptyTextIsBadInput) {
  ByteTokenizer tok;
  write_bytes(file("empty.txt"), "");
  expect_error([&] { load_or_build_tokens(file("empty.txt"), tok); }, modlm::kExitBadInput, {file("empty.txt"), "no text"});
  write_bytes(file("empty.gz"), gzip(""));
  expect_error([&] { load_or_build_tokens(file("empty.gz"), tok); }, modlm::kExitBadInput, {file("empty.gz"), "no text"});
  expect_error([&] { load_or_build_tokens(file("missing.txt"), tok); }, modlm::kExitIo, {file("missing.txt")});
}

TEST_F(TokenFileTest, ReadOnlyDirectoryUsesUserCache) {
  const char* old = std::getenv("XDG_CACHE_HOME");
  const std::string saved = old ? old : "";
  ::setenv("XDG_CACHE_HOME", file("cache").c_str(), 1);
  ByteTokenizer tok;
  // A folder we cannot write into (here: one that does not exist; root may write anywhere else).
  const std::string elsewhere = token_cache_path("/nonexistent-modlm-dir/text.txt", tok);
  EXPECT_EQ(elsewhere.rfind(file("cache") + "/modlm/text.txt.", 0), 0u) << elsewhere;
  EXPECT_EQ(elsewhere.substr(elsewhere.size() - 4), ".tok");
  EXPECT_NE(elsewhere, token_cache_path("/other-nonexistent-dir/text.txt", tok));

  if (::geteuid() != 0) {
    fs::create_directories(file("data"));
    const std::string path = file("data/text.txt");
    write_bytes(path, "hello\nworld\n");
    fs::permissions(file("data"), fs::perms::owner_read | fs::perms::owner_exec);
    const std::string cache = token_cache_path(path, tok);
    EXPECT_EQ(cache.rfind(file("cache") + "/modlm/text.txt.", 0), 0u) << cache;
    bool rebuilt = false;
    TokenFile tf = load_or_build_tokens(path, tok, &rebuilt);
    EXPECT_TRUE(rebuilt);
    EXPECT_EQ(tf.path(), cache);
    EXPECT_EQ(tf.size(), 12u);
    load_or_build_tokens(path, tok, &rebuilt);
    EXPECT_FALSE(rebuilt);
  }
  if (old) {
    ::setenv("XDG_CACHE_HOME", saved.c_str(), 1);
  } else {
    ::unsetenv("XDG_CACHE_HOME");
  }
}

}  // namespace
