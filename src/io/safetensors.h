// Reading and writing the safetensors format (https://github.com/huggingface/safetensors):
//
//   [u64 little-endian N][N bytes of JSON header][data section]
//
// The header maps each tensor name to {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}
// with offsets relative to the start of the data section, plus an optional "__metadata__" object
// of string -> string. Files are untrusted: open() validates the whole header before anything is
// read, and every problem is a modlm::Error (exit code 3) naming the file and what is wrong.
#pragma once
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace modlm::io {

// Element types of the safetensors format (the names are the format's "dtype" strings).
enum class DType { BOOL, U8, I8, F8_E5M2, F8_E4M3, I16, U16, F16, BF16, I32, U32, F32, I64, U64, F64 };

std::size_t dtype_size(DType dt);               // bytes per element
const char* dtype_name(DType dt);               // "F32", "BF16", ...
std::optional<DType> parse_dtype(std::string_view name);  // nullopt if unknown

struct TensorInfo {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t begin, end;  // byte range within the data section
};

// "[2, 3]" for error messages.
std::string shape_str(const std::vector<int64_t>& shape);

// A safetensors file mapped read-only into memory. The tensor data stays in the page cache and
// is only copied by read_f32*. Movable, not copyable.
class SafetensorsFile {
 public:
  // Maps and validates `path`. Missing/unreadable file -> io_error (exit 4); any malformed
  // content -> bad_input (exit 3).
  static SafetensorsFile open(const std::string& path);

  SafetensorsFile(SafetensorsFile&& other) noexcept;
  SafetensorsFile& operator=(SafetensorsFile&& other) noexcept;
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;
  ~SafetensorsFile();

  // In data-offset order (the order of the bytes in the file).
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(std::string_view name) const;  // nullptr if absent
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const std::string& path() const { return path_; }

  // Raw bytes of a tensor (little endian). Not necessarily aligned to the element size.
  const uint8_t* data(const TensorInfo& t) const { return data_ + t.begin; }

  // Reads a tensor as float32, converting from F16/BF16/F64. Errors (bad_input) if the tensor
  // is missing, its shape differs from expected_shape, its dtype is not a float type, or any
  // value is not finite (after conversion to float).
  std::vector<float> read_f32(std::string_view name, const std::vector<int64_t>& expected_shape) const;
  // Same, into a caller buffer of product(expected_shape) floats.
  void read_f32_into(std::string_view name, const std::vector<int64_t>& expected_shape, float* dst) const;

 private:
  SafetensorsFile() = default;
  void release();

  std::string path_;
  void* map_ = nullptr;  // the whole file, from mmap
  std::size_t map_size_ = 0;
  const uint8_t* data_ = nullptr;  // start of the data section, inside map_
  std::vector<TensorInfo> tensors_;
  std::map<std::string, std::size_t, std::less<>> index_;  // name -> position in tensors_
  std::map<std::string, std::string> metadata_;
};

// A tensor to write: `data` points to product(shape) * dtype_size(dtype) little-endian bytes.
struct TensorRef {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  const void* data;
};

// Writes a standard safetensors file atomically (see atomic_write_file), contiguous offsets, the
// header (in the given order) padded with spaces so the data section starts at a multiple of 64
// bytes. The data section holds the tensors whose size is a non-zero multiple of 64 bytes first,
// then the others, each group in the given order: every such tensor (all weight matrices of
// usual shapes) starts on a 64-byte boundary. Duplicate or reserved names, negative dimensions
// -> bad_input.
void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

}  // namespace modlm::io
