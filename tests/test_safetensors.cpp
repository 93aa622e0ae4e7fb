// Tests for io/safetensors (reading untrusted files, writing) and util/fs (atomic writes).
#include <gtest/gtest.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "temp_dir.h"
#include "io/safetensors.h"
#include "util/error.h"
#include "util/fs.h"

namespace fs = std::filesystem;
using modlm::io::DType;
using modlm::io::SafetensorsFile;
using modlm::io::TensorRef;

namespace {

using modlm::testing::TempDirTest;

class SafetensorsTest : public TempDirTest {};
class AtomicWriteTest : public TempDirTest {};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_bytes(const std::string& path) { return modlm::read_text_file(path); }

std::string u64_le(uint64_t v) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[i] = static_cast<char>((v >> (8 * i)) & 0xff);
  return s;
}

// A safetensors file from a header text and a data section, with no validation: for hostile inputs.
std::string raw_file(const std::string& header, const std::string& data) { return u64_le(header.size()) + header + data; }

// Runs fn, expecting a modlm::Error with the given exit code whose message contains every one of `parts`.
void expect_error(const std::function<void()>& fn, int exit_code, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected a modlm::Error containing '" << parts.front() << "'";
  } catch (const modlm::Error& e) {
    EXPECT_EQ(e.exit_code(), exit_code) << e.what();
    for (const auto& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos) << "message: " << e.what() << "\nmissing: " << p;
  }
}

void expect_open_error(const std::string& path, const std::vector<std::string>& parts) {
  std::vector<std::string> all = parts;
  all.push_back(path);  // every message names the file
  expect_error([&] { SafetensorsFile::open(path); }, modlm::kExitBadInput, all);
}

}  // namespace

// ---------------------------------------------------------------------------------------------
// Round trips

TEST_F(SafetensorsTest, WriterPutsLineSizedTensorsOn64ByteBoundaries) {
  // Odd-sized tensors first in the caller's order: the writer lays the 64-byte multiples out
  // first, so each starts on a cache line of the mapping, and every value reads back.
  const std::vector<float> odd = {1, 2, 3};                       // 12 bytes
  std::vector<float> m(16 * 16);                                   // 1024 bytes
  for (std::size_t i = 0; i < m.size(); ++i) m[i] = float(i) * 0.5f;
  const std::vector<uint16_t> odd16 = {0x3f80, 0x4000, 0x4040, 0x4080, 0x40a0};  // 10 bytes
  std::vector<int8_t> q(192);                                      // 192 bytes
  for (std::size_t i = 0; i < q.size(); ++i) q[i] = int8_t(int(i % 255) - 127);
  const std::string path = file("aligned.safetensors");
  modlm::io::write_safetensors(path, {{"odd", DType::F32, {3}, odd.data()},
                                      {"m", DType::F32, {16, 16}, m.data()},
                                      {"odd16", DType::BF16, {5}, odd16.data()},
                                      {"q", DType::I8, {3, 64}, q.data()}});
  SafetensorsFile f = SafetensorsFile::open(path);
  ASSERT_EQ(f.tensors().size(), 4u);
  EXPECT_EQ(f.tensors()[0].name, "m");  // file order: line-sized first, then the rest
  EXPECT_EQ(f.tensors()[1].name, "q");
  EXPECT_EQ(f.tensors()[2].name, "odd");
  EXPECT_EQ(f.tensors()[3].name, "odd16");
  for (const char* name : {"m", "q"}) {
    const modlm::io::TensorInfo* t = f.find(name);
    ASSERT_NE(t, nullptr);
    EXPECT_EQ(t->begin % 64, 0u) << name;
    EXPECT_EQ((uintptr_t)f.data(*t) % 64, 0u) << name;  // the mapping itself
  }
  EXPECT_EQ(f.read_f32("odd", {3}), odd);
  EXPECT_EQ(f.read_f32("m", {16, 16}), m);
  EXPECT_EQ(f.read_f32("odd16", {5}), (std::vector<float>{1, 2, 3, 4, 5}));
  EXPECT_EQ(std::memcmp(f.data(*f.find("q")), q.data(), q.size()), 0);
}

