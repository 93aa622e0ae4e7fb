// 8-bit weight blocks (the Q8_0 idea): W[j, k] = q[j, k] * scales[j, k / 32], q in [-127, 127],
// one float scale per 32 consecutive weights of a row (scale = max |w| / 127, round to nearest).
// The one definition of the format: `modlm quantize` writes it, model folders and the decoder
// read it (docs/spec_extensions.md).
#pragma once
#include <cstddef>
#include <cstdint>

namespace modlm {

constexpr int kQ8Block = 32;
constexpr int q8_blocks(int cols) { return (cols + kQ8Block - 1) / kQ8Block; }  // scales per row

// Quantizes rows x cols floats into q [rows, cols] and scales [rows, q8_blocks(cols)].
void quantize_q8(const float* w, int rows, int cols, int8_t* q, float* scales);

// Rows of a q8 matrix back to floats: dst [rows, cols] = q * scale (the stored model exactly).
void dequantize_q8(const int8_t* q, const float* scales, int rows, int cols, float* dst);

}  // namespace modlm
