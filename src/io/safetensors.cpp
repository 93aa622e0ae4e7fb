#include "io/safetensors.h"

#include "ops/bf16.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <bit>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <tuple>
#include <utility>

#include "util/error.h"
#include "util/fs.h"

// The format is little endian and tensors are copied with memcpy.
static_assert(std::endian::native == std::endian::little, "modlm assumes a little-endian host");

namespace modlm::io {
namespace {

// Same limit as the reference implementation: a larger header is almost surely corrupt, and
// refusing it early keeps a hostile file from making us parse gigabytes of JSON.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

struct DTypeEntry {
  DType dtype;
  const char* name;
  std::size_t size;
};
constexpr DTypeEntry kDTypes[] = {
    {DType::BOOL, "BOOL", 1},       {DType::U8, "U8", 1},   {DType::I8, "I8", 1},
    {DType::F8_E5M2, "F8_E5M2", 1}, {DType::F8_E4M3, "F8_E4M3", 1},
    {DType::I16, "I16", 2},         {DType::U16, "U16", 2}, {DType::F16, "F16", 2},
    {DType::BF16, "BF16", 2},       {DType::I32, "I32", 4}, {DType::U32, "U32", 4},
    {DType::F32, "F32", 4},         {DType::I64, "I64", 8}, {DType::U64, "U64", 8},
    {DType::F64, "F64", 8},
};

const DTypeEntry& entry(DType dt) {
  for (const auto& e : kDTypes)
    if (e.dtype == dt) return e;
  return kDTypes[0];  // unreachable for a valid enum value
}

// product(shape) * elem_size, or nullopt on a negative dimension or on overflow.
std::optional<uint64_t> byte_size(const std::vector<int64_t>& shape, std::size_t elem_size) {
  uint64_t n = elem_size;
  for (int64_t d : shape) {
    if (d < 0) return std::nullopt;
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return std::nullopt;
  }
  return n;
}

std::string range_str(uint64_t begin, uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + "]";
}

// Index of the first non-finite float in x[0..n), or n if all are finite. Scans in blocks with a
// branch-free test so the common all-finite case vectorises.
std::size_t first_non_finite(const float* x, std::size_t n) {
  constexpr std::size_t kBlock = 4096;
  for (std::size_t start = 0; start < n; start += kBlock) {
    const std::size_t stop = std::min(n, start + kBlock);
    uint32_t bad = 0;
    for (std::size_t i = start; i < stop; ++i) {
      uint32_t bits;
      std::memcpy(&bits, &x[i], 4);
      bad |= static_cast<uint32_t>((bits & 0x7f800000u) == 0x7f800000u);  // exponent all ones
    }
    if (bad) {
      for (std::size_t i = start; i < stop; ++i)
        if (!std::isfinite(x[i])) return i;
    }
  }
  return n;
}

}  // namespace

std::size_t dtype_size(DType dt) { return entry(dt).size; }
const char* dtype_name(DType dt) { return entry(dt).name; }

std::optional<DType> parse_dtype(std::string_view name) {
  for (const auto& e : kDTypes)
    if (name == e.name) return e.dtype;
  return std::nullopt;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i) s += ", ";
    s += std::to_string(shape[i]);
  }
  return s + "]";
}

// ---------------------------------------------------------------------------------------------
// Reading

SafetensorsFile::SafetensorsFile(SafetensorsFile&& other) noexcept { *this = std::move(other); }

SafetensorsFile& SafetensorsFile::operator=(SafetensorsFile&& other) noexcept {
  if (this != &other) {
    release();
    path_ = std::move(other.path_);
    map_ = std::exchange(other.map_, nullptr);
    map_size_ = std::exchange(other.map_size_, 0);
    data_ = std::exchange(other.data_, nullptr);
    tensors_ = std::move(other.tensors_);
    index_ = std::move(other.index_);
    metadata_ = std::move(other.metadata_);
  }
  return *this;
}

SafetensorsFile::~SafetensorsFile() { release(); }