TEST_F(SafetensorsTest, RoundTripSeveralDtypesAndMetadata) {
  const std::vector<float> a = {1.5f, -2.0f, 0.0f, 3.25f, 1e-20f, -7.0f};          // F32 [2, 3]
  const std::vector<uint16_t> b = {0x3f80, 0xc000, 0x4040, 0x0000};                // BF16 [4]: 1, -2, 3, 0
  const std::vector<uint16_t> h = {0x3c00, 0xc000, 0x7bff, 0x0001};                // F16 [2, 2]: 1, -2, 65504, 2^-24
  const std::vector<double> d = {0.1, -1e30, 12345.678};                           // F64 [3]
  const std::vector<int32_t> n = {7, -9};                                          // I32 [2]
  const std::string path = file("model.safetensors");
  modlm::io::write_safetensors(path,
                               {{"a", DType::F32, {2, 3}, a.data()},
                                {"b.bf16", DType::BF16, {4}, b.data()},
                                {"h", DType::F16, {2, 2}, h.data()},
                                {"d", DType::F64, {3}, d.data()},
                                {"empty", DType::F32, {0, 5}, nullptr},
                                {"n", DType::I32, {2}, n.data()}},
                               {{"format", "pt"}, {"step", "12"}});

  // The header's length puts the data section at a multiple of 64 bytes.
  const std::string bytes = read_bytes(path);
  uint64_t header_len;
  std::memcpy(&header_len, bytes.data(), 8);
  EXPECT_EQ((8 + header_len) % 64, 0u);

  SafetensorsFile f = SafetensorsFile::open(path);
  EXPECT_EQ(f.path(), path);
  ASSERT_EQ(f.tensors().size(), 6u);
  // Listed in file order, which is the order written.
  EXPECT_EQ(f.tensors()[0].name, "a");
  EXPECT_EQ(f.tensors()[5].name, "n");
  EXPECT_EQ(f.metadata().at("format"), "pt");
  EXPECT_EQ(f.metadata().at("step"), "12");
  EXPECT_EQ(f.find("nope"), nullptr);

  EXPECT_EQ(f.read_f32("a", {2, 3}), a);
  EXPECT_EQ(f.read_f32("b.bf16", {4}), (std::vector<float>{1.0f, -2.0f, 3.0f, 0.0f}));
  EXPECT_EQ(f.read_f32("h", {2, 2}), (std::vector<float>{1.0f, -2.0f, 65504.0f, std::ldexp(1.0f, -24)}));
  const std::vector<float> df = f.read_f32("d", {3});
  for (std::size_t i = 0; i < d.size(); ++i) EXPECT_EQ(df[i], static_cast<float>(d[i]));
  EXPECT_TRUE(f.read_f32("empty", {0, 5}).empty());

  const modlm::io::TensorInfo* ti = f.find("n");
  ASSERT_NE(ti, nullptr);
  EXPECT_EQ(ti->dtype, DType::I32);
  EXPECT_EQ(ti->shape, (std::vector<int64_t>{2}));
  EXPECT_EQ(ti->end - ti->begin, 8u);
  int32_t got[2];
  std::memcpy(got, f.data(*ti), 8);
  EXPECT_EQ(got[0], 7);
  EXPECT_EQ(got[1], -9);

  // read_f32_into fills a caller buffer.
  std::vector<float> buf(6, -1.0f);
  f.read_f32_into("a", {2, 3}, buf.data());
  EXPECT_EQ(buf, a);

  // An integer tensor is not read as float.
  expect_error([&] { f.read_f32("n", {2}); }, modlm::kExitBadInput, {"'n'", "I32"});
}

