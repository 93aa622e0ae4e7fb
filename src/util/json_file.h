// Reading a JSON file a user handed over: size-limited, and a parse error is bad_input naming
// the file (numbers out of range such as 1e999 included), never a raw library exception.
#pragma once
#include <cstddef>
#include <string>

#include <nlohmann/json.hpp>

namespace modlm {

constexpr std::size_t kMaxJsonFileBytes = 64u << 20;  // configs, shard indexes, run records

// Missing/unreadable -> io_error; larger than max_bytes or not valid JSON -> bad_input; both
// name the file.
nlohmann::ordered_json parse_json_file(const std::string& path, std::size_t max_bytes = kMaxJsonFileBytes);

}  // namespace modlm