void SafetensorsFile::release() {
  if (map_) ::munmap(map_, map_size_);
  map_ = nullptr;
  map_size_ = 0;
  data_ = nullptr;
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  using nlohmann::json;
  auto fail = [&](const std::string& what) { return bad_input(path + ": " + what); };

  // O_NONBLOCK so a FIFO passed as the model path fails below rather than blocking in open().
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK);
  if (fd < 0) throw io_error(path + ": cannot open: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    int err = errno;
    ::close(fd);
    throw io_error(path + ": cannot stat: " + std::strerror(err));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    throw io_error(path + ": " + (S_ISDIR(st.st_mode) ? "is a directory" : "not a regular file"));
  }
  const uint64_t file_size = static_cast<uint64_t>(st.st_size);
  if (file_size < 8) {
    ::close(fd);
    throw fail("file is " + std::to_string(file_size) +
               " bytes, too short for a safetensors file (the header length alone is 8 bytes)");
  }

  SafetensorsFile f;  // from here on, its destructor unmaps on any error
  f.path_ = path;
  void* map = ::mmap(nullptr, file_size, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_err = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED) throw io_error(path + ": cannot mmap: " + std::strerror(map_err));
  f.map_ = map;
  f.map_size_ = file_size;
  const uint8_t* bytes = static_cast<const uint8_t*>(map);

  // Header length: u64 little endian, then the JSON header, then the data section.
  uint64_t header_len;
  std::memcpy(&header_len, bytes, 8);
  if (header_len > kMaxHeaderBytes) {
    throw fail("header length " + std::to_string(header_len) + " bytes exceeds the limit of " +
               std::to_string(kMaxHeaderBytes) + " bytes (corrupt or not a safetensors file)");
  }
  if (header_len > file_size - 8) {
    throw fail("header length " + std::to_string(header_len) + " bytes exceeds the file size (" +
               std::to_string(file_size) + " bytes); the file is truncated or not a safetensors file");
  }
  const uint64_t data_size = file_size - 8 - header_len;
  f.data_ = bytes + 8 + header_len;

  // Parse the header. nlohmann keeps only the last of duplicate keys, which would silently hide a
  // tensor, so top-level keys are checked for duplicates as they are parsed.
  std::set<std::string> seen_keys;
  std::string duplicate;
  auto on_event = [&](int depth, json::parse_event_t event, json& parsed) {
    if (event == json::parse_event_t::key && depth == 1 && parsed.is_string() && duplicate.empty()) {
      if (!seen_keys.insert(parsed.get<std::string>()).second) duplicate = parsed.get<std::string>();
    }
    return true;
  };
  const char* hbegin = reinterpret_cast<const char*>(bytes + 8);
  json header;
  try {
    header = json::parse(hbegin, hbegin + header_len, on_event);
  } catch (const json::exception& e) {
    throw fail(std::string("header is not valid JSON: ") + e.what());
  }
  if (!header.is_object()) throw fail("header is not a JSON object");
  if (!duplicate.empty()) throw fail("header lists '" + duplicate + "' twice");

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& v = it.value();

    if (name == "__metadata__") {
      if (!v.is_object()) throw fail("\"__metadata__\" is not a JSON object");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) throw fail("\"__metadata__\" value for '" + m.key() + "' is not a string");
        f.metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }

    const std::string where = "tensor '" + name + "'";
    if (!v.is_object()) throw fail(where + ": entry is not a JSON object");

    // dtype
    auto dt_it = v.find("dtype");
    if (dt_it == v.end() || !dt_it->is_string()) throw fail(where + ": missing or non-string \"dtype\"");
    std::optional<DType> dtype = parse_dtype(dt_it->get<std::string>());
    if (!dtype) throw fail(where + " has unknown dtype '" + dt_it->get<std::string>() + "'");

    // shape: non-negative integers (nlohmann stores those as unsigned; negatives are signed).
    auto sh_it = v.find("shape");
    if (sh_it == v.end() || !sh_it->is_array()) throw fail(where + ": missing or non-array \"shape\"");
    std::vector<int64_t> shape;
    shape.reserve(sh_it->size());
    for (const json& d : *sh_it) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
        throw fail(where + ": shape " + sh_it->dump() + " must hold non-negative integers");
      }
      shape.push_back(static_cast<int64_t>(d.get<uint64_t>()));
    }
    std::optional<uint64_t> nbytes = byte_size(shape, dtype_size(*dtype));
    if (!nbytes) throw fail(where + ": shape " + shape_str(shape) + " is too large");

    // data_offsets
    auto off_it = v.find("data_offsets");
    if (off_it == v.end() || !off_it->is_array() || off_it->size() != 2 || !(*off_it)[0].is_number_unsigned() ||
        !(*off_it)[1].is_number_unsigned()) {
      throw fail(where + ": \"data_offsets\" must be [begin, end] with non-negative integers");
    }
    const uint64_t begin = (*off_it)[0].get<uint64_t>();
    const uint64_t end = (*off_it)[1].get<uint64_t>();
    if (begin > end) throw fail(where + " data_offsets " + range_str(begin, end) + " have begin > end");
    if (end > data_size) {
      throw fail(where + " data_offsets " + range_str(begin, end) + " exceed the data section (" +
                 std::to_string(data_size) + " bytes); the file may be truncated");
    }
    if (end - begin != *nbytes) {
      throw fail(where + " data_offsets " + range_str(begin, end) + " span " + std::to_string(end - begin) +
                 " bytes but dtype " + dtype_name(*dtype) + " and shape " + shape_str(shape) + " need " +
                 std::to_string(*nbytes) + " bytes");
    }
    f.tensors_.push_back(TensorInfo{name, *dtype, std::move(shape), begin, end});
  }

  // File order; then no two non-empty byte ranges may overlap.
  std::sort(f.tensors_.begin(), f.tensors_.end(), [](const TensorInfo& a, const TensorInfo& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  const TensorInfo* prev = nullptr;  // the non-empty tensor reaching furthest so far
  for (const TensorInfo& t : f.tensors_) {
    if (t.begin == t.end) continue;
    if (prev && t.begin < prev->end) {
      throw fail("tensors '" + prev->name + "' " + range_str(prev->begin, prev->end) + " and '" + t.name + "' " +
                 range_str(t.begin, t.end) + " have overlapping data_offsets");
    }
    if (!prev || t.end > prev->end) prev = &t;
  }
  for (std::size_t i = 0; i < f.tensors_.size(); ++i) f.index_.emplace(f.tensors_[i].name, i);
  return f;
}

const TensorInfo* SafetensorsFile::find(std::string_view name) const {
  auto it = index_.find(name);
  return it == index_.end() ? nullptr : &tensors_[it->second];
}

std::vector<float> SafetensorsFile::read_f32(std::string_view name, const std::vector<int64_t>& expected_shape) const {
  // Validate before allocating: expected_shape comes from a (possibly hostile) config.
  const TensorInfo* t = find(name);
  std::vector<float> out;
  if (t && t->shape == expected_shape) out.resize((t->end - t->begin) / dtype_size(t->dtype));
  read_f32_into(name, expected_shape, out.data());
  return out;
}

void SafetensorsFile::read_f32_into(std::string_view name, const std::vector<int64_t>& expected_shape,
                                    float* dst) const {
  const std::string where = path_ + ": tensor '" + std::string(name) + "'";
  const TensorInfo* t = find(name);
  if (!t) throw bad_input(where + " is missing");
  if (t->shape != expected_shape) {
    throw bad_input(where + " has shape " + shape_str(t->shape) + " but " + shape_str(expected_shape) +
                    " was expected");
  }
  const std::size_t n = (t->end - t->begin) / dtype_size(t->dtype);
  const uint8_t* src = data(*t);  // may be unaligned: read through memcpy

  switch (t->dtype) {
    case DType::F32:
      if (n) std::memcpy(dst, src, n * sizeof(float));
      break;
    case DType::F16:
      for (std::size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = f16_to_float(h);
      }
      break;
    case DType::BF16:
      for (std::size_t i = 0; i < n; ++i) {
        uint16_t h;
        std::memcpy(&h, src + 2 * i, 2);
        dst[i] = std::bit_cast<float>(static_cast<uint32_t>(h) << 16);  // bf16 is the top half of an f32
      }
      break;
    case DType::F64:
      for (std::size_t i = 0; i < n; ++i) {
        double d;
        std::memcpy(&d, src + 8 * i, 8);
        dst[i] = static_cast<float>(d);
      }
      break;
    default:
      throw bad_input(where + " has dtype " + dtype_name(t->dtype) + "; expected F32, F16, BF16 or F64");
  }

  const std::size_t bad = first_non_finite(dst, n);
  if (bad < n) {
    std::ostringstream msg;
    msg << where << " has a non-finite value (" << dst[bad] << ") at index " << bad;
    if (t->dtype == DType::F64) {
      double d;
      std::memcpy(&d, src + 8 * bad, 8);
      if (std::isfinite(d)) {
        msg.str("");
        msg << where << " value " << d << " at index " << bad << " is out of float32 range (non-finite as float32)";
      }
    }
    throw bad_input(msg.str());
  }
}

// ---------------------------------------------------------------------------------------------
// Writing

void write_safetensors(const std::string& path, const std::vector<TensorRef>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  using nlohmann::ordered_json;  // keeps the header in the caller's order
  ordered_json header = ordered_json::object();
  if (!metadata.empty()) {
    ordered_json meta = ordered_json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }

  // The data section holds first every tensor whose size is a non-zero multiple of 64 bytes, then
  // the rest, each group in the caller's order; the header lists them in the caller's order with
  // those offsets (readers sort by offset, as the format allows). With the header padded below,
  // every weight matrix then starts on a 64-byte boundary of the file, and so of its mapping:
  // vector loads of a mapped matrix do not straddle cache lines (a decode step reading f32 rows
  // at a 16-byte offset ran ~15 % slower, docs/performance.md).
  std::set<std::string_view> names;
  std::vector<uint64_t> sizes;
  uint64_t total = 0;
  for (const TensorRef& t : tensors) {
    const std::string where = path + ": tensor '" + t.name + "'";
    if (t.name == "__metadata__") throw bad_input(where + ": the name is reserved");
    if (!names.insert(t.name).second) throw bad_input(where + " is listed twice");
    std::optional<uint64_t> nbytes = byte_size(t.shape, dtype_size(t.dtype));
    if (!nbytes) throw bad_input(where + ": invalid shape " + shape_str(t.shape));
    if (*nbytes > 0 && t.data == nullptr) throw bad_input(where + ": no data");
    if (total + *nbytes < total) throw bad_input(path + ": tensors are too large in total");
    total += *nbytes;
    sizes.push_back(*nbytes);
  }
  auto line_sized = [&](std::size_t i) { return sizes[i] > 0 && sizes[i] % 64 == 0; };
  std::vector<std::size_t> order;  // tensors in data-section order
  for (std::size_t i = 0; i < tensors.size(); ++i)
    if (line_sized(i)) order.push_back(i);
  for (std::size_t i = 0; i < tensors.size(); ++i)
    if (!line_sized(i)) order.push_back(i);
  std::vector<uint64_t> begin(tensors.size());
  uint64_t offset = 0;
  for (std::size_t i : order) begin[i] = offset, offset += sizes[i];
  for (std::size_t i = 0; i < tensors.size(); ++i) {
    const TensorRef& t = tensors[i];
    header[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {begin[i], begin[i] + sizes[i]}}};
  }

  std::string text;
  try {
    text = header.dump();
  } catch (const nlohmann::json::exception& e) {  // e.g. a name that is not valid UTF-8
    throw bad_input(path + ": cannot encode the header: " + e.what());
  }
  // Pad with spaces so the data section (after the 8-byte length and the header) starts at a
  // multiple of 64 bytes.
  text.append((64 - (8 + text.size()) % 64) % 64, ' ');
  const uint64_t header_len = text.size();

  atomic_write_file(path, [&](std::FILE* f) {
    fwrite_checked(f, &header_len, 8, path);  // little endian (static_assert above)
    fwrite_checked(f, text.data(), text.size(), path);
    for (std::size_t i : order) fwrite_checked(f, tensors[i].data, sizes[i], path);
  });
}

}  // namespace modlm::io
