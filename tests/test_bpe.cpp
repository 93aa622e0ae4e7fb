// Byte-level BPE from tokenizer.json: merges by rank, the pre-tokenizer's regex (GPT-2's and
// Llama 3's), added tokens, lossless round trips, refusals; and a HF folder with only
// tokenizer.json imported, generated from and evaluated.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "cli_helpers.h"
#include "hf_folder.h"
#include "io/bpe_tokenizer.h"
#include "util/error.h"

using namespace modlm;
using namespace modlm::testing;
namespace fs = std::filesystem;

namespace {

// GPT-2's bytes_to_unicode, written out here on its own.
std::string byte_char(int b) {
  std::vector<int> bs;
  for (int i = '!'; i <= '~'; ++i) bs.push_back(i);
  for (int i = 0xA1; i <= 0xAC; ++i) bs.push_back(i);
  for (int i = 0xAE; i <= 0xFF; ++i) bs.push_back(i);
  std::vector<int> cs = bs;
  int n = 0;
  for (int i = 0; i < 256; ++i)
    if (std::find(bs.begin(), bs.end(), i) == bs.end()) bs.push_back(i), cs.push_back(256 + n++);
  int cp = 0;
  for (size_t i = 0; i < bs.size(); ++i)
    if (bs[i] == b) cp = cs[i];
  std::string s;
  if (cp < 0x80) s += (char)cp;
  else s += (char)(0xC0 | (cp >> 6)), s += (char)(0x80 | (cp & 0x3F));
  return s;
}

const char* kLlama3 = R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// Vocabulary: the 256 byte characters (id = byte), then merges in rank order.
json tokenizer_json(const std::string& pre, bool ignore_merges = false) {
  const std::string G = byte_char(' ');  // "Ġ"
  json vocab = json::object();
  for (int b = 0; b < 256; ++b) vocab[byte_char(b)] = b;
  std::vector<std::pair<std::string, std::string>> merges = {{"e", G}, {G, "t"}, {"h", "e"}, {G + "t", "he"}, {"i", "n"}, {"in", "g"},
                                                            {"3", "4"}, {G, "w"}};
  int id = 256;
  json ml = json::array();
  for (const auto& [a, b] : merges) {
    if (!vocab.contains(a + b)) vocab[a + b] = id++;
    ml.push_back(a + " " + b);
  }
  json pt;
  if (pre == "gpt2") pt = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  else
    pt = {{"type", "Sequence"},
          {"pretokenizers",
           {{{"type", "Split"}, {"pattern", {{"Regex", kLlama3}}}, {"behavior", "Isolated"}, {"invert", false}},
            {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", false}}}}};
  return {{"version", "1.0"},
          {"added_tokens", {{{"id", 300}, {"content", "<|end|>"}, {"special", true}}, {{"id", 301}, {"content", "<|end|>x"}, {"special", true}}}},
          {"normalizer", nullptr},
          {"pre_tokenizer", pt},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"byte_fallback", false}, {"ignore_merges", ignore_merges},
                     {"vocab", vocab}, {"merges", ml}}}};
}

std::string write(const std::string& dir, const json& j, const std::string& name = "tokenizer.json") {
  fs::create_directories(dir);
  std::ofstream(dir + "/" + name) << j.dump();
  return dir + "/" + name;
}

std::vector<int32_t> ids(std::initializer_list<int> l) { return std::vector<int32_t>(l.begin(), l.end()); }

}  // namespace

TEST(Bpe, MergesByRankWithinThePreTokenizersPieces) {
  const std::string d = temp_dir("bpe");
  io::BpeTokenizer gpt2(write(d + "/g", tokenizer_json("gpt2")));
  // ids: "eĠ" 256, "Ġt" 257, "he" 258, "Ġthe" 259, "in" 260, "ing" 261, "34" 262, "Ġw" 263.
  EXPECT_EQ(gpt2.encode(" the"), ids({259}));
  EXPECT_EQ(gpt2.encode("the"), ids({'t', 258}));
  EXPECT_EQ(gpt2.encode(" thing"), ids({257, 'h', 261}));  // Ġ t h i n g -> Ġt h in g -> Ġt h ing
  // "he the": the pieces "he" and " the" keep "e Ġ" (rank 0) from merging across them.
  EXPECT_EQ(gpt2.encode("he the"), ids({258, 259}));
  EXPECT_EQ(gpt2.encode("don't"), ids({'d', 'o', 'n', '\'', 't'}));
  // GPT-2's " ?\p{N}+" keeps 12345 whole (so 3 4 merges); Llama 3's \p{N}{1,3} cuts 123|45.
  EXPECT_EQ(gpt2.encode("12345"), ids({'1', '2', 262, '5'}));
  io::BpeTokenizer l3(write(d + "/l", tokenizer_json("llama3")));
  EXPECT_EQ(l3.encode("12345"), ids({'1', '2', '3', '4', '5'}));
  EXPECT_EQ(l3.encode(" the"), ids({259}));
  // Added tokens cut the text first, the longest at a position winning.
  EXPECT_EQ(gpt2.encode("a<|end|>b"), ids({'a', 300, 'b'}));
  EXPECT_EQ(gpt2.encode("a<|end|>x"), ids({'a', 301}));
  EXPECT_EQ(gpt2.decode(ids({'a', 300, 259})), "a<|end|> the");
  EXPECT_EQ(gpt2.vocab_size(), 302);
  // ignore_merges: a piece that is a vocabulary entry is taken whole.
  json im = tokenizer_json("gpt2", true);
  im["model"]["vocab"]["thing"] = 299;
  io::BpeTokenizer ig(write(d + "/i", im));
  EXPECT_EQ(ig.encode("thing"), ids({299}));
  EXPECT_NE(gpt2.id(), l3.id());
  fs::remove_all(d);
}

TEST(Bpe, EveryByteStringRoundTrips) {
  const std::string d = temp_dir("bpe_rt");
  for (const char* pre : {"gpt2", "llama3"}) {
    io::BpeTokenizer t(write(d + "/" + pre, tokenizer_json(pre)));
    Rng r(3);
    std::vector<std::string> texts = {"", " ", "\n\n  x\t", "Mixture of depths 🌍 — ünïcödé, 12345 the thing's", "\xff\xfe abc \xc3",
                                      "<|end|><|end|>x<|end"};
    for (int k = 0; k < 50; ++k) {
      std::string s;
      for (int i = 0, n = (int)r.below(40); i < n; ++i) s += (char)r.below(256);
      texts.push_back(s);
    }
    for (const auto& s : texts) ASSERT_EQ(t.decode(t.encode(s)), s) << pre << " [" << s << "]";
  }
  fs::remove_all(d);
}

TEST(Bpe, MalformedTokenizerFilesNameTheField) {
  const std::string d = temp_dir("bpe_bad");
  auto expect_bad = [&](const std::string& what, const json& j, const std::string& word) {
    SCOPED_TRACE(what);
    const std::string p = write(d + "/" + std::to_string(std::hash<std::string>{}(what)), j);
    try {
      io::BpeTokenizer t(p);
      ADD_FAILURE() << "accepted";
    } catch (const Error& e) {
      EXPECT_EQ(e.exit_code(), kExitBadInput);
      EXPECT_NE(std::string(e.what()).find(word), std::string::npos) << e.what();
    }
  };
  json j = tokenizer_json("gpt2");
  json x = j;
  x["model"]["type"] = "WordPiece";
  expect_bad("wordpiece", x, "model.type");
  x = j;
  x["normalizer"] = {{"type", "NFC"}};
  expect_bad("normalizer", x, "normalizer");
  x = j;
  x["model"]["merges"].push_back("q z");
  expect_bad("merge outside vocab", x, "model.merges");
  x = j;
  x["model"]["vocab"].erase(byte_char('A'));
  expect_bad("missing byte", x, "byte");
  x = tokenizer_json("llama3");
  x["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = "(unclosed";
  expect_bad("bad regex", x, "pattern");
  x = j;
  x["model"]["byte_fallback"] = true;
  expect_bad("byte fallback", x, "byte_fallback");
  x = j;
  x["pre_tokenizer"] = {{"type", "Whitespace"}};
  expect_bad("whitespace", x, "pre_tokenizer");
  std::ofstream(d + "/nj.json") << "{\"model\": ";
  EXPECT_THROW(io::BpeTokenizer(d + "/nj.json"), Error);
  fs::remove_all(d);
}

TEST(Bpe, AHfFolderWithOnlyTokenizerJsonImportsGeneratesAndEvaluates) {
  const std::string d = temp_dir("bpe_hf");
  HfSpec s;
  s.V = 320;
  write_hf_folder(d + "/hf", s, hf_test_tokenizer(project_train_gz()), 9);
  fs::remove(d + "/hf/tokenizer.model");
  write(d + "/hf", tokenizer_json("llama3"));
  auto r = run_modlm("import hf " + d + "/hf " + d + "/m --json");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_NE(r.out.find("\"tokenizer\":\"tokenizer.json\""), std::string::npos) << r.out;
  r = run_modlm("generate " + d + "/m --prompt ' the thing' --max-new 4 --greedy --json --bos off");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(json::parse(r.out)["prompt_tokens"], 4);  // " the" -> Ġthe; " thing" -> Ġt h ing
  ASSERT_TRUE(write_valid_head(d + "/val.txt", 20000));
  r = run_modlm("eval " + d + "/m --data " + d + "/val.txt --seq-len 32 --max-windows 4 --json");
  ASSERT_EQ(r.code, 0) << r.out;
  // Fine-tuning carries the BPE tokenizer into its checkpoints.
  r = run_modlm("train --init " + d + "/m --data " + d + "/val.txt --out " + d + "/ft --steps 2 --batch-size 2 --seq-len 16 "
                "--warmup-steps 0 --eval-every 0 --no-progress --json");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(fs::exists(d + "/ft/ckpt-00000002/tokenizer.json"));
  EXPECT_EQ(run_modlm("generate " + d + "/ft/ckpt-00000002 --prompt ' the' --max-new 2 --greedy").code, 0);
  r = run_modlm("export hf " + d + "/m " + d + "/back");
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(fs::exists(d + "/back/tokenizer.json"));
  fs::remove_all(d);
}
