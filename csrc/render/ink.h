// Ink masks from the layout: which patch x patch squares of an image hold a pixel that differs
// from the background, computed from the glyph items and a per-glyph ink table, never from
// the pixels of the render. Torch-free, shared by the one-pass CPU render, the `patch_ink` op
// (a host layout, as the CUDA path draws it) and the C++ tests.
//
// The ink table has one bit per atlas pixel: ink_rows[(g * cell_h + r) * words + c / 64] bit
// c % 64 is set where the shaded atlas cell g differs from the background at (r, c). It is
// exact where a glyph's cell is not: a cell is cell_h rows tall and its kept columns may
// include blank ones (spacing, min_width, gaps such as ':' or '"'), and with antialiasing or
// text_brightness == background_brightness a shaded pixel may equal the background.
#pragma once

#include <algorithm>
#include <cstdint>

#include "render/layout.h"

namespace clippo {

constexpr int32_t kMaxInkWords = 4;  // cells up to 256 columns (the rasterizer's limit)

struct InkTable {
  const uint64_t* rows;  // [num_glyphs, cell_h, words]
  int32_t words;         // 64-bit words per atlas row: ceil(cell_w / 64), 1..kMaxInkWords
  int32_t cell_h;
  int32_t image_size;
  int32_t patch;         // divides image_size
  int32_t grid;          // image_size / patch
};

// Whether any bit in [lo, hi) of a multi-word bit set is set (0 <= lo < hi).
inline bool any_bit_in(const uint64_t* w, int32_t lo, int32_t hi) {
  for (int32_t k = lo >> 6; k <= (hi - 1) >> 6; ++k) {
    const int32_t b0 = std::max(lo, k << 6) - (k << 6), b1 = std::min(hi, (k + 1) << 6) - (k << 6);
    const uint64_t m = (b1 - b0 == 64 ? ~uint64_t{0} : ((uint64_t{1} << (b1 - b0)) - 1)) << b0;
    if (w[k] & m) return true;
  }
  return false;
}

// Marks the patches (ink[py * grid + px] = 1) in which a glyph drawn at pixel (x, y0) leaves
// ink: its kept columns [first, first + width) clipped to the image, its rows clipped at the
// bottom, exactly the pixels blit_glyph and the band rasterizer write. Cost: per patch row
// the glyph spans, an OR of its ink rows, then one mask test per patch column.
inline void mark_glyph_ink(uint8_t* ink, const InkTable& t, int32_t glyph, int32_t first,
                           int32_t width, int32_t x, int32_t y0) {
  const int32_t S = t.image_size, p = t.patch;
  if (x >= S) return;
  if (x + width > S) width = S - x;
  const int32_t h = y0 + t.cell_h > S ? S - y0 : t.cell_h;
  if (width <= 0 || h <= 0) return;
  const uint64_t* g = t.rows + static_cast<int64_t>(glyph) * t.cell_h * t.words;
  const int32_t px_lo = x / p, px_hi = (x + width - 1) / p;
  for (int32_t py = y0 / p; py * p < y0 + h; ++py) {
    const int32_t r0 = std::max(py * p, y0) - y0, r1 = std::min((py + 1) * p, y0 + h) - y0;
    uint8_t* ink_row = ink + static_cast<int64_t>(py) * t.grid;
    if (t.words == 1) {
      uint64_t acc = 0;
      for (int32_t r = r0; r < r1; ++r) acc |= g[r];
      acc >>= first;  // bit j: column x + j of the image (first < 64 in a one-word cell)
      if (width < 64) acc &= (uint64_t{1} << width) - 1;
      if (!acc) continue;
      for (int32_t px = px_lo; px <= px_hi; ++px) {
        const int32_t c0 = std::max(px * p, x) - x, c1 = std::min((px + 1) * p, x + width) - x;
        const uint64_t m = (c1 - c0 == 64 ? ~uint64_t{0} : ((uint64_t{1} << (c1 - c0)) - 1)) << c0;
        if (acc & m) ink_row[px] = 1;
      }
    } else {
      uint64_t acc[kMaxInkWords] = {0, 0, 0, 0};
      for (int32_t r = r0; r < r1; ++r) {
        for (int32_t k = 0; k < t.words; ++k) acc[k] |= g[r * t.words + k];
      }
      for (int32_t px = px_lo; px <= px_hi; ++px) {
        const int32_t c0 = std::max(px * p, x) - x, c1 = std::min((px + 1) * p, x + width) - x;
        if (any_bit_in(acc, first + c0, first + c1)) ink_row[px] = 1;
      }
    }
  }
}

// The same for a GlyphItem of a layout (its own y).
inline void mark_item_ink(uint8_t* ink, const InkTable& t, const int32_t* glyph_cols,
                          const GlyphItem& item) {
  const int32_t c = glyph_cols[item.glyph];
  mark_glyph_ink(ink, t, item.glyph, cols_first(c), cols_width(c), item_x(item.xy),
                 item_y(item.xy));
}

}  // namespace clippo