TEST_F(SafetensorsTest, DtypeNamesAndSizes) {
  EXPECT_EQ(modlm::io::parse_dtype("F32"), DType::F32);
  EXPECT_EQ(modlm::io::parse_dtype("BF16"), DType::BF16);
  EXPECT_EQ(modlm::io::parse_dtype("U8"), DType::U8);
  EXPECT_FALSE(modlm::io::parse_dtype("f32").has_value());
  EXPECT_EQ(modlm::io::dtype_size(DType::F64), 8u);
  EXPECT_EQ(modlm::io::dtype_size(DType::F16), 2u);
  EXPECT_EQ(modlm::io::dtype_size(DType::I64), 8u);
  EXPECT_STREQ(modlm::io::dtype_name(DType::I32), "I32");
}

TEST_F(SafetensorsTest, EmptyFileAndMoveKeepMappingValid) {
  const std::string path = file("empty.safetensors");
  modlm::io::write_safetensors(path, {});
  EXPECT_TRUE(SafetensorsFile::open(path).tensors().empty());

  const std::vector<float> a = {1, 2, 3};
  modlm::io::write_safetensors(path, {{"a", DType::F32, {3}, a.data()}});
  SafetensorsFile f1 = SafetensorsFile::open(path);
  SafetensorsFile f2 = std::move(f1);
  EXPECT_EQ(f2.read_f32("a", {3}), a);
  SafetensorsFile f3 = SafetensorsFile::open(path);
  f3 = std::move(f2);
  EXPECT_EQ(f3.read_f32("a", {3}), a);
}

TEST_F(SafetensorsTest, WriteRejectsDuplicateNames) {
  const float x = 1.0f;
  const std::string path = file("dup.safetensors");
  expect_error([&] { modlm::io::write_safetensors(path, {{"w", DType::F32, {1}, &x}, {"w", DType::F32, {1}, &x}}); },
               modlm::kExitBadInput, {"'w'", "twice"});
  EXPECT_FALSE(modlm::file_exists(path));
}

// ---------------------------------------------------------------------------------------------
// Hostile files: each is a clean modlm::Error, exit code 3, naming the file and the problem.

TEST_F(SafetensorsTest, TruncatedFileIsRejected) {
  const std::vector<float> a(16, 1.0f);
  const std::string path = file("t.safetensors");
  modlm::io::write_safetensors(path, {{"a", DType::F32, {16}, a.data()}});
  const std::string full = read_bytes(path);
  write_bytes(path, full.substr(0, full.size() - 4));
  expect_open_error(path, {"tensor 'a'", "exceed the data section", "truncated"});
}

TEST_F(SafetensorsTest, FileShorterThanLengthFieldIsRejected) {
  const std::string path = file("short.safetensors");
  write_bytes(path, "abc");
  expect_open_error(path, {"too short"});
  write_bytes(path, "");
  expect_open_error(path, {"too short"});
}

TEST_F(SafetensorsTest, OversizedHeaderLengthIsRejected) {
  const std::string path = file("big.safetensors");
  write_bytes(path, u64_le(uint64_t{1} << 40) + "{}");
  expect_open_error(path, {"header length", "exceeds the limit"});
  write_bytes(path, u64_le(~uint64_t{0}) + "{}");  // would overflow 8 + N
  expect_open_error(path, {"header length", "exceeds the limit"});
  write_bytes(path, u64_le(1000) + "{}");  // under the limit but past the end of the file
  expect_open_error(path, {"header length 1000", "exceeds the file size"});
}

TEST_F(SafetensorsTest, OverlappingOffsetsAreRejected) {
  const std::string path = file("overlap.safetensors");
  write_bytes(path, raw_file(R"({"x":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                             R"("y":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})",
                             std::string(16, '\0')));
  expect_open_error(path, {"'x'", "'y'", "overlapping"});
}

TEST_F(SafetensorsTest, OffsetsOutOfRangeAreRejected) {
  const std::string path = file("range.safetensors");
  write_bytes(path, raw_file(R"({"x":{"dtype":"F32","shape":[25],"data_offsets":[0,100]}})", std::string(64, '\0')));
  expect_open_error(path, {"tensor 'x' data_offsets [0, 100] exceed the data section (64 bytes)"});
  write_bytes(path, raw_file(R"({"x":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", std::string(64, '\0')));
  expect_open_error(path, {"'x'", "begin > end"});
  write_bytes(path, raw_file(R"({"x":{"dtype":"F32","shape":[1],"data_offsets":[-4,0]}})", std::string(64, '\0')));
  expect_open_error(path, {"'x'", "data_offsets"});
}

TEST_F(SafetensorsTest, OffsetsNotMatchingShapeAreRejected) {
  const std::string path = file("size.safetensors");
  write_bytes(path, raw_file(R"({"x":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}})", std::string(64, '\0')));
  expect_open_error(path, {"'x'", "span 16 bytes", "need 24 bytes"});
  // A shape whose byte size overflows 64 bits.
  write_bytes(path, raw_file(R"({"x":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,0]}})", ""));
  expect_open_error(path, {"'x'", "too large"});
}

TEST_F(SafetensorsTest, NegativeOrNonIntegerShapeIsRejected) {
  const std::string path = file("shape.safetensors");
  write_bytes(path, raw_file(R"({"x":{"dtype":"F32","shape":[-1],"data_offsets":[0,0]}})", ""));
  expect_open_error(path, {"'x'", "non-negative"});
  write_bytes(path, raw_file(R"({"x":{"dtype":"F32","shape":[1.5],"data_offsets":[0,0]}})", ""));
  expect_open_error(path, {"'x'", "non-negative"});
  write_bytes(path, raw_file(R"({"x":{"dtype":"F32","data_offsets":[0,0]}})", ""));
  expect_open_error(path, {"'x'", "shape"});
}

TEST_F(SafetensorsTest, WrongShapeReadShowsBothShapes) {
  const std::vector<float> a(6, 0.5f);
  const std::string path = file("m.safetensors");
  modlm::io::write_safetensors(path, {{"w", DType::F32, {2, 3}, a.data()}});
  SafetensorsFile f = SafetensorsFile::open(path);
  expect_error([&] { f.read_f32("w", {3, 2}); }, modlm::kExitBadInput, {path, "'w'", "[2, 3]", "[3, 2]"});
  std::vector<float> buf(6);
  expect_error([&] { f.read_f32_into("w", {6}, buf.data()); }, modlm::kExitBadInput, {"[2, 3]", "[6]"});
  expect_error([&] { f.read_f32("missing.weight", {2, 3}); }, modlm::kExitBadInput, {path, "'missing.weight'", "missing"});
}

TEST_F(SafetensorsTest, NonFiniteValueIsRejected) {
  const std::string path = file("nan.safetensors");
  std::vector<float> a = {1.0f, 2.0f, std::numeric_limits<float>::quiet_NaN(), 4.0f};
  const std::vector<uint16_t> b = {0x3f80, 0x3f80, 0x3f80, 0xff80};  // BF16 -inf at index 3
  const std::vector<double> d = {1.0, 1e300};                        // finite, but not as a float
  std::vector<float> big(10000, 1.0f);
  big[9000] = std::numeric_limits<float>::infinity();
  modlm::io::write_safetensors(path, {{"a", DType::F32, {4}, a.data()},
                                      {"b", DType::BF16, {4}, b.data()},
                                      {"d", DType::F64, {2}, d.data()},
                                      {"big", DType::F32, {10000}, big.data()}});
  SafetensorsFile f = SafetensorsFile::open(path);
  expect_error([&] { f.read_f32("a", {4}); }, modlm::kExitBadInput, {path, "'a'", "non-finite", "index 2"});
  expect_error([&] { f.read_f32("b", {4}); }, modlm::kExitBadInput, {"'b'", "non-finite", "index 3"});
  expect_error([&] { f.read_f32("d", {2}); }, modlm::kExitBadInput, {"'d'", "index 1", "out of float32 range"});
  expect_error([&] { f.read_f32("big", {10000}); }, modlm::kExitBadInput, {"'big'", "non-finite", "index 9000"});
}

TEST_F(SafetensorsTest, NonJsonHeaderIsRejected) {
  const std::string path = file("json.safetensors");
  write_bytes(path, raw_file("{\"x\": {\"dtype\": \"F32\", ", ""));
  expect_open_error(path, {"header is not valid JSON"});
  write_bytes(path, raw_file("\x89PNG\r\n\x1a\n", ""));
  expect_open_error(path, {"header is not valid JSON"});
  write_bytes(path, raw_file("[1, 2]", ""));
  expect_open_error(path, {"not a JSON object"});
  // Deep nesting must not blow the stack.
  write_bytes(path, raw_file(std::string(200000, '['), ""));
  expect_open_error(path, {"header is not valid JSON"});
}

TEST_F(SafetensorsTest, UnknownDtypeIsRejected) {
  const std::string path = file("dtype.safetensors");
  write_bytes(path, raw_file(R"({"x":{"dtype":"F9","shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0')));
  expect_open_error(path, {"tensor 'x'", "unknown dtype 'F9'"});
  write_bytes(path, raw_file(R"({"x":{"dtype":7,"shape":[1],"data_offsets":[0,4]}})", std::string(4, '\0')));
  expect_open_error(path, {"tensor 'x'", "dtype"});
}

TEST_F(SafetensorsTest, DuplicateKeysAndBadMetadataAreRejected) {
  const std::string path = file("dupkey.safetensors");
  write_bytes(path, raw_file(R"({"x":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                             R"("x":{"dtype":"U8","shape":[1],"data_offsets":[1,2]}})",
                             "ab"));
  expect_open_error(path, {"'x'", "twice"});
  write_bytes(path, raw_file(R"({"__metadata__":{"step":12}})", ""));
  expect_open_error(path, {"__metadata__", "'step'", "not a string"});
  write_bytes(path, raw_file(R"({"__metadata__":["a"]})", ""));
  expect_open_error(path, {"__metadata__", "not a JSON object"});
}

TEST_F(SafetensorsTest, MissingFileIsAnIoError) {
  const std::string path = file("does_not_exist.safetensors");
  expect_error([&] { SafetensorsFile::open(path); }, modlm::kExitIo, {path});
  expect_error([&] { SafetensorsFile::open(dir_.string()); }, modlm::kExitIo, {"directory"});
}

// Random corruption of a valid file (length field, header, truncation) must always end in either
// a successful open or a modlm::Error, never a crash.
TEST_F(SafetensorsTest, CorruptedBytesNeverCrash) {
  const std::vector<float> a = {1, 2, 3, 4, 5, 6};
  const std::vector<uint16_t> b = {1, 2, 3};
  const std::string path = file("fuzz.safetensors");
  modlm::io::write_safetensors(path, {{"a", DType::F32, {2, 3}, a.data()}, {"b", DType::F16, {3}, b.data()}},
                               {{"k", "v"}});
  const std::string good = read_bytes(path);
  auto try_open = [&](const std::string& bytes) {
    write_bytes(path, bytes);
    try {
      SafetensorsFile f = SafetensorsFile::open(path);
      for (const auto& t : f.tensors()) {
        try {
          f.read_f32(t.name, t.shape);
        } catch (const modlm::Error&) {
        }
      }
    } catch (const modlm::Error& e) {
      EXPECT_EQ(e.exit_code(), modlm::kExitBadInput) << e.what();
    }
  };
  for (std::size_t len = 0; len < good.size(); ++len) try_open(good.substr(0, len));
  std::mt19937 rng(1234);
  for (int iter = 0; iter < 2000; ++iter) {
    std::string bytes = good;
    const int flips = 1 + static_cast<int>(rng() % 3);
    for (int k = 0; k < flips; ++k) bytes[rng() % bytes.size()] = static_cast<char>(rng() & 0xff);
    try_open(bytes);
  }
}

// ---------------------------------------------------------------------------------------------
// Atomic writes

namespace {
std::vector<std::string> list_dir(const fs::path& dir) {
  std::vector<std::string> names;
  for (const auto& e : fs::directory_iterator(dir)) names.push_back(e.path().filename().string());
  return names;
}
}  // namespace

TEST_F(AtomicWriteTest, SuccessfulWriteReplacesContent) {
  const std::string path = file("out.txt");
  modlm::atomic_write_file(path, [&](std::FILE* f) { modlm::fwrite_checked(f, "old", 3, path); });
  EXPECT_EQ(modlm::read_text_file(path), "old");
  modlm::atomic_write_file(path, [&](std::FILE* f) { modlm::fwrite_checked(f, "new content", 11, path); });
  EXPECT_EQ(modlm::read_text_file(path), "new content");
  EXPECT_EQ(list_dir(dir_), std::vector<std::string>{"out.txt"});
}

TEST_F(AtomicWriteTest, ThrowMidwayKeepsOldContentAndRemovesTemp) {
  const std::string path = file("out.txt");
  write_bytes(path, "previous");
  EXPECT_THROW(modlm::atomic_write_file(path,
                                        [&](std::FILE* f) {
                                          std::string big(1 << 20, 'x');  // bigger than stdio's buffer
                                          modlm::fwrite_checked(f, big.data(), big.size(), path);
                                          throw std::runtime_error("interrupted");
                                        }),
               std::runtime_error);
  EXPECT_EQ(modlm::read_text_file(path), "previous");
  EXPECT_EQ(list_dir(dir_), std::vector<std::string>{"out.txt"});

  // A failing safetensors write (duplicate name is found before writing) also keeps the old file.
  const float x = 1.0f;
  EXPECT_THROW(modlm::io::write_safetensors(path, {{"w", DType::F32, {1}, &x}, {"w", DType::F32, {1}, &x}}),
               modlm::Error);
  EXPECT_EQ(modlm::read_text_file(path), "previous");
}

TEST_F(AtomicWriteTest, UnwritableDirectoryIsAnIoError) {
  const std::string path = file("no/such/dir/out.txt");
  expect_error([&] { modlm::atomic_write_file(path, [](std::FILE*) {}); }, modlm::kExitIo, {path});
}

TEST_F(AtomicWriteTest, DiskFullIsAnIoError) {
  // /dev/full fails every write with ENOSPC; fwrite_checked must report it, naming the path.
  std::FILE* f = std::fopen("/dev/full", "wb");
  if (!f) GTEST_SKIP() << "/dev/full not available";
  std::setvbuf(f, nullptr, _IONBF, 0);  // unbuffered, so the first write reaches the device
  expect_error([&] { modlm::fwrite_checked(f, "abc", 3, "model.safetensors"); }, modlm::kExitIo,
               {"model.safetensors", "write failed"});
  std::fclose(f);
}

TEST_F(AtomicWriteTest, ReadTextFileAndFileExists) {
  const std::string path = file("config.json");
  EXPECT_FALSE(modlm::file_exists(path));
  expect_error([&] { modlm::read_text_file(path); }, modlm::kExitIo, {path});
  write_bytes(path, std::string("a\0b", 3));
  EXPECT_TRUE(modlm::file_exists(path));
  EXPECT_EQ(modlm::read_text_file(path), std::string("a\0b", 3));
  expect_error([&] { modlm::read_text_file(dir_.string()); }, modlm::kExitIo, {"directory"});
}
